"""The profile database: measured layer latencies, in SQLite, shared by processes.

Rows are keyed by target + device fingerprint + layer signature + (in, out) channels, so a
measurement is reused by every layer with the same signature (latency sharing) and by
every later run on the same device (resumable profiling). The default file lives in the
user's cache directory; ``--profile-db`` chooses another.

Concurrency: the file is opened in WAL mode with a busy timeout, and every write is one
``BEGIN IMMEDIATE`` transaction of ``INSERT OR REPLACE``; two processes profiling at once
both succeed (a point measured by both keeps the last writer's value).

Corruption: opening a file that is not a valid database raises
:class:`~onnx_hwprune.errors.UserError` naming ``--rebuild``; :meth:`ProfileDB.rebuild`
moves the bad file aside (``<name>.corrupt-<time>.bak``) and starts an empty one.

Export format (``profile export``), version :data:`EXPORT_VERSION`::

    {"format": "onnx-hwprune-profile", "version": 1,
     "devices": [{"target": "cpu", "fingerprint_hash": "...", "fingerprint": {...}}],
     "measurements": [{"target": "cpu", "fingerprint_hash": "...", "signature": {...},
                       "in_ch": 64, "out_ch": 64, "median_ms": 0.92, "spread": 0.01,
                       "samples": 5, "number": 20, "quality": "clean"}],
     "calibrations": [{"target": "cpu", "fingerprint_hash": "...", "model": "<sha>",
                       "data": {...}}],
     "context_points": [{"target": "cpu", "fingerprint_hash": "...", "model": "<sha>",
                         "config": "odd", "node": "conv2", "in_ch": 63, "out_ch": 63,
                         "ms": 2.8}]}

``context_points`` (layers timed inside their network, :mod:`.context`) is optional on
import, so exports written before it existed import unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from onnx_hwprune.cost_models import _context_table
from onnx_hwprune.cost_models._db_guard import (
    APPLICATION_ID,
    OWN_TABLES,
    FileLock,
    inspect_existing,
)
from onnx_hwprune.cost_models._export_schema import check_export
from onnx_hwprune.cost_models.context import ContextPoint
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError

__all__ = [
    "EXPORT_VERSION",
    "SCHEMA_VERSION",
    "Measurement",
    "ProfileDB",
    "QUALITIES",
    "QUALITY_CLEAN",
    "QUALITY_DRIFTED",
    "QUALITY_LEGACY",
    "QUALITY_NOISY",
    "QUALITY_RETRIED",
    "check_import",
    "default_db_path",
    "fingerprint_hash",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EXPORT_VERSION = 1
_FORMAT = "onnx-hwprune-profile"
QUALITY_CLEAN, QUALITY_NOISY, QUALITY_DRIFTED = "clean", "noisy", "drifted"
QUALITY_LEGACY = "legacy"  # rows from before quality flags: usable, not known to be clean
# Noisy or drifted again when re-measured: the machine stays that loaded, and timing the
# point on every later run cost minutes each (a PP-OCRv5 det job re-measured 3,100 points
# per run at load ~2-10). Used as measured; `profile --verify` or `--rebuild` retries it.
QUALITY_RETRIED = "retried"
QUALITIES = (QUALITY_CLEAN, QUALITY_NOISY, QUALITY_DRIFTED, QUALITY_RETRIED, QUALITY_LEGACY)
UNTRUSTED = frozenset({QUALITY_NOISY, QUALITY_DRIFTED})
"""Points not final yet: the next run that can measure re-measures them first (once:
a point still untrusted then is stored as :data:`QUALITY_RETRIED`)."""
_COLUMNS = "target, fp_hash, signature, in_ch, out_ch, median_ms, spread, samples, number, created"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    target TEXT NOT NULL, fp_hash TEXT NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (target, fp_hash));
CREATE TABLE IF NOT EXISTS measurements (
    target TEXT NOT NULL, fp_hash TEXT NOT NULL, signature TEXT NOT NULL,
    in_ch INTEGER NOT NULL, out_ch INTEGER NOT NULL,
    median_ms REAL NOT NULL, spread REAL NOT NULL, samples INTEGER NOT NULL,
    number INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (target, fp_hash, signature, in_ch, out_ch));
CREATE TABLE IF NOT EXISTS calibrations (
    target TEXT NOT NULL, fp_hash TEXT NOT NULL, model TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (target, fp_hash, model));
"""


