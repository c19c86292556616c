"""The profile database belongs to the tool: checks made before a file is opened for writing.

- **Ownership.** Our files carry SQLite's ``application_id`` :data:`APPLICATION_ID`. An
  existing file is first inspected with ``PRAGMA query_only`` (opened ``mode=rw`` rather
  than ``mode=ro`` only so that SQLite can remove the WAL side files it opens; the file
  is never created there): a database with another id, or
  with tables that are not ours, is refused untouched, since opening it for writing would
  already switch its journal mode and add our tables. An empty file or an empty database is
  adopted; a database made by an earlier onnx-hwprune (our tables, id 0) is stamped.
- **Integrity.** ``schema_version`` must be our integer; every stored measurement must be a
  positive finite number of milliseconds and every JSON column valid JSON, or the file is
  refused with a pointer to ``--rebuild`` rather than crashing a later run.
- **Exclusion.** Every open holds a shared ``flock`` on the file for its lifetime;
  ``--rebuild`` needs the exclusive lock, so it never moves the file from under a writer
  (SQLite's own locks are POSIX record locks, which ``flock`` does not interfere with on
  Linux). Where ``fcntl`` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from onnx_hwprune.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["APPLICATION_ID", "OWN_TABLES", "inspect_existing", "FileLock"]

APPLICATION_ID = 0x4F485750  # "OHWP"
OWN_TABLES = frozenset({"meta", "devices", "measurements", "calibrations", "context_points"})

_BAD_ROWS = {
    "measurements": "typeof(median_ms) NOT IN ('real', 'integer') OR NOT median_ms > 0 "
    "OR median_ms > 1e12 OR typeof(in_ch) != 'integer' OR typeof(out_ch) != 'integer' "
    "OR typeof(spread) NOT IN ('real', 'integer') OR NOT json_valid(signature)",
    "devices": "NOT json_valid(fingerprint)",
    "calibrations": "NOT json_valid(data)",
}


def inspect_existing(path: Path, schema_version: int) -> bool:
    """Check a file read-only; True when it needs our ``application_id`` stamped.

    Raises:
        UserError: a foreign or unreadable file, a bad schema version or malformed rows.
    """
    if not path.exists() or path.stat().st_size == 0:
        return True
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        conn.execute("PRAGMA query_only = 1")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables - OWN_TABLES):
            raise UserError(
                f"{path} is not an onnx-hwprune profile database (tables: "
                f"{', '.join(sorted(tables)) or 'none'}); it was left untouched: "
                "choose another --profile-db"
            )
        if "meta" in tables:
            _check_contents(conn, path, schema_version, tables)
        return app_id != APPLICATION_ID
    finally:
        conn.close()


def _check_contents(conn: sqlite3.Connection, path: Path, version: int, tables: set) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is not None and str(row[0]) != str(version):
        raise sqlite3.DatabaseError(
            f"schema version {str(row[0])[:20]!r}, this onnx-hwprune reads {version}"
        )
    for table, condition in _BAD_ROWS.items():
        if table in tables:
            bad = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {condition}").fetchone()[0]
            if bad:
                raise sqlite3.DatabaseError(f"{bad} malformed rows in table {table}")


class FileLock:
    """A ``flock`` on the database file: shared while in use, exclusive for a rebuild."""

    def __init__(self, path: Path, exclusive: bool = False):
        self.path, self.fd = path, None
        if fcntl is None:
            return
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            if exclusive:
                raise UserError(
                    f"profile database {path} is in use by another onnx-hwprune process; "
                    "--rebuild needs it alone: rerun when that process has finished"
                ) from None
            fcntl.flock(self._reopen(), mode)  # a rebuild holds it: wait, then follow it

    def _reopen(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return self.fd

    def stale(self) -> bool:
        """True when the path no longer names the locked file (a rebuild moved it)."""
        if self.fd is None:
            return False
        try:
            st, fst = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None
