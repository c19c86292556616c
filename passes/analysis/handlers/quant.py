"""Quantized graphs: QDQ nodes on activations and the integer (QOperator) layers.

- ``QuantizeLinear``/``DequantizeLinear`` on an activation: channel c in is channel c
  out. A per-tensor scale is shared by all channels; a per-channel one (axis 1) is a
  parameter space sliced with the channels. A DequantizeLinear of a constant is a
  quantized weight: its consumer couples it (see ``_dequant.py``), not this handler.
- ``QLinearConv`` (weight 3, per-filter scale 4 and zero point 5, int32 bias 8) and
  ``ConvInteger`` (weight 1, zero point 3) couple like a Conv; per-filter scales and zero
  points join the filters' space.
- ``QLinearMatMul``, ``MatMulInteger`` and com.microsoft ``QGemm`` couple like MatMul/Gemm,
  per-column scales and zero points with the output features.
- com.microsoft ``QLinearAdd``/``QLinearMul`` couple like Add/Mul, ``QLinearConcat`` like
  Concat, ``QLinearSigmoid``/``QLinearLeakyRelu``/``QLinear(Global)AveragePool`` pass the
  channels through (``channels_last`` layouts freeze).

Dynamic quantization (onnxruntime's ``quantize_dynamic``, ddddocr's ``common_old``) adds
the bias at run time, in the integer domain::

    b_q = Cast(Floor(Div(bias[C], x_scale * w_scale)))      # rank-1, per channel
    y   = Add(ConvInteger(x_q, w_q, x_zp, w_zp), Reshape(b_q, [1, C, 1, 1]))

``ConvInteger`` claims that side chain: its rank-1 tensors are coupled with the filters,
the bias constant is sliced, and the Reshape target is rewritten. Any other shape of chain
is left to its own ops' handlers (which freeze it).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import (
    CoupleContext,
    RewriteContext,
    const_shape,
    const_values,
    static_shape,
)
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, couple_passthrough, rank
from onnx_hwprune.passes.analysis.handlers.channel_axis import couple_whole
from onnx_hwprune.passes.analysis.handlers.conv import couple_conv, rewrite_group
from onnx_hwprune.passes.analysis.handlers.elementwise import BroadcastHandler
from onnx_hwprune.passes.analysis.handlers.linear import couple_dense

__all__ = [
    "QuantizeHandler",
    "QLinearConvHandler",
    "ConvIntegerHandler",
    "QLinearMatMulHandler",
    "QGemmHandler",
    "QLinearBinaryHandler",
    "QLinearPassthroughHandler",
    "QLinearConcatHandler",
]

MS = "com.microsoft"


def _couple_per_channel(node: gs.Node, ctx: CoupleContext, sy: int, params: list[gs.Tensor]):
    """Scales/zero points of size > 1 run along the output channels: slice them too."""
    for t in params:
        shape = const_shape(t) if t.name else None
        if shape is None:
            if t.name:
                ctx.freeze_node(node, f"quantization parameter {t.name} is not a constant")
            continue
        if int(np.prod(shape)) > 1:
            ctx.union(sy, ctx.param(t, node, "quant_param", 0))


@register("QuantizeLinear", "DequantizeLinear", since=10)
class QuantizeHandler(Handler):
    """Activations only; a constant's DequantizeLinear is coupled by its consumer."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        x = node.inputs[0]
        if isinstance(x, gs.Constant):
            return
        if int(node.attrs.get("block_size", 0)):
            ctx.freeze_node(node, "blocked quantization is not supported")
            return
        sy = couple_passthrough(node, ctx, x, node.outputs[0])
        params = [t for t in node.inputs[1:3] if t.name]
        shapes = [const_shape(t) for t in params]
        if any(shape is None for shape in shapes):
            ctx.freeze_node(node, "scale or zero point is computed at run time")
            return
        pairs = zip(params, shapes, strict=True)
        per_channel = [t for t, shape in pairs if int(np.prod(shape)) > 1]
        if sy is None or not per_channel:
            return
        r = rank(x)
        if r is None or int(node.attrs.get("axis", 1)) % r != 1:
            ctx.freeze_node(node, "per-axis quantization on an axis other than channels")
            return
        _couple_per_channel(node, ctx, sy, per_channel)


@register("DynamicQuantizeLinear", since=11)
class DynamicQuantizeHandler(Handler):
    """Output 0 is the input, quantized with one scale computed at run time."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("QLinearConv", since=10)
class QLinearConvHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_conv(node, ctx, w_index=3, b_index=8)
        if sy is not None:
            _couple_per_channel(node, ctx, sy, list(node.inputs[4:6]))

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        rewrite_group(node, ctx, w_index=3)


@register("QLinearMatMul", since=10)
class QLinearMatMulHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_dense(node, ctx, node.inputs[3], 0, 1)
        if sy is not None:
            _couple_per_channel(node, ctx, sy, list(node.inputs[4:6]))


@register("MatMulInteger", since=10)
class MatMulIntegerHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_dense(node, ctx, node.inputs[1], 0, 1)
        if sy is not None:
            _couple_per_channel(node, ctx, sy, list(node.inputs[3:4]))


@register("QGemm", domain=MS)
class QGemmHandler(Handler):
    """``QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp)``, like Gemm."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if int(node.attrs.get("transA", 0)):
            ctx.freeze_node(node, "transA=1 is not supported")
            return
        trans_b = int(node.attrs.get("transB", 0))
        sy = couple_dense(node, ctx, node.inputs[3], int(trans_b == 1), int(trans_b == 0))
        if sy is None:
            return
        _couple_per_channel(node, ctx, sy, list(node.inputs[4:6]))
        if len(node.inputs) > 6 and node.inputs[6].name:
            sc = ctx.broadcast_param(node.inputs[6], node, 2, ctx.size(sy))
            if sc is not None:
                ctx.union(sy, sc)


