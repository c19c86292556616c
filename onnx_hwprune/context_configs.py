"""The pruned networks that in-context timing measures (composed here, above the runtime).

``runtime/`` times models and never calls into ``passes/``; which networks to time is a
composition of passes (channel-group analysis, removal), so it lives here and is handed
to :func:`~onnx_hwprune.runtime.profiler.build_cost_model` as ``context_models``.

The configurations (each cuts every prunable channel group the same way, keeping its
first channels; groups under 8 channels stay whole):

- ``stair``: ~75% of each group, rounded down to a multiple of 16 (a stair level of the
  NCHWc block on AVX-512), so the aligned ratio is known away from full;
- ``v0`` .. ``v3``: the largest count below full whose 2-adic valuation is 0, 1, 2, 3
  (64 -> 63, 62, 60, 56): one count of each alignment class that libraries switch kernels
  or layouts on. Whatever the target penalises, one of these shows it.

The original itself is the sixth (``full``), added by the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnx_hwprune.cost_models.staircase import valuation
from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels

__all__ = ["CONFIGS", "config_plans", "context_models", "first_channels_plan"]

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
    plans = {name: first_channels_plan(groups, count_of) for name, count_of in CONFIGS.items()}
    return {name: plan for name, plan in plans.items() if plan.groups}


def first_channels_plan(
    groups: ChannelGroups, count_of: Callable[[int], int | None], method: str = "context"
) -> Plan:
    """Every prunable group of 8 channels or more keeps its first ``count_of(size)``
    channels (None, 0 or the full size: it stays whole). ``count_of`` is called for every
    prunable group in order, so a random one draws the same sequence whatever it cuts."""
    cut = {}
    for g in groups.prunable:
        k = count_of(g.size)
        if g.size >= _MIN_GROUP and k is not None and 0 < k < g.size:
            cut[g.name] = GroupPlan(g.size, tuple(range(k)))
    return Plan(cut, method=method)


def context_models(model: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """The pruned networks of :data:`CONFIGS` for ``model`` (a normalised, static model)."""
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    return {
        name: export_model(remove_channels(graph, groups, plan))
        for name, plan in config_plans(groups).items()
    }