@dataclass(frozen=True)
class Measurement:
    """One measured point: median latency (ms), relative spread (IQR/median), samples,
    runs/sample, and its quality flag (one of :data:`QUALITIES`)."""

    median_ms: float
    spread: float
    samples: int = 0
    number: int = 0
    quality: str = QUALITY_LEGACY


def default_db_path() -> Path:
    """``<user cache dir>/onnx-hwprune/profiles.sqlite`` (computed at call time)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("onnx-hwprune")) / "profiles.sqlite"


class ProfileDB:
    """Handle on one profile database file.

    Args:
        path: the SQLite file; ``None`` means :func:`default_db_path`.
        timeout_s: how long a writer waits for another process's lock.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout_s: float = 60.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout_s = timeout_s
        self._conn = self._open()

    # -- lifecycle ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock: FileLock | None = None
        try:
            stamp = inspect_existing(self.path, SCHEMA_VERSION)  # read-only; refuses foreign
            self._lock = FileLock(self.path)
            if self._lock.stale():  # a --rebuild moved the file while we waited: follow it
                self._lock.release()
                self._lock = FileLock(self.path)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            with self._write(conn):
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(_context_table.CONTEXT_SCHEMA)  # additive: old files gain it
                self._check_version(conn)
                _add_quality_column(conn)
                if stamp:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except (sqlite3.DatabaseError, ValueError) as exc:
            if self._lock is not None:
                self._lock.release()
            raise UserError(
                f"profile database {self.path} is unreadable ({exc}); "
                "rerun with --rebuild to move it aside and start a new one"
            ) from None
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {row[0]}, this onnx-hwprune reads {SCHEMA_VERSION}"
            )

    @classmethod
    def rebuild(cls, path: str | os.PathLike | None = None) -> tuple[ProfileDB, Path | None]:
        """Move an unreadable file aside as a backup and open a fresh database there.

        Returns:
            (the new database, the backup path or None if there was no file).
        """
        path = Path(path) if path is not None else default_db_path()
        backup = None
        if path.exists() and path.stat().st_size:
            _refuse_foreign(path)
        lock = FileLock(path, exclusive=True) if path.exists() else None
        try:
            backup = cls._move_aside(path)
        finally:
            if lock is not None:
                lock.release()
        return cls(path), backup

    @staticmethod
    def _move_aside(path: Path) -> Path | None:
        backup = None
        if path.exists():
            backup = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.bak")
            path.rename(backup)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.rename(backup.with_name(backup.name + suffix))
            logger.warning("moved %s aside to %s", path, backup)
        return backup

    def close(self) -> None:
        """Close the connection (and drop the shared lock)."""
        self._conn.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> ProfileDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    @contextlib.contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of one failing on a lock upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- measurements ------------------------------------------------------------------
    def put_many(
        self,
        target: str,
        fingerprint: dict,
        sig: LayerSignature,
        points: Mapping[tuple[int, int], Measurement],
        fp_hash: str | None = None,
    ) -> None:
        """Store measurements of ``sig`` (one transaction)."""
        fp_hash = fp_hash or fingerprint_hash(fingerprint)
        now, key = time.time(), sig.key()
        rows = [
            (target, fp_hash, key, i, o, m.median_ms, m.spread, m.samples, m.number, now, m.quality)
            for (i, o), m in points.items()
        ]
        with self._write(self._conn):
            self._conn.execute(
                "INSERT OR IGNORE INTO devices VALUES (?, ?, ?)",
                (target, fp_hash, json.dumps(fingerprint, sort_keys=True)),
            )
            self._conn.executemany(
                f"INSERT OR REPLACE INTO measurements ({_COLUMNS}, quality) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def get_many(
        self, target: str, fp_hash: str, sig: LayerSignature, points: Iterable[tuple[int, int]]
    ) -> dict[tuple[int, int], Measurement]:
        """The stored subset of ``points`` for ``sig``."""
        wanted = set(points)
        return {p: m for p, m in self.get_all(target, fp_hash, sig).items() if p in wanted}

    def get_all(
        self, target: str, fp_hash: str, sig: LayerSignature
    ) -> dict[tuple[int, int], Measurement]:
        """Every stored point for ``sig`` on this device."""
        cur = self._conn.execute(
            "SELECT in_ch, out_ch, median_ms, spread, samples, number, quality FROM measurements "
            "WHERE target=? AND fp_hash=? AND signature=?",
            (target, fp_hash, sig.key()),
        )
        return {(r[0], r[1]): Measurement(*r[2:]) for r in cur}

    def devices(self, target: str | None = None) -> list[tuple[str, str, dict]]:
        """(target, fingerprint hash, fingerprint) of every device with data."""
        cur = self._conn.execute("SELECT target, fp_hash, fingerprint FROM devices")
        rows = [(t, h, json.loads(f)) for t, h, f in cur]
        return [r for r in rows if target is None or r[0] == target]

    def quality_counts(self, target: str | None = None, fp_hash: str | None = None) -> dict:
        """Stored points by quality flag (every flag present, zeros included)."""
        cur = self._conn.execute(
            "SELECT quality, COUNT(*) FROM measurements WHERE (?1 IS NULL OR target=?1) "
            "AND (?2 IS NULL OR fp_hash=?2) GROUP BY quality",
            (target, fp_hash),
        )
        return {**dict.fromkeys(QUALITIES, 0), **dict(cur.fetchall())}

    def all_points(self, target: str, fp_hash: str) -> list[tuple[LayerSignature, int, int]]:
        """(signature, in, out) of every stored point of a device, in a stable order."""
        cur = self._conn.execute(
            "SELECT signature, in_ch, out_ch FROM measurements WHERE target=? AND fp_hash=? "
            "ORDER BY signature, in_ch, out_ch",
            (target, fp_hash),
        )
        return [(LayerSignature.from_dict(json.loads(s)), i, o) for s, i, o in cur]

    def set_quality(
        self, target: str, fp_hash: str, sig: LayerSignature, point: tuple[int, int], quality: str
    ) -> None:
        """Re-flag one stored point (``profile --verify`` demotes points that moved)."""
        with self._write(self._conn):
            self._conn.execute(
                "UPDATE measurements SET quality=? WHERE target=? AND fp_hash=? AND signature=? "
                "AND in_ch=? AND out_ch=?",
                (quality, target, fp_hash, sig.key(), *point),
            )

    def count(self) -> int:
        """Number of stored measurements."""
        return self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    # -- calibrations (whole-network residuals) ----------------------------------------
    def put_calibration(self, target: str, fp_hash: str, model: str, data: dict) -> None:
        """Store a whole-model calibration (in-context timings, residual)."""
        with self._write(self._conn):
            self._conn.execute(
                "INSERT OR REPLACE INTO calibrations VALUES (?,?,?,?)",
                (target, fp_hash, model, json.dumps(data, sort_keys=True)),
            )

    def get_calibration(self, target: str, fp_hash: str, model: str) -> dict | None:
        """The stored calibration or None."""
        row = self._conn.execute(
            "SELECT data FROM calibrations WHERE target=? AND fp_hash=? AND model=?",
            (target, fp_hash, model),
        ).fetchone()
        return json.loads(row[0]) if row else None

    # -- in-context points (a layer timed inside its network; never a micro-benchmark) ---
    def put_context(
        self, target: str, fp_hash: str, model: str, points: Iterable[ContextPoint]
    ) -> None:
        """Store the in-context points of a model (see :mod:`~.context`), replacing the
        set stored before (one measurement is one set); one transaction."""
        with self._write(self._conn):
            _context_table.delete(self._conn, target, fp_hash, model)
            _context_table.insert(self._conn, target, fp_hash, model, points)

    def get_context(self, target: str, fp_hash: str, model: str) -> list[ContextPoint]:
        """The stored in-context points of a model on a device (empty if none)."""
        return _context_table.select(self._conn, target, fp_hash, model)

    # -- export / import ---------------------------------------------------------------
    def export_json(self) -> dict:
        """The whole database as the documented JSON document."""
        c = self._conn
        return {
            "format": _FORMAT,
            "version": EXPORT_VERSION,
            "devices": [
                {"target": t, "fingerprint_hash": h, "fingerprint": f} for t, h, f in self.devices()
            ],
            "measurements": [
                {
                    "target": r[0],
                    "fingerprint_hash": r[1],
                    "signature": json.loads(r[2]),
                    "in_ch": r[3],
                    "out_ch": r[4],
                    "median_ms": r[5],
                    "spread": r[6],
                    "samples": r[7],
                    "number": r[8],
                    "quality": r[10],
                }
                for r in c.execute("SELECT * FROM measurements ORDER BY 1,2,3,4,5")
            ],
            "calibrations": [
                {"target": r[0], "fingerprint_hash": r[1], "model": r[2], "data": json.loads(r[3])}
                for r in c.execute("SELECT * FROM calibrations ORDER BY 1,2,3")
            ],
            "context_points": _context_table.export_rows(c),
        }

    def import_json(self, doc: dict) -> int:
        """Merge an exported document; returns the number of measurements imported."""
        check_export(doc, _FORMAT, EXPORT_VERSION)  # all or nothing: checked before storing
        _context_table.check_rows(doc.get("context_points", []))
        fps = {(d["target"], d["fingerprint_hash"]): d["fingerprint"] for d in doc["devices"]}
        groups: dict[tuple, dict] = {}
        for m in doc["measurements"]:
            key = (m["target"], m["fingerprint_hash"], LayerSignature.from_dict(m["signature"]))
            groups.setdefault(key, {})[(m["in_ch"], m["out_ch"])] = Measurement(
                m["median_ms"],
                m["spread"],
                m["samples"],
                m["number"],
                m.get("quality", QUALITY_LEGACY),
            )
        for (target, fp_hash, sig), points in groups.items():
            self.put_many(target, fps.get((target, fp_hash), {}), sig, points, fp_hash=fp_hash)
        for c in doc.get("calibrations", []):
            self.put_calibration(c["target"], c["fingerprint_hash"], c["model"], c["data"])
        self._import_context(doc.get("context_points", []))
        return sum(len(p) for p in groups.values())

    def _import_context(self, rows: list[dict]) -> None:
        by_model: dict[tuple[str, str, str], list[ContextPoint]] = {}
        for r in rows:
            point = ContextPoint(r["config"], r["node"], r["in_ch"], r["out_ch"], float(r["ms"]))
            by_model.setdefault((r["target"], r["fingerprint_hash"], r["model"]), []).append(point)
        for (target, fp_hash, model), points in by_model.items():
            self.put_context(target, fp_hash, model, points)


def check_import(doc: object) -> None:
    """Raise :class:`UserError` unless ``doc`` is an export this version can import."""
    check_export(doc, _FORMAT, EXPORT_VERSION)
    _context_table.check_rows(doc.get("context_points", []))


def _refuse_foreign(path: Path) -> None:
    """``--rebuild`` moves unreadable files aside, never a database of another program."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return  # not a database at all: moving it aside is what --rebuild is for
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables - OWN_TABLES):
        raise UserError(
            f"{path} is not an onnx-hwprune profile database; --rebuild leaves it untouched"
        )


def fingerprint_hash(fingerprint: dict) -> str:
    """Stable 16-hex-digit hash of a device fingerprint dict (the database key)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _add_quality_column(conn: sqlite3.Connection) -> None:
    """Migration (additive): databases written before quality flags get the column, and
    their rows the flag ``legacy`` (usable, but not known to be clean)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(measurements)")}
    if "quality" not in columns:
        conn.execute(
            f"ALTER TABLE measurements ADD COLUMN quality TEXT NOT NULL DEFAULT '{QUALITY_LEGACY}'"
        )
