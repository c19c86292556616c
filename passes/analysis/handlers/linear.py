"""Gemm and MatMul with a constant weight: the fully connected layers after a Flatten.

Input features are axis 1 of the 2-D input; each feature is coupled with the row (or
column, with ``transB``) of the weight that reads it. A Flatten upstream maps each conv
channel to a block of H*W features, so pruning a channel removes that block of rows.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, const_shape
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, optional_input, rank

__all__ = ["GemmHandler", "MatMulHandler", "couple_dense"]


def couple_dense(
    node: gs.Node, ctx: CoupleContext, w: gs.Tensor, in_axis: int, out_axis: int
) -> int | None:
    """Couple ``y = a @ w`` (2-D ``a``, constant 2-D ``w``); the output space or None."""
    a, y = node.inputs[0], node.outputs[0]
    shape = const_shape(w)
    if shape is None or len(shape) != 2:
        ctx.freeze_node(node, "weight is not a constant matrix")
        return None
    if rank(a) != 2:
        ctx.freeze_node(node, f"input {a.name} is not 2-D (features on axis 1 are required)")
        return None
    sa = ctx.act(a, node, "act_in")
    sy = ctx.act(y, node, "act_out", produced=True)
    if sa is None or sy is None:
        return None
    ctx.union(sa, ctx.param(w, node, "weight_in", in_axis))
    ctx.union(sy, ctx.param(w, node, "weight_out", out_axis))
    return sy


@register("Gemm")
class GemmHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if int(node.attrs.get("transA", 0)):
            ctx.freeze_node(node, "transA=1 is not supported")
            return
        trans_b = int(node.attrs.get("transB", 0))
        sy = couple_dense(node, ctx, node.inputs[1], 1 if trans_b else 0, 0 if trans_b else 1)
        bias = optional_input(node, 2)
        if sy is not None and bias is not None:
            sc = ctx.broadcast_param(bias, node, 2, ctx.size(sy))
            if sc is not None:
                ctx.union(sy, sc)


@register("MatMul")
class MatMulHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        couple_dense(node, ctx, node.inputs[1], 0, 1)
