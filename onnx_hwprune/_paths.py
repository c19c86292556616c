"""The output-path guard: every file the tool writes, checked before any work starts.

Rules (the ones git and SQLite live by):

- an output never resolves to an input or to another output. Two paths are the same file
  when their ``os.stat`` device and inode agree (this follows symlinks and catches hard
  links); a path that does not exist yet is compared by its resolved form;
- every output location is writable *now*: its folder exists and accepts a file (probed
  with an anonymous temporary file, which leaves nothing behind), and the output itself is
  not a folder (or, for a folder output, not a file);
- files are written atomically (a temporary file beside the target, then ``os.replace``)
  with normal permissions: an existing file keeps its mode, a new one gets ``0o666`` less
  the umask, as ``open()`` would have given it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from onnx_hwprune.errors import UserError

__all__ = ["PathGuard", "atomic_write", "check_writable_file", "check_writable_dir", "same_file"]

PathLike = str | os.PathLike


def _identity(path: Path) -> tuple:
    """(dev, ino) of an existing file (symlinks followed), else its resolved path."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", st.st_dev, st.st_ino)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (symlinks and hard links followed)."""
    return _identity(Path(a)) == _identity(Path(b))


def _probe_folder(folder: Path, what: str) -> None:
    """Fail unless ``folder`` exists, is a folder and accepts a new file."""
    if not folder.exists():
        raise UserError(f"cannot write {what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"cannot write {what}: {folder} is not a folder")
    try:
        # O_TMPFILE where the OS has it: an unnamed file, gone when closed.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what}: {exc.strerror or exc} in {folder}") from None


def check_writable_file(path: PathLike, what: str | None = None) -> Path:
    """An output file: its folder exists and is writable; it is not a folder."""
    path = Path(path)
    what = what or str(path)
    if path.is_dir():
        raise UserError(f"cannot write {what}: {path} is a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {what}: {path} is read-only")
    _probe_folder(path.parent if str(path.parent) else Path("."), what)
    return path


def check_writable_dir(path: PathLike, what: str | None = None) -> Path:
    """An output folder: an existing folder, or a new one under a writable folder."""
    path = Path(path)
    what = what or str(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write {what}: {path} exists and is not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder that mkdir(parents=True) would create under
    _probe_folder(probe, what)
    return path


@dataclass
class PathGuard:
    """Collects a command's inputs and outputs, then :meth:`check` refuses collisions.

    Example::

        guard = PathGuard()
        guard.input("IN", args.input)
        guard.output("OUT", args.output)
        guard.output("--report", args.report)   # None is ignored
        guard.check()                            # before any work
    """

    inputs: list[tuple[str, Path]] = field(default_factory=list)
    outputs: list[tuple[str, Path, bool]] = field(default_factory=list)
    updated_in_place: list[tuple[str, Path]] = field(default_factory=list)

    def input(self, label: str, path: PathLike | None) -> None:
        if path is not None:
            self.inputs.append((label, Path(path)))

    def output(self, label: str, path: PathLike | None, *, folder: bool = False) -> None:
        if path is not None:
            self.outputs.append((label, Path(path), folder))

    def updated(self, label: str, path: PathLike | None) -> None:
        """A file read and written in place by its owner (a database): it must not be
        any input or output, but its writability is its owner's business."""
        if path is not None:
            self.updated_in_place.append((label, Path(path)))

    def check(self) -> None:
        """Raise :class:`UserError` on the first collision or unwritable output."""
        seen: dict[tuple, str] = {}
        for label, path in self.inputs:
            seen.setdefault(_identity(path), f"{label} ({path})")
        for label, path in [*self.updated_in_place, *((lb, p) for lb, p, _ in self.outputs)]:
            ident = _identity(path)
            if ident in seen:
                raise UserError(
                    f"{label} {path} is the same file as {seen[ident]}; choose another path"
                )
            seen[ident] = f"{label} ({path})"
        for label, path, folder in self.outputs:
            what = f"{label} {path}"
            (check_writable_dir if folder else check_writable_file)(path, what)


def _new_file_mode() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write all of ``data`` or nothing: readers never see a partial file.

    The mode is the existing file's, or what a plain ``open(path, "w")`` would give.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = _new_file_mode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
