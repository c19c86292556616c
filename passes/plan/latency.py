"""Latency-aware planning: keep the most important channels under a latency budget.

Method (why greedy): a layer's latency depends on its input *and* output counts, which
belong to different groups, so the benefit of shrinking one group depends on its
neighbours' current counts (LOCP's "two-stage benefit assessment" names the same
interaction). A knapsack (HALP) prices each group alone and cannot see it. We use a
NetAdapt-style greedy on the cost model instead: at each step every group proposes its
next lower *stair edge*, priced with the neighbours as they are now; the step that loses
the least importance per millisecond saved is taken; only the groups sharing a layer with
the changed one are re-priced. Each step is exact on the predicted model, and the loop
stops as soon as the prediction meets the budget.

Stair edges of a group: the largest channel count at each latency level of the layers
the group feeds and is fed by, i.e. the counts c where the group's cost is lower than at
every larger count (by more than ``tolerance``). Pruning to any other count pays for
channels without buying speed: that is the seeds' pathology.

``snap`` is performance-aware rounding of any plan (uniform, global, a plan from
elsewhere): each group moves up to the largest count that is not slower, giving back the
channels that cost no latency. It never lowers a count and never raises the prediction.

``channel_multiple`` (from the target) makes every other count infeasible. It exists for
effects a single-layer benchmark cannot see: onnxruntime's CPU kernels run a chain of
convs in the NCHWc layout only while in-channels are multiples of 4; one count that breaks
the chain adds layout reorders around the layer. In the micro-benchmark the reorders are
paid at every count, so the model would call the broken count cheap (we measured a pruned
digits model 1.5x *slower* that way). Snap first rounds such counts up to the multiple,
the one case where it does not follow the prediction.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan._channels import ChannelMap, LayerChannels
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan

__all__ = ["LayerCostModel", "LatencyPlanner", "LatencyPlannerPass", "Move", "SnapPass"]

log = logging.getLogger(__name__)


class _Estimate(Protocol):
    ms: float


class LayerCostModel(Protocol):
    """What planning needs from a cost model (``NetworkCostModel`` provides it)."""

    residual_ms: float

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> _Estimate: ...


@dataclass(frozen=True, order=True)
class Move:
    """Shrink ``group`` to ``count``: lose ``importance``, save ``saved_ms``."""

    price: float  # importance lost per ms saved: lower is better
    group: str
    count: int
    importance: float
    saved_ms: float


class LatencyPlanner:
    """Plans over the prunable groups of one graph with one cost model (see module doc).

    Args:
        layer_nodes: the layers the cost model knows (all Conv/Gemm it will be asked about).
        tolerance: relative latency difference below which two counts are one level.
    """

    def __init__(
        self,
        graph: gs.Graph,
        groups: ChannelGroups,
        scores: Mapping[str, np.ndarray],
        cost: LayerCostModel,
        layer_nodes: list[str],
        min_channels: int = 1,
        tolerance: float = 0.01,
        channel_multiple: int = 1,
        max_group_ratio: float = 0.75,
        level_costs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.cost, self.tolerance, self.multiple = cost, tolerance, max(1, channel_multiple)
        self.map = ChannelMap(graph, groups, layer_nodes)
        self.groups = {g.name: g for g in groups.prunable if g.name in self.map.layers_of_group}
        # A group that feeds many layers saves the most per channel: without a cap the
        # greedy would collapse it (a residual stream pruned to 1 channel).
        self.floor = {
            n: min(g.size, max(1, min_channels, math.ceil(g.size * (1 - max_group_ratio) - 1e-9)))
            for n, g in self.groups.items()
        }
        self.order = {n: np.lexsort((np.arange(g.size), scores[n])) for n, g in self.groups.items()}
        scale = _global_mean(scores, self.groups)
        self.loss = {n: _normalised_prefix(scores[n], self.order[n], scale) for n in self.groups}
        # Measured sensitivity (``loss[r]`` for r removed, in the same channel order)
        # replaces the importance sums where it was measured.
        self.loss.update({n: np.asarray(c, np.float64) for n, c in (level_costs or {}).items()
                          if n in self.groups and len(c) == self.groups[n].size + 1})  # fmt: skip
        self._edges_at_full: dict[str, list[int]] = {}  # memo of stair_edges(name)

    # -- the cost of counts -------------------------------------------------------------
    def _layers_ms(self, layers: list[LayerChannels], removed: Mapping[str, int]) -> float:
        return sum(
            self.cost.layer_latency(layer.node, *self.map.layer_counts(layer, removed)).ms
            for layer in layers
        )

    def predict(self, removed: Mapping[str, int]) -> float:
        return self._layers_ms(list(self.map.layers), removed) + self.cost.residual_ms

    def group_curve(self, name: str, removed: Mapping[str, int]) -> np.ndarray:
        """Cost of the group's layers at every feasible count (index = count; inf at the
        others, which no planner may choose: skipping them is 4x fewer estimates on cpu)."""
        group, layers = self.groups[name], self.map.layers_of_group[name]
        curve = np.full(group.size + 1, np.inf)
        for count in range(self.floor[name], group.size + 1):
            if self.feasible(name, count):
                curve[count] = self._layers_ms(layers, {**removed, name: group.size - count})
        return curve

    def feasible(self, name: str, count: int) -> bool:
        return count == self.groups[name].size or (
            count >= self.floor[name] and count % self.multiple == 0
        )

    def stair_edges(self, name: str, removed: Mapping[str, int] | None = None) -> list[int]:
        """Feasible counts, descending, each strictly cheaper than every larger count."""
        if not removed and name in self._edges_at_full:  # a pure function of the model
            return list(self._edges_at_full[name])
        curve = self.group_curve(name, removed or {})
        edges, best = [], np.inf
        for count in range(len(curve) - 1, self.floor[name] - 1, -1):
            if not self.feasible(name, count):
                continue
            if curve[count] < best - self.tolerance * min(best, curve[count]):
                edges.append(count)
                best = curve[count]
        if not removed:
            self._edges_at_full[name] = list(edges)
        return edges

    # -- planning to a budget ----------------------------------------------------------
    def _best_move(self, name: str, counts: dict[str, int], edges: list[int]) -> Move | None:
        removed = self._removed(counts)
        current = self._layers_ms(self.map.layers_of_group[name], removed)
        for count in (c for c in edges if c < counts[name]):
            saved = current - self._layers_ms(
                self.map.layers_of_group[name], {**removed, name: self.groups[name].size - count}
            )
            if saved > 0:
                lost = (
                    self.loss[name][self.groups[name].size - count]
                    - self.loss[name][self.groups[name].size - counts[name]]
                )
                return Move(lost / saved, name, count, lost, saved)
        return None

    def _removed(self, counts: Mapping[str, int]) -> dict[str, int]:
        return {n: self.groups[n].size - c for n, c in counts.items()}

    def plan_to_budget(self, budget_ms: float, warn: bool = True) -> Plan:
        counts = {n: g.size for n, g in self.groups.items()}
        edges = {n: self.stair_edges(n) for n in self.groups}
        heap = [m for n in self.groups if (m := self._best_move(n, counts, edges[n]))]
        heapq.heapify(heap)
        predicted = self.predict({})
        while heap and predicted > budget_ms * (1 + 1e-9):
            move = heapq.heappop(heap)
            if counts[move.group] <= move.count:
                continue  # stale: the group moved since this was priced
            counts[move.group] = move.count
            predicted = self.predict(self._removed(counts))
            for n in self._neighbours(move.group):
                heap = [m for m in heap if m.group != n]
                if (m := self._best_move(n, counts, edges[n])) is not None:
                    heap.append(m)
            heapq.heapify(heap)
        if warn and predicted > budget_ms * (1 + 1e-9):
            log.warning(
                "budget %.3f ms not reachable: best predicted %.3f ms", budget_ms, predicted
            )
        return self._plan(counts, "latency", {"budget_ms": budget_ms, "predicted_ms": predicted})

    def _neighbours(self, name: str) -> set[str]:
        layers = self.map.layers_of_group[name]
        spaces = {s for layer in layers for s in (layer.in_space, layer.out_space)}
        return {g for s in spaces for g, _ in self.map.width.get(s, []) if g in self.groups}

    def _plan(self, counts: Mapping[str, int], method: str, meta: dict) -> Plan:
        plans = {
            n: GroupPlan(
                self.groups[n].size,
                tuple(sorted(self.order[n][self.groups[n].size - c :].tolist())),
            )
            for n, c in counts.items()
        }
        return Plan(plans, method=method, meta=meta)

    # -- snapping any plan -------------------------------------------------------------
    def snap(self, plan: Plan, scores: Mapping[str, np.ndarray]) -> Plan:
        """Give back every channel that costs no latency (see module doc)."""
        keep = {n: set(gp.keep) for n, gp in plan.groups.items()}
        for name in (n for n in self.groups if n in keep):
            counts = {n: len(k) for n, k in keep.items() if n in self.groups}
            start = min(
                c for c in range(counts[name], self.groups[name].size + 1) if self.feasible(name, c)
            )
            curve = self.group_curve(name, self._removed(counts))
            target = max(
                c for c in range(start, len(curve))
                if self.feasible(name, c) and curve[c] <= curve[start] * (1 + 1e-9)
            )  # fmt: skip
            back = [i for i in np.argsort(-scores[name], kind="stable") if i not in keep[name]]
            keep[name].update(int(i) for i in back[: target - counts[name]])
        plans = {n: GroupPlan(plan.groups[n].size, tuple(sorted(k))) for n, k in keep.items()}
        meta = {
            **plan.meta,
            "snapped": True,
            "predicted_ms": self.predict(
                self._removed({n: len(k) for n, k in keep.items() if n in self.groups})
            ),
        }
        return Plan(
            plans,
            method=f"{plan.method}+snap" if plan.method else "snap",
            criterion=plan.criterion,
            meta=meta,
        )


def _global_mean(scores: Mapping[str, np.ndarray], groups: Mapping[str, object]) -> float:
    values = np.concatenate(
        [np.asarray(scores[n], dtype=np.float64) for n in groups] or [np.ones(1)]
    )
    mean = float(values.mean())
    return mean if mean > 0 else 1.0


def _normalised_prefix(scores: np.ndarray, order: np.ndarray, scale: float) -> np.ndarray:
    """``loss[k]``: importance lost by removing the k weakest channels of a group.

    One scale for all groups (the mean over every prunable channel), not one per group:
    a criterion sums a channel's score over the group's producers, so a residual stream
    that four convs write to weighs four times a plain channel; a per-group mean would
    erase that and let the planner gut the stream that the most layers depend on.
    """
    s = np.asarray(scores, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(s[order] / scale)])


def _planner(mod: Module, ctx: PassContext) -> LatencyPlanner:
    cost = ctx.cost_model
    if cost is None:
        raise PassError("latency planning needs PassContext(cost_model=...) for the target")
    nodes = [entry.node for entry in cost.layers]
    keys = ("min_channels", "stair_tolerance", "channel_multiple", "max_group_ratio")
    settings = [ctx.get(f"plan.{k}") for k in keys]
    costs = mod.sensitivity.costs if mod.sensitivity is not None else None
    return LatencyPlanner(mod.graph, mod.groups, mod.scores, cost, nodes, *settings, costs)


class LatencyPlannerPass(Pass):
    """Planning pass: most importance kept under ``budget`` on the context's cost model."""

    name = "LatencyPlanner"

    def __init__(self, budget: LatencyBudget) -> None:
        self.budget = budget

    def requires(self, mod: Module) -> None:
        if mod.groups is None or mod.scores is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis and ChannelImportance first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        planner = _planner(mod, ctx)
        full = planner.predict({})
        plan = planner.plan_to_budget(self.budget.resolve(full))
        meta = {**plan.meta, "budget": str(self.budget), "full_ms": full}
        return mod.replace(plan=Plan(plan.groups, "latency", plan.criterion, meta))


class SnapPass(Pass):
    """Rounding pass: move the module's plan to stair edges that are not slower."""

    name = "Snap"

    def requires(self, mod: Module) -> None:
        if mod.plan is None or mod.scores is None:
            raise PassError(f"{self.name} needs a plan and channel scores first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        return mod.replace(plan=_planner(mod, ctx).snap(mod.plan, mod.scores))
