"""From per-group channel counts to per-layer (in, out) channel counts.

A layer's input and output are channel spaces; a space loses ``width`` positions for each
channel removed from each group it belongs to (width 1 for a plain channel, H*W for a
flattened one, g for a grouped conv's shared position). Planners change group counts;
cost models answer per layer; this is the bridge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnx_hwprune.cost_models.signature import LAYER_OPS
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.analysis.stats import model_stats

__all__ = ["LayerChannels", "ChannelMap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerChannels:
    """A layer's input and output channel spaces, and how its MACs scale with them.

    ``macs`` at full size; a dense or grouped layer (groups kept) scales with in * out, a
    depthwise one (whose group count follows its channels) with out alone.
    """

    node: str
    in_space: tuple[str, int]
    out_space: tuple[str, int]
    macs: int = 0
    depthwise: bool = False


class ChannelMap:
    """Which groups each layer's input/output depends on, and by how much."""

    def __init__(self, graph: gs.Graph, groups: ChannelGroups, nodes: Iterable[str]) -> None:
        wanted = set(nodes)
        macs = {layer.node: layer.macs or 0 for layer in model_stats(graph).layers}
        self.sizes = dict(groups.space_sizes)
        layers = []
        for n in graph.nodes:
            if n.op not in LAYER_OPS or n.name not in wanted:
                continue
            sizes = _layer_sizes(n, self.sizes)
            if sizes is None:
                # The cost model knows the layer but this graph does not say its channel
                # counts (a symbolic or unknown shape): it is priced at full size.
                log.info("%s: channel counts unknown here; priced unpruned", n.name)
                continue
            layer = LayerChannels(
                n.name,
                (n.inputs[0].name, _channel_axis(n.inputs[0], n.op)),
                (n.outputs[0].name, _channel_axis(n.outputs[0], n.op)),
                macs.get(n.name, 0),
                n.op == "Conv" and int(n.attrs.get("group", 1)) == sizes[0] != 1,
            )
            self.sizes.setdefault(layer.in_space, sizes[0])
            self.sizes.setdefault(layer.out_space, sizes[1])
            layers.append(layer)
        self.layers = tuple(layers)
        # space -> [(group name, positions per group channel)]
        self.width: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for group in groups.prunable:
            for key, member in group.spaces().items():
                self.width.setdefault(key, []).append((group.name, len(member.index_map[0])))
        self.layers_of_group: dict[str, list[LayerChannels]] = {}
        for layer in self.layers:
            for space in (layer.in_space, layer.out_space):
                for name, _ in self.width.get(space, []):
                    entry = self.layers_of_group.setdefault(name, [])
                    if layer not in entry:
                        entry.append(layer)

    def space_size(self, space: tuple[str, int], removed: Mapping[str, int]) -> int:
        full = self.sizes[space]
        return full - sum(removed.get(name, 0) * width for name, width in self.width.get(space, []))

    def layer_counts(self, layer: LayerChannels, removed: Mapping[str, int]) -> tuple[int, int]:
        return self.space_size(layer.in_space, removed), self.space_size(layer.out_space, removed)

    def all_counts(self, removed: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        return {layer.node: self.layer_counts(layer, removed) for layer in self.layers}

    def macs(self, removed: Mapping[str, int]) -> int:
        """MACs of the mapped layers after removing ``removed[group]`` channels per group."""
        total = 0.0
        for layer in self.layers:
            in_ch, out_ch = self.layer_counts(layer, removed)
            scale = out_ch / self.sizes[layer.out_space]
            if not layer.depthwise:
                scale *= in_ch / self.sizes[layer.in_space]
            total += layer.macs * scale
        return round(total)


def _channel_axis(tensor: gs.Tensor, op: str) -> int:
    """Axis 1 for conv activations; the last axis for a MatMul/Gemm's features."""
    shape = tensor.shape
    return len(shape) - 1 if op in ("Gemm", "MatMul") and shape and len(shape) > 2 else 1


def _layer_sizes(node: gs.Node, known: Mapping[tuple[str, int], int]) -> tuple[int, int] | None:
    """(in, out) channels of a layer: from the analysis, else from its weight's dims
    (activation shapes can be symbolic or missing on real exports), else None."""
    spaces = [(t.name, _channel_axis(t, node.op)) for t in (node.inputs[0], node.outputs[0])]
    if all(s in known for s in spaces):
        return known[spaces[0]], known[spaces[1]]
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(weight, gs.Constant) or weight.values.ndim < 2:
        return None
    w = weight.values.shape
    group = int(node.attrs.get("group", 1))
    if node.op == "Conv":
        return int(w[1]) * group, int(w[0])
    if node.op == "ConvTranspose":
        return int(w[0]), int(w[1]) * group
    trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0)) == 1
    return (int(w[1]), int(w[0])) if trans_b else (int(w[0]), int(w[1]))
