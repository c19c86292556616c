"""The "uninstructed" planners that hardware-aware planning must beat.

- ``uniform``: every prunable group loses the same fraction ``ratio`` of its channels,
  the lowest-scoring ones.
- ``global``: one ranking of all channels of all groups by score normalised by the
  group's mean score (raw scores of different layers are not comparable; normalised,
  a channel competes by how weak it is *within its layer*), removing the weakest
  ``ratio`` of all channels, with no group losing more than ``max_group_ratio``.

Both keep at least ``min_channels`` channels per group (never zero) and break ties by
channel index, so plans are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan

__all__ = [
    "GlobalPlanner",
    "UniformPlanner",
    "check_ratio",
    "global_plan",
    "keep_top",
    "uniform_plan",
]


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """``ratio`` if it is a share of channels to remove, in [0, 1); else :class:`UserError`."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {ratio}")
    return ratio


def keep_top(scores: np.ndarray, n_keep: int) -> tuple[int, ...]:
    """Indices of the ``n_keep`` highest scores, ties to the lower index, sorted."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return tuple(sorted(int(i) for i in order[:n_keep]))


def _floor(size: int, min_channels: int) -> int:
    return min(size, max(1, min_channels))


def uniform_plan(
    groups: ChannelGroups, scores: Mapping[str, np.ndarray], ratio: float, min_channels: int = 1
) -> Plan:
    plans = {}
    for group in groups.prunable:
        n_keep = max(
            _floor(group.size, min_channels), group.size - math.floor(group.size * ratio + 1e-9)
        )
        plans[group.name] = GroupPlan(group.size, keep_top(scores[group.name], n_keep))
    return Plan(plans, method="uniform", meta={"ratio": ratio})


def global_plan(
    groups: ChannelGroups,
    scores: Mapping[str, np.ndarray],
    ratio: float,
    min_channels: int = 1,
    max_group_ratio: float = 0.9,
) -> Plan:
    prunable = groups.prunable
    candidates = []  # (normalised score, group position, index)
    for gi, group in enumerate(prunable):
        s = np.asarray(scores[group.name], dtype=np.float64)
        mean = s.mean()
        normalised = s / mean if mean > 0 else np.zeros_like(s)
        candidates.extend((float(v), gi, i) for i, v in enumerate(normalised))
    candidates.sort()
    budget = math.floor(sum(g.size for g in prunable) * ratio + 1e-9)
    removed: list[set[int]] = [set() for _ in prunable]
    for _, gi, i in candidates:
        if budget <= 0:
            break
        group = prunable[gi]
        cap = min(
            group.size - _floor(group.size, min_channels), math.floor(group.size * max_group_ratio)
        )
        if len(removed[gi]) < cap:
            removed[gi].add(i)
            budget -= 1
    plans = {
        g.name: GroupPlan(g.size, tuple(i for i in range(g.size) if i not in removed[gi]))
        for gi, g in enumerate(prunable)
    }
    return Plan(plans, method="global", meta={"ratio": ratio, "max_group_ratio": max_group_ratio})


class _BaselinePlanner(Pass):
    def __init__(self, ratio: float) -> None:
        self.ratio = check_ratio(ratio)

    def requires(self, mod: Module) -> None:
        if mod.groups is None or mod.scores is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis and ChannelImportance first")


class UniformPlanner(_BaselinePlanner):
    """Planning pass: the same ratio in every group (see module doc)."""

    name = "UniformPlanner"

    def run(self, mod: Module, ctx: PassContext) -> Module:
        plan = uniform_plan(mod.groups, mod.scores, self.ratio, ctx.get("plan.min_channels"))
        return mod.replace(plan=plan)


class GlobalPlanner(_BaselinePlanner):
    """Planning pass: one ranking across groups (see module doc)."""

    name = "GlobalPlanner"

    def run(self, mod: Module, ctx: PassContext) -> Module:
        plan = global_plan(
            mod.groups,
            mod.scores,
            self.ratio,
            ctx.get("plan.min_channels"),
            ctx.get("plan.max_group_ratio"),
        )
        return mod.replace(plan=plan)
