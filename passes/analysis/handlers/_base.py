"""Building blocks shared by handlers."""

from __future__ import annotations

import abc

import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, RewriteContext, static_shape

__all__ = ["Handler", "couple_passthrough", "optional_input", "used", "rank"]


class Handler(abc.ABC):
    """Base for handlers whose rewrite has nothing to fix (the common case)."""

    @abc.abstractmethod
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None: ...

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        return None


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` if present (ONNX marks omitted optional inputs by an empty name)."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def used(tensor: gs.Tensor, graph_outputs: frozenset[str] = frozenset()) -> bool:
    return bool(tensor.name) and (bool(tensor.outputs) or tensor.name in graph_outputs)


def rank(tensor: gs.Tensor) -> int | None:
    shape = static_shape(tensor)
    return len(shape) if shape is not None else None


def couple_passthrough(
    node: gs.Node, ctx: CoupleContext, data: gs.Tensor, out: gs.Tensor
) -> int | None:
    """Channel c of ``out`` is channel c of ``data`` (elementwise, pooling, resize...)."""
    sin = ctx.act(data, node, "act_in")
    sout = ctx.act(out, node, "act_out", produced=True)
    if sin is None or sout is None:
        return None
    ctx.union(sin, sout)
    return sout
