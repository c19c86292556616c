"""What the tool does with the user's files when the input is good: normal permissions,
no clobbering of a busy or foreign database, progress fit for logs, quiet closed pipes."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_hwprune._paths import PathGuard, atomic_write
from onnx_hwprune.cli import main
from onnx_hwprune.cli_commands.profile import ProgressBar
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits_resnet.onnx"


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    saved = os.umask(0o022)
    os.umask(saved)
    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "f", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == mode


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_pruned_model_and_report_get_normal_modes(tmp_path, umask, capsys):
    umask(0o022)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code = main([str(DIGITS), str(out), "--ratio", "0.5", "--no-measure", "--report", str(report)])
    assert code == 0
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in (out, report)} == {0o644}


def test_bare_input_shape_is_the_single_input(capsys):
    assert main(["analyze", str(DIGITS), "--input-shape", "1,1,16,16"]) == 0
    assert "prunable" in capsys.readouterr().out


def test_guard_sees_through_symlinked_folders(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "m.onnx").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    guard = PathGuard()
    guard.input("IN", tmp_path / "real" / "m.onnx")
    guard.output("OUT", tmp_path / "alias" / "m.onnx")
    with pytest.raises(UserError, match="same file"):
        guard.check()


def test_guard_refuses_two_new_outputs_on_one_path(tmp_path):
    guard = PathGuard()
    guard.output("--report", tmp_path / "x.json")
    guard.output("--save-plan", tmp_path / "sub" / ".." / "x.json")
    with pytest.raises(UserError, match="same file"):
        guard.check()
    assert list(tmp_path.iterdir()) == []  # the writability probe leaves nothing


def test_rebuild_waits_for_no_one_and_moves_nothing_in_use(tmp_path):
    path = tmp_path / "db.sqlite"
    with ProfileDB(path) as writer:  # another process profiling, in effect
        writer.put_calibration("cpu", "h", "m", {"total_ms": 1.0})
        with pytest.raises(UserError, match="in use"):
            ProfileDB.rebuild(path)
        assert path.exists() and not list(tmp_path.glob("*.bak"))
        writer.put_calibration("cpu", "h", "m2", {"total_ms": 2.0})  # still its file
    db, backup = ProfileDB.rebuild(path)  # alone now: it goes through
    db.close()
    assert backup is not None and backup.exists()
    with ProfileDB(backup) as old:
        assert old.get_calibration("cpu", "h", "m2") == {"total_ms": 2.0}


def test_foreign_database_is_left_byte_for_byte(tmp_path):
    path = tmp_path / "theirs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    for attempt in (lambda: ProfileDB(path), lambda: ProfileDB.rebuild(path)):
        with pytest.raises(UserError, match="not an onnx-hwprune profile database"):
            attempt()
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.sqlite"]


def test_database_from_an_earlier_version_is_adopted(tmp_path):
    path = tmp_path / "db.sqlite"
    ProfileDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 0")  # as files written before the marker existed
    conn.commit()
    conn.close()
    ProfileDB(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] != 0
    conn.close()


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_is_plain_lines_off_a_terminal():
    stream = _Stream(tty=False)
    bar = ProgressBar(stream)
    for i in range(50):
        bar.update(i, 50, 1, f"layer {i}")
    bar.finish()
    text = stream.getvalue()
    assert "\r" not in text
    assert 1 <= len(text.splitlines()) <= 2  # the first line, then one per period at most
    assert all(len(line) <= 200 for line in text.splitlines())


def test_progress_redraws_on_a_terminal():
    stream = _Stream(tty=True)
    bar = ProgressBar(stream)
    for i in range(3):
        bar.update(i, 3, 1, "x")
    bar.finish()
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().endswith("\n")


def test_closed_pipe_exits_quietly(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte, as with `| head -0`
    proc = subprocess.run(
        [sys.executable, "-m", "onnx_hwprune", "analyze", "--json", str(DIGITS)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141
