"""Conv and ConvTranspose.

``Conv(group=1)``: filters (W axis 0), bias and output channels are one space; input
channels are W axis 1.

``Conv(group=g)``, 1 < g < Cin (ResNeXt, ShuffleNet v1): W axis 1 holds the Cin/g input
channels *local to a group*, shared by all groups. Input channel ``j*(Cin/g) + b`` reads
weight column b, so local position b is pruned in every group at once, and likewise for
outputs. The layer keeps g groups and gets narrower; this is also what a channel shuffle
after it requires (see ``reshape.py``).

Depthwise (g = Cin) with multiplier m: input channel c owns outputs ``c*m .. c*m+m-1``;
pruning it removes that whole group and lowers ``group``.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, RewriteContext, const_values
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, optional_input

__all__ = ["ConvHandler", "ConvTransposeHandler"]


def _depthwise_union(ctx: CoupleContext, sx: int, sy: int) -> None:
    multiplier = ctx.size(sy) // ctx.size(sx)
    y = np.arange(ctx.size(sy))
    ctx.union(sx, sy, y // multiplier, y)


def _grouped_union(ctx: CoupleContext, node: gs.Node, sx: int, sy: int, groups: int) -> None:
    w = node.inputs[1]
    sw_in = ctx.param(w, node, "weight_in", 1)
    x = np.arange(ctx.size(sx))
    ctx.union(sx, sw_in, x, x % ctx.size(sw_in))
    per_out = ctx.size(sy) // groups
    y = np.arange(ctx.size(sy))
    ctx.union(sy, sy, y, y % per_out)  # same local output position in every group


def _couple_layer(node: gs.Node, ctx: CoupleContext, out_axis: int) -> tuple[int, int] | None:
    """The part Conv and ConvTranspose share: activations, filters (weight axis
    ``out_axis``) and bias on the output space. None after freezing."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if const_values(w) is None:
        ctx.freeze_node(node, "weight is not a constant (quantized or computed)")
        return None
    sx = ctx.act(x, node, "act_in")
    sy = ctx.act(y, node, "act_out", produced=True)
    if sx is None or sy is None:
        return None
    ctx.union(sy, ctx.param(w, node, "weight_out", out_axis))
    bias = optional_input(node, 2)
    if bias is not None:
        ctx.union(sy, ctx.param(bias, node, "bias", 0))
    return sx, sy


@register("Conv")
class ConvHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        spaces = _couple_layer(node, ctx, out_axis=0)
        if spaces is None:
            return
        sx, sy = spaces
        groups = int(node.attrs.get("group", 1))
        if groups == 1:
            ctx.union(sx, ctx.param(node.inputs[1], node, "weight_in", 1))
        elif ctx.size(sx) % groups or ctx.size(sy) % groups:
            ctx.freeze_node(node, f"channels not divisible by group={groups}")
        elif groups == ctx.size(sx):
            _depthwise_union(ctx, sx, sy)
        else:
            _grouped_union(ctx, node, sx, sy, groups)

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        if int(node.attrs.get("group", 1)) == 1:
            return
        per_group = int(node.inputs[1].values.shape[1])
        node.attrs["group"] = int(ctx.new_size(node.inputs[0])) // per_group


@register("ConvTranspose")
class ConvTransposeHandler(Handler):
    """ConvTranspose weights are laid out ``[Cin, Cout/g, k...]``: axis 0 is the input."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if int(node.attrs.get("group", 1)) != 1:
            ctx.freeze_node(node, "grouped ConvTranspose is not supported")
            return
        spaces = _couple_layer(node, ctx, out_axis=1)
        if spaces is not None:
            ctx.union(spaces[0], ctx.param(node.inputs[1], node, "weight_in", 0))
