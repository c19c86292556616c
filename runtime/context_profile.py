"""Time whole pruned networks under onnxruntime's per-node profiler: in-context points.

Which configurations (each cuts every prunable channel group the same way, keeping its
first channels; groups too small for a cut stay whole):

- ``full``: the original;
- ``stair``: ~75% of each group, rounded down to a multiple of 16 (a stair level of the
  NCHWc block on AVX-512), so the aligned ratio is known away from full;
- ``v0`` .. ``v3``: the largest count below full whose 2-adic valuation is 0, 1, 2, 3
  (64 -> 63, 62, 60, 56): one count of each alignment class that libraries switch kernels
  or layouts on. Whatever the target penalises, one of these shows it.

Each run gives every layer a point ``(in, out, ms)`` (:mod:`~.node_profile` attributes
fused kernels to their layer). Layout reorders that onnxruntime inserts around a layer
whose in-channels break the NCHWc chain belong to no layer: the residual's growth over the
full configuration is shared among the layers of that configuration whose in-channel
class is off the aligned one, in proportion to their time, so the penalty lands on the
layers that cause it.

Each configuration's per-node times are scaled to its whole-network latency measured
with the timing protocol (all configurations interleaved), as :mod:`~.node_profile` does
for the original: under load the profiler's per-node medians are biased (seen here at
load 7 on 2 cores: a configuration at 61% of the original's wall time summed to 24-37% of
its per-node time), the interleaved wall-time ratios are not. The per-node runs are
interleaved too where the backend can (``node_times_many``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnx_hwprune.cost_models.context import ContextPoint, alignment_class
from onnx_hwprune.cost_models.signature import Layer, extract_layers
from onnx_hwprune.cost_models.staircase import valuation
from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels

__all__ = ["CONFIGS", "config_plans", "measure_context"]

logger = logging.getLogger(__name__)

NodeTimes = Callable[[dict[str, onnx.ModelProto]], dict[str, dict[str, float]]]
"""``node_times({config: model}) -> {config: {node: ms}}``, ideally in interleaved rounds."""
WallTimes = Callable[[dict[str, onnx.ModelProto]], dict[str, float]]
"""``wall_times({config: model}) -> {config: ms}``: the timing protocol, interleaved."""

_MIN_GROUP = 8  # smaller groups stay whole: too few channels for a class probe
CONFIGS: dict[str, Callable[[int], int | None]] = {
    "stair": lambda n: (int(0.75 * n) // 16 * 16) or None,
    **{f"v{v}": (lambda n, v=v: _below_with_valuation(n, v)) for v in range(4)},
}
"""Configuration name -> the count a group of size ``n`` keeps (None: stays whole)."""


def _below_with_valuation(n: int, v: int) -> int | None:
    """Largest count in [n/2, n) whose 2-adic valuation is exactly ``v``."""
    c = n - 1
    while c >= n // 2 and valuation(c) != v:
        c -= 1
    return c if c >= n // 2 and valuation(c) == v else None


def config_plans(groups: ChannelGroups) -> dict[str, Plan]:
    """The plans of :data:`CONFIGS` for the prunable ``groups`` (empty ones dropped)."""
    plans = {}
    for name, count_of in CONFIGS.items():
        cut = {}
        for g in groups.prunable:
            k = count_of(g.size) if g.size >= _MIN_GROUP else None
            if k is not None and 0 < k < g.size:
                cut[g.name] = GroupPlan(g.size, tuple(range(k)))
        if cut:
            plans[name] = Plan(cut, method="context")
    return plans


def measure_context(
    model: onnx.ModelProto, layers: Sequence[Layer], node_times: NodeTimes, wall_times: WallTimes
) -> list[ContextPoint]:
    """In-context points of every layer at every configuration (see module doc)."""
    graph = load_graph(model)
    mod = ChannelGroupAnalysis()(Module(graph), PassContext())
    names = [layer.node for layer in layers]
    full = {layer.node: (layer.in_channels, layer.out_channels) for layer in layers}
    runs = {"full": (model, full)}
    for name, plan in config_plans(mod.groups).items():
        pruned = export_model(remove_channels(graph, mod.groups, plan))
        cut = extract_layers(gs.import_onnx(pruned))
        runs[name] = (pruned, {x.node: (x.in_channels, x.out_channels) for x in cut})
    return _profile_runs(runs, names, full, node_times, wall_times)


def _profile_runs(runs, names, full, node_times, wall_times) -> list[ContextPoint]:
    from onnx_hwprune.runtime.node_profile import attribute_to_layers

    points, base_residual = [], None
    models = {config: m for config, (m, _) in runs.items()}
    times, walls = node_times(models), wall_times(models)
    for config, (m, counts) in runs.items():
        node_ms = times[config]
        ctx = attribute_to_layers(m, node_ms, names, walls[config])
        layer_ms = dict(ctx.layer_ms)
        if base_residual is None:
            base_residual = ctx.residual_ms
        _share_reorders(layer_ms, counts, full, ctx.residual_ms - base_residual)
        points += [ContextPoint(config, n, *counts[n], ms) for n, ms in layer_ms.items()
                   if n in counts and ms > 0]  # fmt: skip
        logger.info("in context %s: %.3f ms (%.3f ms profiled)", config, walls[config],
                    sum(node_ms.values()))  # fmt: skip
    return points


def _off_class(count: int, full: int) -> bool:
    return alignment_class(count, full) < alignment_class(full, full)


def _share_reorders(layer_ms: dict, counts: dict, full: dict, extra: float) -> None:
    """Give the residual's growth to the layers whose in-channel class is off-aligned."""
    off = [n for n in layer_ms if n in counts and _off_class(counts[n][0], full[n][0])]
    weight = sum(layer_ms[n] for n in off)
    if extra <= 0 or weight <= 0:
        return
    for n in off:
        layer_ms[n] += extra * layer_ms[n] / weight
