"""npz calibration data, decoded row-block by row-block straight from the zip.

``np.load`` would read a whole member, even with ``mmap_mode``; here memory stays bounded
by one batch.
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib._specs import InputSpec, check_keys, check_spec

__all__ = ["iter_npz"]


def iter_npz(
    path: Path, specs: Mapping[str, InputSpec], batch_size: int, extra_keys: Collection[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Stream an npz: headers are checked first, then rows are read ``batch_size`` at a time."""
    with _open_zip(path) as archive:
        members = _npz_members(archive, path)
        check_keys(members, specs, extra_keys, f"{path.name}")
        streams = {name: _NpyStream(archive.open(members[name]), path, name) for name in specs}
        for name, stream in streams.items():
            check_spec(name, stream.shape, stream.dtype, specs[name])
        counts = {name: stream.shape[0] for name, stream in streams.items()}
        if len(set(counts.values())) > 1:
            raise UserError(f"{path.name}: inputs have different sample counts {counts}")
        total = next(iter(counts.values()))
        for start in range(0, total, batch_size):
            rows = min(batch_size, total - start)
            yield {name: stream.read_rows(rows) for name, stream in streams.items()}


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise UserError(f"calibration data {path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{path} is not an .npz file (nor a folder of images)") from None


def _npz_members(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    members = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
    if not members:
        raise UserError(f"{path} is a zip without .npy arrays, not an .npz file")
    return members


class _NpyStream:
    """Reads C-ordered rows of one ``.npy`` member without loading the whole array."""

    def __init__(self, fileobj: IO[bytes], path: Path, name: str) -> None:
        self._file = fileobj
        try:
            version = np.lib.format.read_magic(fileobj)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fileobj)
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise UserError(f"{path.name}: array {name!r} is corrupt ({err})") from None
        if dtype.hasobject or fortran or not shape:
            raise UserError(
                f"{path.name}: array {name!r} must be a plain C-ordered numeric array "
                "with a sample axis (no objects, no Fortran order, not a scalar)"
            )
        self.shape, self.dtype, self._where = tuple(shape), dtype, f"{path.name}:{name}"
        self._row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def read_rows(self, rows: int) -> np.ndarray:
        data = self._file.read(rows * self._row_bytes)
        if len(data) != rows * self._row_bytes:
            raise UserError(f"{self._where} is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((rows, *self.shape[1:]))
