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

from onnx_hwprune.passes.analysis._context import (
    CoupleContext,
    RewriteContext,
    const_shape,
)
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, optional_input

__all__ = ["ConvHandler", "ConvTransposeHandler", "couple_conv", "rewrite_group"]


def _depthwise_union(ctx: CoupleContext, sx: int, sy: int) -> None:
    multiplier = ctx.size(sy) // ctx.size(sx)
    y = np.arange(ctx.size(sy))
    ctx.union(sx, sy, y // multiplier, y)


def _grouped_union(
    ctx: CoupleContext, node: gs.Node, sx: int, sy: int, groups: int, w_index: int = 1
) -> None:
    w = node.inputs[w_index]
    sw_in = ctx.param(w, node, "weight_in", 1)
    x = np.arange(ctx.size(sx))
    ctx.union(sx, sw_in, x, x % ctx.size(sw_in))
    per_out = ctx.size(sy) // groups
    y = np.arange(ctx.size(sy))
    ctx.union(sy, sy, y, y % per_out)  # same local output position in every group


def _couple_layer(
    node: gs.Node, ctx: CoupleContext, out_axis: int, w_index: int = 1, b_index: int | None = 2
) -> tuple[int, int] | None:
    """The part Conv and ConvTranspose share: activations, filters (weight axis
    ``out_axis``) and bias on the output space. None after freezing.

    ``w_index``/``b_index`` locate weight and bias for the quantized variants
    (QLinearConv, ConvInteger, see ``quant.py``)."""
    x, w, y = node.inputs[0], node.inputs[w_index], node.outputs[0]
    if const_shape(w) is None:
        ctx.freeze_node(node, "weight is not a constant (quantized or computed)")
        return None
    sx = ctx.act(x, node, "act_in")
    sy = ctx.act(y, node, "act_out", produced=True)
    if sx is None or sy is None:
        return None
    ctx.union(sy, ctx.param(w, node, "weight_out", out_axis))
    bias = optional_input(node, b_index) if b_index is not None else None
    if bias is not None:
        sb = ctx.param(bias, node, "bias", 0)
        if sb is None:
            ctx.freeze_node(node, f"bias {bias.name} is not a constant")
            return None
        ctx.union(sy, sb)
    return sx, sy


def couple_conv(
    node: gs.Node, ctx: CoupleContext, w_index: int = 1, b_index: int | None = 2
) -> int | None:
    """Couple a Conv-like node (input 0, weight ``w_index``); the output space or None."""
    spaces = _couple_layer(node, ctx, 0, w_index, b_index)
    if spaces is None:
        return None
    sx, sy = spaces
    groups = int(node.attrs.get("group", 1))
    if groups == 1:
        ctx.union(sx, ctx.param(node.inputs[w_index], node, "weight_in", 1))
    elif ctx.size(sx) % groups or ctx.size(sy) % groups:
        ctx.freeze_node(node, f"channels not divisible by group={groups}")
    elif groups == ctx.size(sx):
        _depthwise_union(ctx, sx, sy)
    else:
        _grouped_union(ctx, node, sx, sy, groups, w_index)
    return sy


def rewrite_group(node: gs.Node, ctx: RewriteContext, w_index: int = 1) -> None:
    """A grouped conv keeps its per-group width: the group count follows the input."""
    if int(node.attrs.get("group", 1)) == 1:
        return
    per_group = const_shape(node.inputs[w_index])[1]
    node.attrs["group"] = int(ctx.new_size(node.inputs[0])) // per_group


@register("Conv")
class ConvHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        couple_conv(node, ctx)

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        rewrite_group(node, ctx)


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
