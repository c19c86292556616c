"""The latency / importance-loss / memory front of a model on a target.

For a sweep of latency budgets (and, optionally, weight-memory budgets), the exact
planner's optimum: predicted latency, importance lost (the planner's normalised proxy of
accuracy), weight bytes, peak activation bytes and MACs of each plan. The hardware-blind
baselines (``uniform``, ``global``, and ``uniform+snap``) are placed on the same axes at
a few ratios. Every point carries its plan, so a user picks one and re-applies it with
``onnx-hwprune IN OUT --plan plan_XX.json``. With evaluation data, each point's measured
top-1 (or agreement with the original) is added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from onnx_hwprune import _data, _latency
from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.plan.baselines import global_plan, uniform_plan
from onnx_hwprune.passes.plan.exact import ExactPlanner
from onnx_hwprune.passes.plan.latency import _planner
from onnx_hwprune.passes.plan.memory import MemoryBudget, activation_steps, weight_poly
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_RATIOS", "FrontPoint", "compute_front"]

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class FrontPoint:
    """One plan on the front: ``kind`` is ``exact``, ``uniform``, ``global`` or ``snap``."""

    kind: str
    setting: str  # the budget or ratio that produced it
    plan: Plan
    metrics: dict[str, Any]


class _Measures:
    """Latency, loss and memory of group counts on one planner (shared by all points)."""

    def __init__(self, exact: ExactPlanner, graph) -> None:
        self.exact, self.base = exact, exact.base
        sizes = exact.sizes
        self.weights = weight_poly(graph, self.base.map.width, sizes)
        self.steps = activation_steps(graph, self.base.map.width, sizes)

    def of(self, plan: Plan) -> dict[str, Any]:
        counts = {g: len(plan.groups[g].keep) if g in plan.groups else n
                  for g, n in self.exact.sizes.items()}  # fmt: skip
        removed = {g: self.exact.sizes[g] - c for g, c in counts.items()}
        return {
            "predicted_ms": self.base.predict(removed),
            "importance_loss": self.exact._loss(counts),
            "weight_bytes": round(self.weights.value(counts)),
            "peak_activation_bytes": round(max((s.value(counts) for s in self.steps), default=0)),
            "macs": self.base.map.macs(removed),
        }


def compute_front(
    model: ModelSource,
    opts: PruneOptions,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    memory: Sequence[MemoryBudget | None] = (None,),
    ratios: Sequence[float] = DEFAULT_RATIOS,
    ctx: PassContext | None = None,
    progress: Callable | None = None,
) -> dict[str, Any]:
    """The front as JSON-able data, with each point's :class:`Plan` under ``"plans"``."""
    ctx = ctx or PassContext.current()
    mod = ChannelGroupAnalysis()(Module(load_graph(model, opts.input_shapes)), ctx)
    source = export_model(mod.graph)
    factory = _data.calibration(opts, source)
    cost, _ = _latency.cost_model(opts, source, progress)
    config = {"plan.channel_multiple": _multiple(opts.target), **ctx.config}
    ctx = replace(ctx, cost_model=cost, config=config)
    mod = _scored(opts, mod, source, factory, ctx)
    base = _planner(mod, ctx)
    settings = (ctx.get(f"plan.{k}") for k in ("time_limit", "max_levels", "mip_gap"))
    exact = ExactPlanner(base, mod.graph, *settings)
    measures = _Measures(exact, mod.graph)
    points = _exact_points(exact, budgets, memory) + _baselines(mod, base, ratios, ctx)
    rows = []
    for i, point in enumerate(points):
        row = {"id": i, "kind": point.kind, "setting": point.setting, **measures.of(point.plan)}
        rows.append({**row, **point.metrics})
    _mark_pareto(rows)
    if opts.eval_data is not None:
        _evaluate(rows, points, mod, source, opts)
    full = measures.of(Plan({}))
    return {"target": opts.target, "source": _latency.source_of(cost, opts.target),
            "criterion": opts.criterion, "original": full, "points": rows,
            "plans": [p.plan for p in points]}  # fmt: skip


def _multiple(target: str) -> int:
    from onnx_hwprune.runtime.targets import TARGETS

    return TARGETS[target].channel_multiple


def _scored(opts: PruneOptions, mod: Module, source, factory, ctx: PassContext) -> Module:
    if opts.criterion in DATA_CRITERIA:
        return mod.replace(scores=_data.data_scores(opts, source, mod.groups, factory))
    return ChannelImportance(opts.criterion)(mod, ctx)


def _exact_points(exact: ExactPlanner, budgets, memory) -> list[FrontPoint]:
    full = exact.base.predict({})
    points = []
    for mem in memory:
        for fraction in budgets:
            result = exact.plan(full * fraction, mem)
            setting = f"latency<={fraction:g}" + (f", memory {mem}" if mem else "")
            meta = result.plan.meta
            extra = {"status": meta.get("status"), "gap": meta.get("gap"),
                     "solver_seconds": meta.get("solver_seconds")}  # fmt: skip
            points.append(FrontPoint("exact", setting, _named(result.plan, setting), extra))
    return points


def _baselines(mod: Module, base, ratios, ctx: PassContext) -> list[FrontPoint]:
    points = []
    floor, cap = ctx.get("plan.min_channels"), ctx.get("plan.max_group_ratio")
    for ratio in ratios:
        uniform = uniform_plan(mod.groups, mod.scores, ratio, floor)
        glob = global_plan(mod.groups, mod.scores, ratio, floor, cap)
        snapped = base.snap(uniform, mod.scores)
        for kind, plan in (("uniform", uniform), ("global", glob), ("snap", snapped)):
            points.append(FrontPoint(kind, f"ratio={ratio:g}", plan, {}))
    return points


def _named(plan: Plan, setting: str) -> Plan:
    return Plan(plan.groups, "latency", plan.criterion, {**plan.meta, "front": setting})


def _mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: no other point is at least as good on latency, loss and weights and
    better on one."""
    keys = ("predicted_ms", "importance_loss", "weight_bytes")
    for row in rows:
        row["pareto"] = not any(
            all(o[k] <= row[k] + 1e-12 for k in keys) and any(o[k] < row[k] - 1e-12 for k in keys)
            for o in rows
        )


def _evaluate(rows, points, mod: Module, source, opts: PruneOptions) -> None:
    for row, point in zip(rows, points, strict=True):
        pruned = export_model(remove_channels(mod.graph, mod.groups, point.plan))
        section = _data.accuracy_section(opts, source, pruned)
        row["top1"] = section.get("top1", [None, None])[1]
        row["agreement"] = section.get("agreement")
