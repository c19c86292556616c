"""Output shapes of onnxruntime's quantized contrib ops, which onnx's inference skips.

onnxruntime's QOperator format (``quantize_static(..., QuantFormat.QOperator)``) emits
com.microsoft ``QLinearAdd``, ``QGemm``, ``QLinearConcat``... onnx's shape inference does
not know them, so every tensor after the first one would have no shape and its channel
groups would freeze. onnxruntime's own symbolic inference gives up on these graphs
("Incomplete symbolic shape inference"), so the few rules are written here. A rule only
fires when its input shapes are fully static; anything else stays unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

__all__ = ["contrib_shapes"]

Shape = list[int]
_Rule = Callable[[onnx.NodeProto, list[Shape | None]], Shape | None]


def _broadcast(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    a, b = shapes[0], shapes[3] if len(shapes) > 3 else None
    if a is None or b is None:
        return None
    return list(np.broadcast_shapes(tuple(a), tuple(b)))


def _same(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    return shapes[0]


def _global_pool(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    x = shapes[0]
    if x is None or _attr(node, "channels_last", 0):
        return None
    return [*x[:2], *([1] * (len(x) - 2))]


def _pool(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    x = shapes[0]
    if (
        x is None
        or _attr(node, "channels_last", 0)
        or _attr(node, "auto_pad", b"NOTSET")
        not in (
            b"NOTSET",
            "NOTSET",
        )
    ):
        return None
    kernel = list(_attr(node, "kernel_shape", []))
    n = len(kernel)
    strides = list(_attr(node, "strides", [1] * n))
    pads = list(_attr(node, "pads", [0] * 2 * n))
    ceil = _attr(node, "ceil_mode", 0)
    out = list(x[:2])
    for i in range(n):
        span = x[2 + i] + pads[i] + pads[i + n] - kernel[i]
        out.append((-(-span // strides[i]) if ceil else span // strides[i]) + 1)
    return out


def _concat(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    pieces = shapes[2::3]
    if not pieces or any(p is None for p in pieces):
        return None
    axis = _attr(node, "axis", 0) % len(pieces[0])
    out = list(pieces[0])
    out[axis] = sum(p[axis] for p in pieces)
    return out


def _gemm(node: onnx.NodeProto, shapes: list[Shape | None]) -> Shape | None:
    a, b = shapes[0], shapes[3]
    if a is None or b is None:
        return None
    m = a[1] if _attr(node, "transA", 0) else a[0]
    n = b[0] if _attr(node, "transB", 0) else b[1]
    return [m, n]


_RULES: dict[str, _Rule] = {
    "QLinearAdd": _broadcast,
    "QLinearMul": _broadcast,
    "QLinearSigmoid": _same,
    "QLinearLeakyRelu": _same,
    "QLinearGlobalAveragePool": _global_pool,
    "QLinearAveragePool": _pool,
    "QLinearConcat": _concat,
    "QGemm": _gemm,
}


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _static(vi: onnx.ValueInfoProto) -> Shape | None:
    dims = vi.type.tensor_type.shape.dim
    if not vi.type.tensor_type.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]


def contrib_shapes(
    model: onnx.ModelProto, known: dict[str, onnx.ValueInfoProto]
) -> list[onnx.ValueInfoProto]:
    """Value infos for contrib-op outputs whose shape ``known`` lacks, computable now.

    Args:
        model: the model (only nodes, initializers' dims and graph inputs are read).
        known: value infos by tensor name (inferred ones, graph inputs and outputs).
    """
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update({name: s for name, vi in known.items() if (s := _static(vi)) is not None})
    out = []
    for node in model.graph.node:
        rule = _RULES.get(node.op_type) if node.domain == "com.microsoft" else None
        if rule is None or not node.output or _static_or_none(known.get(node.output[0])):
            continue
        shape = rule(node, [shapes.get(name) for name in node.input])
        if shape is not None:
            elem = _elem_type(node, known, model)
            out.append(helper.make_tensor_value_info(node.output[0], elem, shape))
            shapes[node.output[0]] = shape
    return out


def _static_or_none(vi: onnx.ValueInfoProto | None) -> Sequence[int] | None:
    return _static(vi) if vi is not None else None


def _elem_type(node: onnx.NodeProto, known: dict, model: onnx.ModelProto) -> int:
    """Quantized outputs have the type of their zero point (the op's last input)."""
    if node.op_type == "QGemm" and len(node.input) < 9:
        return onnx.TensorProto.FLOAT  # no y_scale/y_zp: QGemm writes float
    inits = {t.name: t.data_type for t in model.graph.initializer}
    zp = node.input[-1] if node.op_type != "QLinearConcat" else node.input[1]
    if zp in inits:
        return inits[zp]
    vi = known.get(node.input[0])
    return vi.type.tensor_type.elem_type if vi is not None else onnx.TensorProto.UINT8
