"""Layer micro-benchmarks: a one-layer ONNX model per (signature, in, out), and timing it.

:func:`build_layer_model` makes the layer exactly as the real network has it (kernel,
stride, pads, dilation, groups, input size, batch, dtype) plus the epilogue a deployment
runtime fuses into it (bias, BatchNorm folded into the bias, activation), with random
weights as initializers so the runtime can pre-pack them as it would in the network.

:func:`measure_points` times a batch of (in, out) points of one signature on a backend
with the shared protocol, interleaving all points of the batch, and caches them in a
:class:`~onnx_hwprune.cost_models.profile_db.ProfileDB` so that nothing is measured twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.cost_models.profile_db import (
    QUALITY_LEGACY,
    QUALITY_RETRIED,
    UNTRUSTED,
    Measurement,
    ProfileDB,
)
from onnx_hwprune.cost_models.signature import LayerSignature, layer_shapes
from onnx_hwprune.runtime.backend import Backend
from onnx_hwprune.runtime.drift import quality_of
from onnx_hwprune.runtime.qdq_layer import INT8_DTYPES, qdq_layer_model
from onnx_hwprune.runtime.timing import TimingConfig, measure

__all__ = ["build_layer_model", "layer_shapes", "measure_points", "time_points"]

logger = logging.getLogger(__name__)

_OPSET = 17
_IR_VERSION = 10  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads at most 13.
_CHUNK_BYTES = 1 << 30
_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def build_layer_model(
    sig: LayerSignature, in_ch: int, out_ch: int, *, seed: int = 0
) -> onnx.ModelProto:
    """A one-layer ONNX model of ``sig`` at (``in_ch``, ``out_ch``) channels.

    For depthwise layers ``out_ch`` is ignored (out = in * multiplier); for grouped
    layers ``in_ch`` must be a multiple of ``in_per_group``.
    """
    if sig.dtype in INT8_DTYPES:  # timed as the fused int8 kernel (see qdq_layer.py)
        return qdq_layer_model(sig, in_ch, out_ch, seed=seed)
    rng = np.random.default_rng(seed)
    xshape, wshape, group = layer_shapes(sig, in_ch, out_ch)
    np_dtype = np.float16 if sig.dtype == "float16" else np.float32
    inits = [numpy_helper.from_array((rng.standard_normal(wshape) * 0.1).astype(np_dtype), "W")]
    inputs = ["x", "W"]
    n_out = wshape[0] if sig.op in ("Conv", "Gemm") else wshape[1] * group
    if sig.bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n_out).astype(np_dtype), "B"))
        if sig.op != "MatMul":
            inputs.append("B")
    nodes = [_main_node(sig, inputs, group)]
    last = "y0"
    if sig.op == "MatMul" and sig.bias:
        nodes.append(helper.make_node("Add", [last, "B"], ["y1"]))
        last = "y1"
    if sig.activation:
        act, act_inits = _activation_node(sig, last, "y")
        nodes.append(act)
        inits.extend(act_inits)
        last = "y"
    return _finish(sig, nodes, inits, xshape, last)


def _main_node(sig: LayerSignature, inputs: list[str], group: int) -> onnx.NodeProto:
    if sig.op == "Gemm":
        return helper.make_node("Gemm", inputs, ["y0"], transB=1)
    if sig.op == "MatMul":
        return helper.make_node("MatMul", inputs[:2], ["y0"])
    attrs = dict(
        kernel_shape=list(sig.kernel),
        strides=list(sig.strides),
        pads=list(sig.pads),
        dilations=list(sig.dilations),
        group=group,
    )
    if sig.op == "ConvTranspose" and sig.output_padding:
        attrs["output_padding"] = list(sig.output_padding)
    return helper.make_node(sig.op, inputs, ["y0"], **attrs)


def _activation_node(sig: LayerSignature, src: str, dst: str):
    params = list(sig.activation_params)
    if sig.activation == "Clip":
        lo, hi = (params + [0.0, 6.0])[:2]
        inits = [
            numpy_helper.from_array(np.array(lo, np.float32), "clip_min"),
            numpy_helper.from_array(np.array(hi, np.float32), "clip_max"),
        ]
        return helper.make_node("Clip", [src, "clip_min", "clip_max"], [dst]), inits
    if sig.activation == "LeakyRelu" and params:
        return helper.make_node("LeakyRelu", [src], [dst], alpha=params[0]), []
    return helper.make_node(sig.activation, [src], [dst]), []


def _finish(sig, nodes, inits, xshape, last) -> onnx.ModelProto:
    elem = _DTYPES.get(sig.dtype, TensorProto.FLOAT)
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", elem, list(xshape))],
        [helper.make_tensor_value_info(last, elem, None)],  # shape: filled in below
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    # The output's shape comes from inference, so the model passes the ONNX checker.
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def measure_points(
    backend: Backend,
    target: str,
    sig: LayerSignature,
    points: Iterable[tuple[int, int]],
    *,
    db: ProfileDB | None = None,
    config: TimingConfig | None = None,
    on_measured: Callable[[int], None] | None = None,
    anchor: tuple[tuple[int, int], float] | None = None,
    guard=None,
) -> dict[tuple[int, int], Measurement]:
    """Measurements of ``sig`` at ``points`` on ``backend``; cached ones come from ``db``.

    The points not yet in the database are prepared, then timed together (interleaved)
    and stored. ``on_measured(n)`` is called with the number newly measured (progress).

    ``anchor=((in, out), ms)`` re-times a reference point inside every interleaved group
    and rescales the group by ``ms / anchor_now``. On a shared machine the load changes
    between groups (the same layer was seen 2x slower ten minutes later); ratios to a
    reference timed at the same moment do not, so all points of a signature stay on the
    reference's footing. The anchor's own time is not stored.

    ``guard`` (a :class:`~.drift.DriftGuard`) re-times a reference kernel and the anchor
    around every group, redoes drifted groups and flags each point clean/noisy/drifted.
    With a guard, stored points flagged noisy or drifted are measured again first (once
    per session). Without one, new points are flagged ``legacy`` (not checked).
    """
    points = sorted(set(points))
    fp_hash = backend.fingerprint_hash()
    found = db.get_many(target, fp_hash, sig, points) if db else {}
    todo = [p for p in points if p not in found or _redo(found[p], guard, sig, p)]
    if todo:
        retried = {p for p in todo if p in found}  # untrusted before: a second chance only
        timed = time_points(backend, sig, todo, config or TimingConfig(), anchor, guard)
        found.update({p: _settled(m) if p in retried else m for p, m in timed.items()})
        if guard is not None:  # measured in this session: final for this session
            guard.redone.update((sig, p) for p in todo)
        if db:
            db.put_many(target, backend.fingerprint(), sig, {p: found[p] for p in todo})
        if on_measured:
            on_measured(len(todo))
    return {p: found[p] for p in points}


def _settled(m: Measurement) -> Measurement:
    """A re-measured point still noisy or drifted is kept as ``retried`` (not again)."""
    return replace(m, quality=QUALITY_RETRIED) if m.quality in UNTRUSTED else m


def _redo(stored: Measurement, guard, sig: LayerSignature, point: tuple[int, int]) -> bool:
    """A noisy/drifted point is re-measured, once per session, when a guard can measure."""
    if guard is None or stored.quality not in UNTRUSTED or (sig, point) in guard.redone:
        return False
    guard.redone.add((sig, point))
    return True


def time_points(backend, sig, points, config, anchor, guard=None):
    """Time ``points`` of ``sig`` now (no database): interleaved groups, rescaled by the
    ``anchor`` ``((in, out), ms)`` when given, drift-checked and flagged with ``guard``."""
    out: dict[tuple[int, int], Measurement] = {}
    for chunk in _chunks(sig, points):
        keys = [*chunk, anchor[0]] if anchor is not None and anchor[0] not in chunk else chunk
        runnables = {p: backend.prepare(build_layer_model(sig, *p)) for p in keys}
        try:
            timings, drifted = _time_group(sig, runnables, config, anchor, guard)
        finally:
            for r in runnables.values():
                r.close()
        scale = anchor[1] / timings[anchor[0]].median_ms if anchor is not None else 1.0
        for p in chunk:
            t = timings[p]
            quality = quality_of(t, drifted, guard.config) if guard else QUALITY_LEGACY
            out[p] = Measurement(t.median_ms * scale, t.spread, len(t.samples_ms), t.number,
                                 quality)  # fmt: skip
    return out


def _time_group(sig, runnables, config, anchor, guard):
    """Time one interleaved group; with a guard, redo it while the machine drifted.

    Returns (timings, whether the last attempt still drifted)."""
    samplers = {p: r.sample for p, r in runnables.items()}
    if guard is None:
        return measure(samplers, config), False
    anchor_run = runnables[anchor[0]] if anchor is not None else None
    key = (sig, anchor[0] if anchor is not None else None)
    for attempt in range(guard.config.retries + 1):
        before = guard.check_before(key, anchor_run)
        timings = measure(samplers, config)
        why = guard.drifted(before, guard.check_after(key, anchor_run))
        if why is None:
            return timings, False
        if why == "slow":  # steady in a slow phase: a redo would read the same (drift.py)
            return timings, True
        guard.discarded += 1
        logger.info("group of %d points drifted (attempt %d)", len(samplers), attempt + 1)
    return timings, True


def _chunks(sig: LayerSignature, points: list[tuple[int, int]], budget: int = _CHUNK_BYTES):
    """Split ``points`` so that one interleaved group holds at most ``budget`` bytes of
    weights (VGG-16's first Gemm alone is 400 MB; a dozen of them would not fit)."""
    chunk, size = [], 0
    for p in points:
        w = int(np.prod(layer_shapes(sig, *p)[1])) * 4
        if chunk and size + w > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += w
    if chunk:
        yield chunk
