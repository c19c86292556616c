"""One-layer QDQ models: the int8 micro-benchmarks behind int8 staircases.

A layer signature whose ``dtype`` is ``int8`` (a QDQ model's weights, or a float model
planned for ``--quantize int8``) is timed as onnxruntime will run it after
``quantize_static``: ``x -> QuantizeLinear(uint8) -> DequantizeLinear -> layer with
DequantizeLinear(int8 weight, per-channel) and int32 bias -> [activation] ->
QuantizeLinear(uint8) -> DequantizeLinear``. onnxruntime's CPU provider fuses this into
its int8 kernel (QLinearConv / MatMulInteger-based), whose blocking differs from the float
kernels: the staircase is measured, never assumed.

A conv whose signature has ``layout == "nhwc"`` is timed as that kernel alone:
onnxruntime's channels-last ``com.microsoft.QLinearConv`` with uint8 input and output in
NHWC, exactly the node its QDQ fusion and layout transform leave in the network. The QDQ
one-layer model around it also quantizes, transposes (twice) and dequantizes its whole
input and output, which the network does once at its boundary, not per layer: measured
here (one thread), 5-18% of a 3x3 conv's time and 55-65% of a depthwise or narrow 1x1
conv's, which flattened the int8 staircases and made the planner credit pruning too little.

The scales are fixed, not calibrated: they change values, not the kernel that runs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.cost_models.signature import LayerSignature, clamps_at_zero

__all__ = ["INT8_DTYPES", "qdq_layer_model"]

INT8_DTYPES = ("int8", "uint8")
_X_SCALE, _Y_SCALE = 4.0 / 255, 0.05  # inputs ~ N(0, 1); outputs within +-6


def qdq_layer_model(sig: LayerSignature, in_ch: int, out_ch: int, seed: int = 0) -> onnx.ModelProto:
    """The int8 version of the one-layer model of ``sig`` at (in, out) channels: the bare
    channels-last kernel for ``layout == "nhwc"``, else the QDQ model."""
    from onnx_hwprune.runtime.microbench import build_layer_model

    model = build_layer_model(replace(sig, dtype="float32", layout=""), in_ch, out_ch, seed=seed)
    if sig.layout == "nhwc":
        return _nhwc_kernel_model(model, clamps_at_zero(sig))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    main = graph.node[0]
    w_axis = 1 if sig.op in ("ConvTranspose", "MatMul") else 0
    new_inits, nodes = _scalars(clamps_at_zero(sig)), []
    nodes += _qdq("x", "x_dq", "x")
    w_scale = _quantize_weight(inits["W"], w_axis, new_inits)
    nodes.append(
        helper.make_node("DequantizeLinear", ["W_q", "W_s", "W_zp"], ["W_dq"], axis=w_axis)
    )
    inputs = ["x_dq", "W_dq"]
    if "B" in inits:
        b_q, b_scale = _int32_bias(inits["B"], w_scale)
        new_inits += [numpy_helper.from_array(b_q, "B_q"), numpy_helper.from_array(b_scale, "B_s")]
        nodes.append(helper.make_node("DequantizeLinear", ["B_q", "B_s"], ["B_dq"], axis=0))
        if main.op_type != "MatMul":
            inputs.append("B_dq")
    rest = [n for n in graph.node[1:]]
    renamed = {"B": "B_dq"}
    main_new = helper.make_node(main.op_type, inputs, list(main.output), name="layer")
    main_new.attribute.extend(main.attribute)
    for node in rest:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    last = graph.output[0].name
    nodes += [main_new, *rest, *_qdq(last, "out", "y")]
    kept = [t for t in graph.initializer if t.name not in ("W", "B")]
    return _finish(model, nodes, [*kept, *new_inits])


def _nhwc_kernel_model(model: onnx.ModelProto, output_at_zero: bool) -> onnx.ModelProto:
    """``model``'s conv as ``com.microsoft.QLinearConv`` (channels_last) on uint8 NHWC."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = model.graph.node[0]
    new_inits = _scalars(output_at_zero)
    w_scale = _quantize_weight(inits["W"], 0, new_inits)
    inputs = ["x", "x_s", "x_zp", "W_q", "W_s", "W_zp", "y_s", "y_zp"]
    if "B" in inits:
        new_inits.append(numpy_helper.from_array(_int32_bias(inits["B"], w_scale)[0], "B_q"))
        inputs.append("B_q")
    node = helper.make_node(
        "QLinearConv", inputs, ["y"], name="layer", domain="com.microsoft", channels_last=1
    )
    node.attribute.extend(a for a in conv.attribute if a.name != "channels_last")
    n, c, *spatial = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [n, *spatial, c])
    y_shape = [out_dims[0], *out_dims[2:], out_dims[1]]
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)
    graph = helper.make_graph([node], "layer_int8_nhwc", [x], [y], new_inits)
    opsets = [*model.opset_import, helper.make_opsetid("com.microsoft", 1)]
    out = helper.make_model(graph, opset_imports=opsets)
    out.ir_version = model.ir_version
    return out


def _int32_bias(bias: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bias as int32 at scale x_scale * w_scale (as quantize_static writes it)."""
    b_scale = (_X_SCALE * w_scale).astype(np.float32)
    return np.round(bias.astype(np.float64) / b_scale).astype(np.int32), b_scale


def _scalars(output_at_zero: bool) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array(_X_SCALE, np.float32), "x_s"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(_Y_SCALE, np.float32), "y_s"),
        numpy_helper.from_array(np.array(0 if output_at_zero else 128, np.uint8), "y_zp"),
    ]


def _qdq(src: str, dst: str, prefix: str) -> list[onnx.NodeProto]:
    scale, zp = f"{prefix}_s", f"{prefix}_zp"
    return [
        helper.make_node("QuantizeLinear", [src, scale, zp], [f"{dst}_q"]),
        helper.make_node("DequantizeLinear", [f"{dst}_q", scale, zp], [dst]),
    ]


def _quantize_weight(w: np.ndarray, axis: int, out: list[onnx.TensorProto]) -> np.ndarray:
    """Symmetric per-channel int8 along ``axis``, as quantize_static's default."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = (np.abs(w).max(axis=other) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    out += [
        numpy_helper.from_array(q, "W_q"),
        numpy_helper.from_array(scale, "W_s"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), "W_zp"),
    ]
    return scale


def _finish(model: onnx.ModelProto, nodes, inits) -> onnx.ModelProto:
    x = model.graph.input[0]
    graph = helper.make_graph(
        nodes,
        "layer_int8",
        [x],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    inferred = onnx.shape_inference.infer_shapes(out)
    out.graph.output[0].CopyFrom(inferred.graph.output[0])
    return out
