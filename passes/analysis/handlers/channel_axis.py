"""Concat, Split and Slice: ops that move channels to other positions of the axis.

Worked example, ``Concat(a[16], b[8]) -> y[24]``: ``a[i] == y[i]`` and ``b[i] == y[16+i]``.
The atoms of ``a`` and of ``b`` stay in different groups (they come from different
producers) and are pruned independently; ``y`` simply loses the positions of both.
Split is the mirror image. Slice keeps a contiguous range ``[start, end)``; after
pruning, its bounds are recomputed from the kept positions, which are contiguous in the
new indexing because the channels inside the range form their own atoms.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, RewriteContext, const_values
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, optional_input, rank

__all__ = ["ConcatHandler", "SplitHandler", "SliceHandler", "couple_whole"]


def _is_channel_axis(node: gs.Node, data: gs.Tensor, default: int = 0) -> bool | None:
    r = rank(data)
    if r is None:
        return None
    return int(node.attrs.get("axis", default)) % r == 1


def _couple_pieces(node: gs.Node, ctx: CoupleContext, whole: int, pieces: list[int | None]) -> None:
    """Piece k covers positions ``offset_k .. offset_k + size_k - 1`` of the whole."""
    offset = 0
    for sp in pieces:
        if sp is None:
            return
        n = ctx.size(sp)
        ctx.union(whole, sp, np.arange(offset, offset + n), np.arange(n))
        offset += n
    if offset != ctx.size(whole):
        ctx.freeze_node(node, f"pieces cover {offset} of {ctx.size(whole)} channels")


def _couple_whole(
    node: gs.Node, ctx: CoupleContext, whole: gs.Tensor, pieces: list[gs.Tensor]
) -> None:
    """Concat (pieces in, whole out) and Split (whole in, pieces out): offsets on the
    channel axis, one-to-one coupling on any other axis."""
    on_channels = _is_channel_axis(node, whole)
    if on_channels is None or any(const_values(t) is not None for t in (whole, *pieces)):
        ctx.freeze_node(node, "rank unknown or constant operand")
        return
    whole_is_output = whole is node.outputs[0]
    sw = ctx.act(whole, node, "act_out" if whole_is_output else "act_in", produced=whole_is_output)
    role = "act_in" if whole_is_output else "act_out"
    parts = [ctx.act(t, node, role, produced=not whole_is_output) for t in pieces]
    if sw is None:
        return
    if on_channels:
        _couple_pieces(node, ctx, sw, parts)
        return
    for sp in parts:
        if sp is not None:
            ctx.union(sw, sp)


couple_whole = _couple_whole  # shared with QLinearConcat (quant.py)


@register("Concat")
class ConcatHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        _couple_whole(node, ctx, node.outputs[0], list(node.inputs))


@register("Split")
class SplitHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        _couple_whole(node, ctx, node.inputs[0], list(node.outputs))

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        if not ctx.changed(node.inputs[0]) or not _is_channel_axis(node, node.inputs[0]):
            return
        sizes = np.array([ctx.new_size(t) for t in node.outputs], dtype=np.int64)
        if "split" in node.attrs:  # before opset 13
            node.attrs["split"] = [int(s) for s in sizes]
            return
        node.attrs.pop("num_outputs", None)  # opset 18: an explicit split replaces it
        if len(node.inputs) < 2:
            node.inputs.append(gs.Constant(f"{node.name}/hwprune_in1", sizes))
        else:
            ctx.set_const_input(node, 1, sizes)


@register("Slice", since=10)
class SliceHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        bounds = _channel_bounds(node)
        if bounds is False:
            ctx.freeze_node(node, "slice bounds are not constant, or step != 1 on channels")
            return
        sx = ctx.act(node.inputs[0], node, "act_in")
        sy = ctx.act(node.outputs[0], node, "act_out", produced=True)
        if sx is None or sy is None:
            return
        if bounds is None:
            ctx.union(sx, sy)
            return
        start, stop = _resolve(bounds, ctx.size(sx))
        if stop - start != ctx.size(sy):
            ctx.freeze_node(node, "slice length does not match the output")
            return
        ctx.union(sx, sy, np.arange(start, stop), np.arange(stop - start))

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        bounds = _channel_bounds(node)
        data = node.inputs[0]
        if not bounds or not ctx.changed(data):
            return
        position, _, _ = bounds
        start, _ = _resolve(bounds, int(ctx.old_size(data)))
        kept = ctx.kept_of(data)
        new_start = int(np.searchsorted(kept, start))
        new_stop = new_start + int(ctx.new_size(node.outputs[0]))
        for index, value in ((1, new_start), (2, new_stop)):
            values = np.array(const_values(node.inputs[index]), copy=True)
            values[position] = value
            ctx.set_const_input(node, index, values)


def _channel_bounds(node: gs.Node) -> tuple[int, int, int] | None | bool:
    """(position in starts/ends, start, end) of the channel axis; None if the channel axis
    is not sliced; False if the slice cannot be handled."""
    r = rank(node.inputs[0])
    consts = [
        const_values(t) if t is not None else None
        for t in (optional_input(node, i) for i in range(1, 5))
    ]
    starts, ends, axes, steps = consts
    if r is None or starts is None or ends is None:
        return False
    if optional_input(node, 3) is not None and axes is None:
        return False
    if optional_input(node, 4) is not None and steps is None:
        return False
    axes_list = [int(a) % r for a in axes] if axes is not None else list(range(len(starts)))
    if 1 not in axes_list:
        return None
    position = axes_list.index(1)
    if steps is not None and int(steps[position]) != 1:
        return False
    return position, int(starts[position]), int(ends[position])


def _resolve(bounds: tuple[int, int, int], size: int) -> tuple[int, int]:
    _, start, end = bounds
    start, stop, _ = slice(start, end).indices(size)
    return start, max(start, stop)
