"""Ops that change a tensor's layout: Flatten, Reshape, Transpose, Squeeze, Unsqueeze.

Three layouts are understood, everything else freezes:

1. *Flatten into features* (``[N,C,H,W] -> [N, C*H*W]``, by Flatten or a Reshape with a
   hard-coded shape): channel c becomes features ``c*H*W .. (c+1)*H*W - 1``. A hard-coded
   feature count in the Reshape's shape constant is updated after pruning.
2. *Channel axis kept in place* (``[N,C,H,W] -> [N,C,H*W]``, ``[N,C,1,1] -> [N,C]``).
3. *Channel shuffle*, ``Reshape [N,g,C/g,H,W] -> Transpose(0,2,1,3,4) -> Reshape [N,C,H,W]``:
   input channel ``a*(C/g) + b`` moves to output ``b*g + a``. To stay a shuffle after
   pruning, every one of the g groups must keep the same positions b, so the g channels
   ``{a*(C/g) + b : a}`` form one atom. The first Reshape's handler couples the whole
   pattern; the Transpose and the second Reshape recognise that they belong to it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import (
    CoupleContext,
    RewriteContext,
    const_values,
    static_shape,
)
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, couple_passthrough

__all__ = [
    "FlattenHandler",
    "ReshapeHandler",
    "TransposeHandler",
    "SqueezeHandler",
    "ShapeOnlyHandler",
]

_SHUFFLE_PERM = [0, 2, 1, 3, 4]


def _single_consumer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    if len(tensor.outputs) == 1 and tensor.outputs[0].op == op:
        return tensor.outputs[0]
    return None


def _single_producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == op and len(tensor.outputs) == 1:
        return tensor.inputs[0]
    return None


def _shuffle_nodes(node: gs.Node) -> tuple[gs.Node, gs.Node, gs.Node] | None:
    """The (reshape, transpose, reshape) triple ``node`` belongs to, by structure alone.

    Shapes are not looked at, so this also holds while a rewrite is half done.
    """
    if node.op == "Reshape" and len(_target(node)) == 5:
        first = node
    elif node.op == "Transpose":
        first = _single_producer(node.inputs[0], "Reshape")
    elif node.op == "Reshape":
        t = _single_producer(node.inputs[0], "Transpose")
        first = _single_producer(t.inputs[0], "Reshape") if t is not None else None
    else:
        return None
    if first is None or len(_target(first)) != 5:
        return None
    transpose = _single_consumer(first.outputs[0], "Transpose")
    last = _single_consumer(transpose.outputs[0], "Reshape") if transpose is not None else None
    if (
        last is None
        or list(transpose.attrs.get("perm", [])) != _SHUFFLE_PERM
        or len(_target(last)) != 4
    ):
        return None
    return first, transpose, last


def _target(node: gs.Node) -> list[int]:
    values = const_values(node.inputs[1]) if len(node.inputs) > 1 else None
    return [] if values is None else values.tolist()


def shuffle_pattern(node: gs.Node) -> tuple[gs.Node, gs.Node, gs.Node] | None:
    """The shuffle triple ``node`` belongs to, if its shapes make it a channel shuffle."""
    nodes = _shuffle_nodes(node)
    if nodes is None:
        return None
    first, _, last = nodes
    in_shape, mid, out_shape = (
        static_shape(first.inputs[0]),
        static_shape(first.outputs[0]),
        static_shape(last.outputs[0]),
    )
    if not in_shape or not mid or not out_shape or len(in_shape) != 4 or len(out_shape) != 4:
        return None
    if not all(isinstance(d, int) for d in (in_shape[1], mid[1], mid[2], out_shape[1])):
        return None
    if mid[1] * mid[2] != in_shape[1] or out_shape[1] != in_shape[1]:
        return None
    return nodes


def _couple_shuffle(ctx: CoupleContext, first: gs.Node, last: gs.Node) -> None:
    groups, per_group = static_shape(first.outputs[0])[1:3]
    sx = ctx.act(first.inputs[0], first, "act_in")
    sy = ctx.act(last.outputs[0], last, "act_out", produced=True)
    if sx is None or sy is None:
        return
    a, b = np.divmod(np.arange(groups * per_group), per_group)
    ctx.union(sx, sy, a * per_group + b, b * groups + a)
    ctx.union(sx, sx, a * per_group + b, b)  # same b in every group: one atom


def _flatten_blocks(ctx: CoupleContext, node: gs.Node) -> bool:
    """Couple channel c with its block of H*W features; False if shapes do not fit."""
    in_shape, out_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    if not in_shape or not out_shape or len(in_shape) < 3 or len(out_shape) != 2:
        return False
    spatial = in_shape[2:]
    if not all(isinstance(d, int) for d in [*spatial, in_shape[1], out_shape[1]]):
        return False
    block = math.prod(spatial)
    if out_shape[1] != in_shape[1] * block:
        return False
    sx = ctx.act(node.inputs[0], node, "act_in")
    sy = ctx.act(node.outputs[0], node, "act_out", produced=True)
    if sx is not None and sy is not None:
        features = np.arange(out_shape[1])
        ctx.union(sy, sx, features, features // block)
    return True


def _keeps_channel_axis(node: gs.Node) -> bool:
    in_shape, out_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    if not in_shape or not out_shape or len(in_shape) < 2 or len(out_shape) < 2:
        return False
    return (
        in_shape[0] == out_shape[0] and in_shape[1] == out_shape[1] and isinstance(in_shape[1], int)
    )


@register("Flatten")
class FlattenHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if int(node.attrs.get("axis", 1)) != 1:
            ctx.freeze_node(node, "flattens at an axis other than 1")
        elif len(static_shape(node.inputs[0]) or []) == 2:
            couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        elif not _flatten_blocks(ctx, node):
            ctx.freeze_node(node, "input shape is not static")


@register("Reshape", since=5)
class ReshapeHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        pattern = shuffle_pattern(node)
        if pattern is not None:
            if node is pattern[0]:
                _couple_shuffle(ctx, pattern[0], pattern[2])
            return
        if const_values(node.inputs[1]) is None:
            ctx.freeze_node(node, "target shape is computed at run time")
        elif _keeps_channel_axis(node):
            couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        elif not _flatten_blocks(ctx, node):
            ctx.freeze_node(node, "reshape moves or splits the channel axis")

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        pattern = _shuffle_nodes(node)
        source = pattern[0].inputs[0] if pattern else node.inputs[0]
        if not ctx.changed(source):
            return
        target = np.array(const_values(node.inputs[1]), copy=True)
        if pattern is not None and node is pattern[0]:
            groups = int(target[1])
            target[2] = ctx.new_size(source) // groups
            _resize_middle(pattern, int(target[2]))
        elif target.size > 1 and target[1] > 0:
            target[1] = ctx.new_size(node.outputs[0])
        ctx.set_const_input(node, 1, target)


def _resize_middle(pattern: tuple[gs.Node, gs.Node, gs.Node], per_group: int) -> None:
    """The 5-D tensors inside a shuffle are no channel spaces: their shapes are ours."""
    first, transpose, _ = pattern
    for tensor, axis in ((first.outputs[0], 2), (transpose.outputs[0], 1)):
        if tensor.shape is not None:
            shape = list(tensor.shape)
            shape[axis] = per_group
            tensor.shape = shape


@register("Transpose")
class TransposeHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        if shuffle_pattern(node) is not None:
            return
        perm = node.attrs.get("perm")
        if perm is None or len(perm) < 2 or int(perm[1]) != 1:
            ctx.freeze_node(node, "moves the channel axis")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("Squeeze", "Unsqueeze")
class SqueezeHandler(Handler):
    """Removing or adding axes other than 0 and 1 leaves the channel axis at 1."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            values = const_values(node.inputs[1])
            axes = None if values is None else values.tolist()
        ranks = [len(static_shape(t) or []) for t in (node.inputs[0], node.outputs[0])]
        r = max(ranks)
        if axes is None or not r or any(int(a) % r in (0, 1) for a in axes):
            ctx.freeze_node(node, "axes unknown or they move the channel axis")
            return
        couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])


@register("Shape", "Size")
class ShapeOnlyHandler(Handler):
    """Reads only the shape: recomputed at run time from the pruned tensor, no coupling.

    Whatever consumes the shape (a Reshape with a computed target) is judged by its own
    handler.
    """

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        return None
