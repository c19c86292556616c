"""The profile database's table of in-context points (see :mod:`.context`).

Kept apart from ``measurements`` on purpose: an in-context point is a layer timed inside a
whole network (keyed by the network's hash and the configuration), never an isolated
micro-benchmark, and the two must never mix. The table is an additive schema change:
``CREATE TABLE IF NOT EXISTS`` adds it to a database written before it existed, whose
other tables and rows are untouched; an older onnx-hwprune ignores it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from onnx_hwprune.cost_models.context import ContextPoint
from onnx_hwprune.errors import UserError

__all__ = ["CONTEXT_SCHEMA", "check_rows", "export_rows", "insert", "select"]

CONTEXT_SCHEMA = """
CREATE TABLE IF NOT EXISTS context_points (
    target TEXT NOT NULL, fp_hash TEXT NOT NULL, model TEXT NOT NULL, config TEXT NOT NULL,
    node TEXT NOT NULL, in_ch INTEGER NOT NULL, out_ch INTEGER NOT NULL, ms REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (target, fp_hash, model, config, node))
"""
_FIELDS = {"target": str, "fingerprint_hash": str, "model": str, "config": str, "node": str,
           "in_ch": int, "out_ch": int, "ms": float}  # fmt: skip


def insert(
    conn: sqlite3.Connection, target: str, fp_hash: str, model: str, points: Iterable[ContextPoint]
) -> None:
    """Store points (the caller holds the write transaction)."""
    now = time.time()
    conn.executemany(
        "INSERT OR REPLACE INTO context_points VALUES (?,?,?,?,?,?,?,?,?)",
        [(target, fp_hash, model, p.config, p.node, p.in_ch, p.out_ch, p.ms, now) for p in points],
    )


def delete(conn: sqlite3.Connection, target: str, fp_hash: str, model: str) -> None:
    """Drop every stored point of a model on a device (the caller holds the write
    transaction)."""
    conn.execute(
        "DELETE FROM context_points WHERE target=? AND fp_hash=? AND model=?",
        (target, fp_hash, model),
    )


def select(conn: sqlite3.Connection, target: str, fp_hash: str, model: str) -> list[ContextPoint]:
    """Every stored point of a model on a device, in a stable order."""
    cur = conn.execute(
        "SELECT config, node, in_ch, out_ch, ms FROM context_points "
        "WHERE target=? AND fp_hash=? AND model=? ORDER BY config, node",
        (target, fp_hash, model),
    )
    return [ContextPoint(*row) for row in cur]


def export_rows(conn: sqlite3.Connection) -> list[dict]:
    """All points as export records."""
    cur = conn.execute(
        "SELECT target, fp_hash, model, config, node, in_ch, out_ch, ms FROM context_points "
        "ORDER BY 1,2,3,4,5"
    )
    return [dict(zip(_FIELDS, row, strict=True)) for row in cur]


def check_rows(rows: object) -> None:
    """:class:`UserError` unless ``rows`` is a list of export records (before any write)."""
    if not isinstance(rows, list):
        raise UserError("malformed profile export: context_points must be a list")
    for i, row in enumerate(rows):
        ok = isinstance(row, dict) and all(
            isinstance(row.get(k), t) or (t is float and type(row.get(k)) is int)
            for k, t in _FIELDS.items()
        )
        if not ok or row["ms"] <= 0:
            raise UserError(f"malformed profile export: context_points[{i}] is not a valid record")
