"""Helpers shared by the family builders: the input, the classifier head."""

from __future__ import annotations

from ._graph import GraphBuilder

__all__ = ["CLASSES", "INPUT_SHAPE", "head", "start"]

#: (channels, height, width) of every family's input.
INPUT_SHAPE = (3, 32, 32)
#: Number of logits of the classifier families.
CLASSES = 10


def start(name: str, seed: int, batch: int | str, opset: int) -> tuple[GraphBuilder, str]:
    """Returns a builder and its ``input`` tensor (N x 3 x 32 x 32)."""
    g = GraphBuilder(name, seed=seed, opset=opset, batch=batch)
    return g, g.input(*INPUT_SHAPE)


def head(g: GraphBuilder, x: str) -> str:
    """GlobalAveragePool -> Flatten -> Gemm(10): the fc input is coupled with ``x``."""
    with g.scope("head"):
        return g.gemm(g.flatten(g.gap(x)), CLASSES)
