"""Channel removal: apply a plan to the graph and return a new, smaller graph.

Rules:
- the input graph is not modified (the rewrite works on a copy);
- every constant space of a pruned group (weights on either axis, biases, BatchNorm
  parameters, per-channel constants) is sliced with ``np.take`` along its axis;
- every node's handler then fixes what slicing cannot: ``group`` of grouped convs,
  Split sizes, Slice bounds, Reshape and Resize constants;
- the shapes of pruned activation spaces are updated (handlers update the tensors they
  own that are not channel spaces), and the frontend re-infers every shape on export.
Preconditions: ``plan`` was validated against ``groups``, and ``groups`` was computed
on this very graph.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis._context import RewriteContext
from onnx_hwprune.passes.analysis._registry import DEFAULT_REGISTRY, HandlerRegistry
from onnx_hwprune.passes.analysis.channel_groups import graph_opset
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["RemoveChannels", "kept_positions", "remove_channels"]

log = logging.getLogger(__name__)


def kept_positions(groups: ChannelGroups, plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """For every space that loses channels, the sorted positions it keeps."""
    removed: dict[tuple[str, int], list[int]] = defaultdict(list)
    for name, gp in plan.pruned_groups().items():
        group = groups[name]
        for key, member in group.spaces().items():
            removed[key].extend(member.positions(gp.removed))
    kept = {}
    for key, positions in removed.items():
        mask = np.ones(groups.space_sizes[key], dtype=bool)
        mask[positions] = False
        kept[key] = np.nonzero(mask)[0]
    return kept


def remove_channels(
    graph: gs.Graph, groups: ChannelGroups, plan: Plan, registry: HandlerRegistry = DEFAULT_REGISTRY
) -> gs.Graph:
    """A copy of ``graph`` without the channels ``plan`` removes (see module rules)."""
    kept = kept_positions(groups, plan)
    new = graph.copy()
    tensors = new.tensors()
    _slice_constants(tensors, kept)
    ctx = RewriteContext(kept, groups.space_sizes)
    opset = graph_opset(new)
    for node in new.nodes:
        handler = registry.lookup(node.op, node.domain or "", opset)
        if handler is not None:
            handler.rewrite(node, ctx)
    _update_shapes(tensors, kept)
    new.cleanup(remove_unused_graph_inputs=False).toposort()
    log.info("removed channels from %d spaces", len(kept))
    return new


def _slice_constants(
    tensors: dict[str, gs.Tensor], kept: dict[tuple[str, int], np.ndarray]
) -> None:
    for (name, axis), positions in sorted(kept.items()):
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Constant):
            tensor.values = np.ascontiguousarray(
                np.take(np.asarray(tensor.values), positions, axis=axis)
            )


def _update_shapes(tensors: dict[str, gs.Tensor], kept: dict[tuple[str, int], np.ndarray]) -> None:
    for (name, axis), positions in kept.items():
        tensor = tensors[name]
        if isinstance(tensor, gs.Variable) and tensor.shape is not None:
            shape = list(tensor.shape)
            shape[axis] = len(positions)
            tensor.shape = shape


class RemoveChannels(Pass):
    """Rewrite pass: apply ``Module.plan``. The result's groups/scores are cleared (they
    describe the old graph); the plan is kept for the report."""

    name = "RemoveChannels"

    def __init__(self, registry: HandlerRegistry = DEFAULT_REGISTRY) -> None:
        self.registry = registry

    def requires(self, mod: Module) -> None:
        if mod.groups is None or mod.plan is None:
            raise PassError(f"{self.name} needs channel groups and a plan")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        mod.plan.validate(mod.groups)
        graph = remove_channels(mod.graph, mod.groups, mod.plan, self.registry)
        return Module(graph=graph, plan=mod.plan)