@register("QLinearAdd", "QLinearMul", domain=MS)
class QLinearBinaryHandler(Handler):
    """``(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)``: operands 0 and 3."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        shape = static_shape(node.outputs[0])
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            ctx.freeze_node(node, f"channel size of {node.outputs[0].name} is unknown")
            return
        sy = ctx.act(node.outputs[0], node, "act_out", produced=True)
        for operand in (node.inputs[0], node.inputs[3]):
            BroadcastHandler.couple_operand(node, ctx, operand, sy, len(shape))


@register(
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    domain=MS,
)
class QLinearPassthroughHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if int(node.attrs.get("channels_last", 0)):
            ctx.freeze_node(node, "channels_last layout is not supported")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("QLinearConcat", domain=MS)
class QLinearConcatHandler(Handler):
    """``(Y_scale, Y_zp, X1, X1_scale, X1_zp, X2, ...)``: the data inputs are 2, 5, 8..."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        couple_whole(node, ctx, node.outputs[0], list(node.inputs[2::3]))


@register("ConvInteger", since=10)
class ConvIntegerHandler(Handler):
    """``ConvInteger(x, w, x_zp, w_zp)`` and its run-time bias chain (module docstring)."""

    def claims(self, node: gs.Node) -> list[gs.Node]:
        chain = bias_chain(node)
        return [] if chain is None else chain.nodes

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_conv(node, ctx, w_index=1, b_index=None)
        if sy is None:
            return
        _couple_per_channel(node, ctx, sy, list(node.inputs[3:4]))
        chain = bias_chain(node)
        if chain is not None:
            chain.couple(ctx, sy)

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        rewrite_group(node, ctx, w_index=1)
        chain = bias_chain(node)
        if chain is None or not ctx.changed(node.outputs[0]):
            return
        if int(const_values(chain.reshape.inputs[1])[1]) > 0:  # -1 needs no update
            target = np.array(const_values(chain.reshape.inputs[1]), copy=True)
            target[1] = ctx.new_size(node.outputs[0])
            ctx.set_const_input(chain.reshape, 1, target)


class _BiasChain:
    """``Reshape(unary*(Div|Mul(bias[C], scalar)), [1,C,1,...])`` added to a ConvInteger."""

    def __init__(self, reshape: gs.Node, vectors: list[gs.Node], bias: gs.Constant) -> None:
        self.reshape, self.vectors, self.bias = reshape, vectors, bias
        self.nodes = [reshape, *vectors]

    def couple(self, ctx: CoupleContext, sy: int) -> None:
        sr = ctx.act(self.reshape.outputs[0], self.reshape, "act_out", produced=True)
        sb = ctx.param(self.bias, self.reshape, "bias", 0)
        if sr is None or sb is None:
            return
        ctx.union(sy, sr)
        ctx.union(sy, sb)
        for node in self.vectors:
            out = node.outputs[0]
            sv = ctx.table.space(out.name, 0, ctx.size(sy), is_param=True)
            ctx.table.declare(sv, node.name, "bias_chain")
            ctx.union(sy, sv)


_CHAIN_UNARY = frozenset({"Cast", "Floor", "Round", "Ceil", "Identity"})


def bias_chain(conv: gs.Node) -> _BiasChain | None:
    """The run-time bias chain added to ``conv``'s output, if it has exactly that form."""
    out = conv.outputs[0]
    shape = static_shape(out)
    if len(out.outputs) != 1 or out.outputs[0].op != "Add" or not shape or len(shape) < 2:
        return None
    add = out.outputs[0]
    other = next((t for t in add.inputs if t is not out), None)
    reshape = other.inputs[0] if other is not None and len(other.inputs) == 1 else None
    if reshape is None or reshape.op != "Reshape" or len(other.outputs) != 1:
        return None
    target = const_values(reshape.inputs[1])
    channels = shape[1]
    if target is None or target.size != len(shape) or int(target[1]) not in (channels, -1):
        return None
    if any(int(d) != 1 for i, d in enumerate(target.tolist()) if i != 1):
        return None
    return _walk_vector(reshape, reshape.inputs[0], channels)


def _walk_vector(reshape: gs.Node, tensor: gs.Tensor, channels: int) -> _BiasChain | None:
    vectors: list[gs.Node] = []
    while True:
        if static_shape(tensor) != [channels] or len(tensor.inputs) != 1:
            return None
        if len(tensor.outputs) != 1:
            return None
        node = tensor.inputs[0]
        vectors.append(node)
        if node.op in _CHAIN_UNARY:
            tensor = node.inputs[0]
            continue
        if node.op not in ("Div", "Mul") or len(node.inputs) != 2:
            return None
        vec, scalar = node.inputs
        if not isinstance(vec, gs.Constant) or len(const_shape(vec)) != 1:  # sized by the Div
            return None
        scalar_shape = static_shape(scalar)
        if scalar_shape is None or int(np.prod(scalar_shape)) != 1:
            return None
        return _BiasChain(reshape, vectors, vec)
