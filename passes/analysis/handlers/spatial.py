"""Ops that work on each channel separately over space: pooling, padding, resizing,
reductions over spatial axes, and softmax-like ops over a non-channel axis."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, RewriteContext, const_values
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import (
    Handler,
    couple_passthrough,
    optional_input,
    rank,
    used,
)

__all__ = ["PoolHandler", "PadHandler", "ResizeHandler", "ReduceHandler", "SoftmaxHandler"]


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
class PoolHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if any(used(t) for t in node.outputs[1:]):
            ctx.freeze_node(node, "MaxPool indices output is used")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("Pad", since=11)
class PadHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        pads = const_values(node.inputs[1]) if len(node.inputs) > 1 else None
        r = rank(node.inputs[0])
        if pads is None or r is None:
            ctx.freeze_node(node, "pads are not constant")
            return
        axes_t = optional_input(node, 3)
        axes = const_values(axes_t) if axes_t is not None else np.arange(r)
        if axes is None:
            ctx.freeze_node(node, "pad axes are not constant")
            return
        axes = [int(a) % r for a in axes]
        if 1 in axes:
            i = axes.index(1)
            if pads[i] != 0 or pads[i + len(axes)] != 0:
                ctx.freeze_node(node, "pads the channel axis")
                return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("Resize", since=10)
class ResizeHandler(Handler):
    """Resize keeps channels when its channel scale is 1; a ``sizes`` input names the
    channel count, which ``rewrite`` updates."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        factor = self._channel_entry(node)
        if factor is None:
            ctx.freeze_node(node, "scales/sizes are not constant")
            return
        index, value, is_size = factor
        channels = (node.inputs[0].shape or [None, None])[1]
        if index is not None and (value != channels if is_size else value != 1):
            ctx.freeze_node(node, "resizes the channel axis")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])

    @staticmethod
    def _channel_entry(node: gs.Node) -> tuple[int | None, float, bool] | None:
        """(position of the channel axis in scales/sizes, its value, is it a size)."""
        axes = node.attrs.get("axes")
        for input_index, is_size in ((3, True), (2, False)):
            t = optional_input(node, input_index)
            if t is None:
                continue
            values = const_values(t)
            if values is None:
                return None
            if values.size == 0:
                continue
            positions = list(axes) if axes is not None else list(range(values.size))
            if 1 not in positions:
                return (None, 1, is_size)
            return (positions.index(1), float(values[positions.index(1)]), is_size)
        return None

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        sizes = optional_input(node, 3)
        entry = self._channel_entry(node)
        if sizes is None or entry is None or entry[0] is None or not entry[2]:
            return
        values = np.array(const_values(sizes), copy=True)
        values[entry[0]] = ctx.new_size(node.inputs[0])
        ctx.set_const_input(node, 3, values)


_REDUCE_OPS = (
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


@register(*_REDUCE_OPS)
class ReduceHandler(Handler):
    """A reduction over spatial axes keeps channels; over the channel axis it mixes them."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        r = rank(node.inputs[0])
        axes = self._axes(node)
        if r is None or axes is None:
            ctx.freeze_node(node, "reduction axes are unknown")
            return
        axes = {a % r for a in axes} if len(axes) else set(range(r))
        keepdims = int(node.attrs.get("keepdims", 1))
        if 1 in axes or (0 in axes and not keepdims):
            ctx.freeze_node(node, "reduces over (or moves) the channel axis")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])

    @staticmethod
    def _axes(node: gs.Node) -> list[int] | None:
        if "axes" in node.attrs:
            return [int(a) for a in node.attrs["axes"]]
        t = optional_input(node, 1)
        if t is None:
            return [] if not int(node.attrs.get("noop_with_empty_axes", 0)) else None
        values = const_values(t)
        return None if values is None else [int(a) for a in values]


@register("Softmax", "LogSoftmax", "Hardmax")
class SoftmaxHandler(Handler):
    """Softmax over the channel axis mixes channels; over another axis it does not.

    Before opset 13 the input is coerced to 2-D at ``axis``, so every axis >= ``axis``
    takes part: the channel axis is involved whenever ``axis <= 1``.
    """

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        r = rank(node.inputs[0])
        default = -1 if ctx.opset >= 13 else 1
        axis = int(node.attrs.get("axis", default))
        if r is None:
            ctx.freeze_node(node, "rank unknown")
            return
        axis %= r
        mixes = axis == 1 if ctx.opset >= 13 else axis <= 1
        if mixes:
            ctx.freeze_node(node, "normalizes across channels")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
