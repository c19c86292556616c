"""Parameters and multiply-accumulates per layer, per sample (batch dimension ignored).

FLOPs in reports are ``2 * MACs``; pruning papers often say "FLOPs" for MACs, so both
are reported under their own names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.cost_models.signature import LAYER_OPS

__all__ = ["LayerStats", "ModelStats", "model_stats"]


@dataclass(frozen=True)
class LayerStats:
    node: str
    op: str
    in_channels: int
    out_channels: int
    params: int
    macs: int | None  # None when spatial sizes are unknown

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    layers: tuple[LayerStats, ...]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def by_node(self) -> dict[str, LayerStats]:
        return {layer.node: layer for layer in self.layers}


def _spatial(tensor: gs.Tensor) -> int | None:
    shape = tensor.shape
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return math.prod(shape[2:])


def _layer(node: gs.Node) -> LayerStats | None:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant):
        return None
    shape = tuple(int(d) for d in w.shape)
    params = sum(int(np.prod(t.shape)) for t in node.inputs[1:] if isinstance(t, gs.Constant))
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        out_sp = _spatial(node.outputs[0])
        macs = None if out_sp is None else int(math.prod(shape)) * out_sp
        return LayerStats(node.name, node.op, shape[1] * groups, shape[0], params, macs)
    if node.op == "ConvTranspose":
        groups = int(node.attrs.get("group", 1))
        in_sp = _spatial(node.inputs[0])
        macs = None if in_sp is None else int(math.prod(shape)) * in_sp
        return LayerStats(node.name, node.op, shape[0], shape[1] * groups, params, macs)
    trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
    k, n = (shape[1], shape[0]) if trans_b else (shape[0], shape[1])
    return LayerStats(node.name, node.op, k, n, params, k * n)


def model_stats(graph: gs.Graph) -> ModelStats:
    layers = tuple(
        stats
        for node in graph.nodes
        if node.op in LAYER_OPS and (stats := _layer(node)) is not None
    )
    params = sum(
        int(np.prod(t.shape))
        for t in graph.tensors().values()
        if isinstance(t, gs.Constant) and np.issubdtype(t.dtype, np.floating)
    )
    return ModelStats(params, sum(layer.macs or 0 for layer in layers), layers)
