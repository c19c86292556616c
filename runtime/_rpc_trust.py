"""What a TVM RPC tracker and its boards are trusted with, and what is checked.

A tracker is a process anyone on the network can run, and a board is whatever registered
under a key; both talk plaintext RPC. So:

- **Board count.** At most :data:`DEFAULT_RPC_BOARDS` boards are used unless
  ``--rpc-boards`` asks for more, and never more than :data:`MAX_RPC_BOARDS`, whatever
  ``free`` count the tracker reports (one connection and one thread per board).
- **Summaries.** The tracker's summary is checked field by field; a malformed one is an
  error naming the tracker, not a traceback.
- **Weights.** What is uploaded to a board is compiled from the model with every float
  weight (and every int8/uint8 weight of rank >= 2) replaced by seeded random values of
  the same shape and type: latency does not depend on weight values, and the user's
  weights never leave this machine. Integer tensors of rank < 2 (shapes, axes, indices)
  are kept, since the graph needs them.
- **Numbers.** Every latency a board reports is checked before it is stored: finite,
  positive, at most :data:`MAX_MEDIAN_MS`, and within :data:`PLAUSIBLE_FACTOR` of its
  neighbours (the points of the same layer with the nearest work ``in * out``, stored or
  new): a larger layer may be up to ``PLAUSIBLE_FACTOR`` x its work ratio slower, a smaller
  one at most ``PLAUSIBLE_FACTOR`` x slower. A board that fails the check is treated as a
  failed board: nothing of that batch is stored and its layer goes to another board.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_hwprune.cost_models._export_schema import MAX_MEDIAN_MS
from onnx_hwprune.cost_models.profile_db import Measurement, fingerprint_hash
from onnx_hwprune.errors import UserError

__all__ = [
    "DEFAULT_RPC_BOARDS",
    "MAX_RPC_BOARDS",
    "PLAUSIBLE_FACTOR",
    "CheckedBoardDB",
    "check_points",
    "free_from_summary",
    "with_random_weights",
]

DEFAULT_RPC_BOARDS = 4
MAX_RPC_BOARDS = 32
PLAUSIBLE_FACTOR = 10.0
_T = onnx.TensorProto
_RANDOMIZED = {_T.FLOAT, _T.FLOAT16, _T.DOUBLE, _T.BFLOAT16, _T.INT8, _T.UINT8}


def free_from_summary(summary: Any, key: str, cap: int) -> int:
    """Boards of ``key`` to request: the tracker's ``free`` count, at least 1, at most ``cap``.

    Raises:
        UserError: the summary is not the shape TVM's tracker sends.
    """
    queue = summary.get("queue_info") if isinstance(summary, dict) else None
    entry = queue.get(key) if isinstance(queue, dict) else None
    if not isinstance(entry, dict):
        raise UserError(f"the RPC tracker sent a malformed summary (no queue_info for {key!r})")
    free = entry.get("free", 0)
    if isinstance(free, bool) or not isinstance(free, int) or free < 0:
        raise UserError(f"the RPC tracker sent a malformed summary (free={free!r:.20})")
    return max(1, min(free, cap))


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose weights are seeded random values of the same shapes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for tensor in copy.graph.initializer:
        if tensor.data_type not in _RANDOMIZED or (
            tensor.data_type in (_T.INT8, _T.UINT8) and len(tensor.dims) < 2
        ):
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind not in "fiu":  # bfloat16 arrives as a raw type: zero it instead
            array = np.zeros(array.shape, np.float32)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            continue
        if array.dtype.kind == "f":
            noise = rng.standard_normal(array.shape).astype(array.dtype) * np.asarray(
                0.1, array.dtype
            )
        else:
            info = np.iinfo(array.dtype)
            noise = rng.integers(info.min, info.max, array.shape, dtype=array.dtype)
        tensor.CopyFrom(numpy_helper.from_array(noise, tensor.name))
    return copy


def check_points(
    new: Mapping[tuple[int, int], Measurement],
    stored: Mapping[tuple[int, int], Measurement],
    what: str,
) -> None:
    """Refuse implausible board numbers (see the module docstring for the rules)."""
    for (i, o), m in new.items():
        if not (math.isfinite(m.median_ms) and 0 < m.median_ms <= MAX_MEDIAN_MS):
            raise UserError(f"RPC board {what} reported latency {m.median_ms!r} ms at {i}x{o}")
        if not (math.isfinite(m.spread) and m.spread >= 0):
            raise UserError(f"RPC board {what} reported spread {m.spread!r} at {i}x{o}")
    merged = sorted({**stored, **new}.items(), key=lambda kv: kv[0][0] * kv[0][1])
    for (lo, m_lo), (hi, m_hi) in zip(merged, merged[1:], strict=False):
        if lo not in new and hi not in new:
            continue
        work = (hi[0] * hi[1]) / max(1, lo[0] * lo[1])
        if m_hi.median_ms > PLAUSIBLE_FACTOR * max(1.0, work) * m_lo.median_ms or (
            m_lo.median_ms > PLAUSIBLE_FACTOR * m_hi.median_ms
        ):
            raise UserError(
                f"RPC board {what} reported implausible latencies: {m_lo.median_ms:.4g} ms "
                f"at {lo[0]}x{lo[1]} vs {m_hi.median_ms:.4g} ms at {hi[0]}x{hi[1]}"
            )


class CheckedBoardDB:
    """The profile database as seen by board threads: numbers are checked first."""

    def __init__(self, db, what: str):
        self._db, self._what = db, what

    def __getattr__(self, name: str):
        return getattr(self._db, name)

    def put_many(self, target, fingerprint, sig, points, fp_hash=None) -> None:
        fp_hash = fp_hash or fingerprint_hash(fingerprint)
        check_points(points, self._db.get_all(target, fp_hash, sig), self._what)
        self._db.put_many(target, fingerprint, sig, points, fp_hash=fp_hash)

    def put_calibration(self, target, fp_hash, model, data) -> None:
        check_calibration(data, self._what)
        self._db.put_calibration(target, fp_hash, model, data)


def check_calibration(data: Mapping[str, Any], what: str) -> None:
    """A whole-model calibration from a board: a positive finite total, a residual no
    larger than the total, per-layer scales within ``PLAUSIBLE_FACTOR`` of 1."""
    total, residual = data.get("total_ms"), data.get("residual_ms")
    scales = data.get("scales", {})
    ok = _finite(total) and 0 < total <= MAX_MEDIAN_MS and _finite(residual)
    ok = ok and abs(residual) <= total and isinstance(scales, dict)
    ok = ok and all(
        _finite(v) and 1 / PLAUSIBLE_FACTOR <= v <= PLAUSIBLE_FACTOR for v in scales.values()
    )
    if not ok:
        raise UserError(
            f"RPC board {what} reported an implausible calibration (total {total!r} ms, "
            f"residual {residual!r} ms)"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
