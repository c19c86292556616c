"""Normalisation layers: per-channel ones couple their parameters to the channel; those
that mix channels (LRN, LayerNorm/GroupNorm over the channel axis) freeze it."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, couple_passthrough, rank, used

__all__ = ["BatchNormHandler", "InstanceNormHandler", "CrossChannelHandler", "LayerNormHandler"]


def _couple_params(
    node: gs.Node, ctx: CoupleContext, sy: int, first: int, last: int, role: str
) -> None:
    for index in range(first, min(last, len(node.inputs))):
        sp = ctx.param(node.inputs[index], node, role if index == first else "norm_param", 0)
        if sp is None:
            ctx.freeze_node(node, f"parameter {node.inputs[index].name} is not a constant")
            return
        ctx.union(sy, sp)


@register("BatchNormalization")
class BatchNormHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if any(used(t) for t in node.outputs[1:]):
            ctx.freeze_node(node, "training-mode outputs are used")
            return
        sy = couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        if sy is not None:
            _couple_params(node, ctx, sy, 1, 5, "bn_scale")


@register("InstanceNormalization")
class InstanceNormHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        if sy is not None:
            _couple_params(node, ctx, sy, 1, 3, "norm_scale")


@register("LRN", "GroupNormalization")
class CrossChannelHandler(Handler):
    """These normalise over neighbouring channels: removing one changes the others."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        ctx.freeze_node(node, "normalizes across channels")


@register("LayerNormalization")
class LayerNormHandler(Handler):
    """LayerNorm normalises over axes ``axis..rank-1``: per-channel only when axis >= 2."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        r = rank(node.inputs[0])
        axis = int(node.attrs.get("axis", -1))
        if r is None or (axis % r) <= 1:
            ctx.freeze_node(node, "normalizes across channels")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
