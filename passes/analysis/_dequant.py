"""Quantized constants: weights stored as integers behind a DequantizeLinear.

A QDQ model (onnxruntime's ``quantize_static`` in QDQ format, TensorRT's explicit
quantization) keeps every weight as ``DequantizeLinear(w_int8, scale, zero_point)``
feeding the float op. To the analysis such a weight is a constant: its values are the
dequantized ones, and pruning a channel of it slices the integer tensor and, when the
quantization is per channel along that very axis, its scales and zero points.

Worked example, a per-channel QDQ conv weight::

    w_q int8 [16,8,3,3] --DequantizeLinear(axis=0, scale[16], zp[16])--> w [16,8,3,3] --> Conv

    pruning filter 5 (w axis 0) removes w_q[5], scale[5] and zp[5];
    pruning input channel 2 (w axis 1) removes w_q[:, 2] only (the scales are per filter).

Blocked quantization (``block_size``, opset 21) is not understood: such a weight is not a
constant here, and the op using it freezes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["dequantized_source", "dequantize", "integer_weights", "per_axis_params"]


def dequantized_source(tensor: gs.Tensor) -> gs.Node | None:
    """The DequantizeLinear computing ``tensor`` from constants alone, else None."""
    if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op != "DequantizeLinear" or node.domain not in (None, "", "ai.onnx"):
        return None
    if int(node.attrs.get("block_size", 0)):
        return None
    if not all(isinstance(t, gs.Constant) for t in node.inputs if t.name):
        return None
    return node


def _axis(node: gs.Node, ndim: int) -> int:
    return int(node.attrs.get("axis", 1)) % max(ndim, 1)


def dequantize(node: gs.Node) -> np.ndarray:
    """``(x - zero_point) * scale`` of a constant DequantizeLinear, in float32."""
    x = np.asarray(node.inputs[0].values)
    scale = np.asarray(node.inputs[1].values, dtype=np.float32)
    zp = (
        np.asarray(node.inputs[2].values).astype(np.float32)
        if len(node.inputs) > 2 and node.inputs[2].name
        else np.zeros_like(scale)
    )
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[_axis(node, x.ndim)] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((x.astype(np.float32) - zp.reshape(scale.shape)) * scale).astype(np.float32)


def per_axis_params(node: gs.Node, axis: int) -> list[gs.Tensor]:
    """The scale and zero point of ``node`` when they run along ``axis`` (per channel)."""
    x = node.inputs[0]
    ndim = len(x.shape)
    scale = node.inputs[1]
    if int(np.prod(scale.shape)) <= 1 or _axis(node, ndim) != axis:
        return []
    return [t for t in node.inputs[1:3] if t.name]


# Integer layers: (weight, scale, zero point) input positions, and the weight's output axis.
_INTEGER_LAYERS = {
    "QLinearConv": (3, 4, 5),
    "QLinearMatMul": (3, 4, 5),
    "QGemm": (3, 4, 5),
    "ConvInteger": (1, None, 3),
    "MatMulInteger": (1, None, 3),
}


def integer_weights(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Dequantized values of the integer weights of QLinearConv, QGemm, ConvInteger...

    Per-channel quantization gives every filter the full int8 range, so raw integers say
    nothing about a filter's magnitude; ``(w - zero_point) * scale`` does. Scales run
    along the output axis (0 for convs and ``QGemm`` with transB, 1 for MatMul).
    """
    out: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        spec = _INTEGER_LAYERS.get(node.op)
        if spec is None or len(node.inputs) <= spec[0]:
            continue
        w = node.inputs[spec[0]]
        if not isinstance(w, gs.Constant) or w.name in out:
            continue
        scale, zp = _param(node, spec[1], 1.0), _param(node, spec[2], 0.0)
        if scale is None or zp is None:
            continue
        axis, ndim = _out_axis(node, w), len(w.shape)
        values = np.asarray(w.values).astype(np.float32) - _along(zp, ndim, axis)
        out[w.name] = values * _along(scale, ndim, axis)
    return out


def _param(node: gs.Node, index: int | None, default: float) -> np.ndarray | None:
    """A scale or zero point as a flat float32 array; ``default`` when absent, None when
    computed at run time."""
    if index is None or index >= len(node.inputs) or not node.inputs[index].name:
        return np.full(1, default, np.float32)
    t = node.inputs[index]
    return np.asarray(t.values, np.float32).reshape(-1) if isinstance(t, gs.Constant) else None


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    if v.size > 1:
        shape[axis] = v.size
    return v.reshape(shape)


def _out_axis(node: gs.Node, w: gs.Constant) -> int:
    if node.op in ("QLinearMatMul", "MatMulInteger"):
        return 1
    if node.op == "QGemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return 0
