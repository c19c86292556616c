"""Exact latency planning: a 0-1 program over the stair levels of every group at once.

Why not only the greedy (``latency.py``): a layer's latency depends on its input group's
*and* its output group's counts. The greedy prices one step of one group with the
neighbours as they are, so it cannot see that cutting two neighbours together buys a
step that neither buys alone (LOCP prices a cut with its neighbours for the same reason;
seed 001 picks every layer's implementation at once with an ILP). Here:

- **Variables**: one binary per (group, candidate count). The candidates are the group's
  stair edges (the greedy's, computed with the neighbours whole and at their floor),
  within the floor that ``plan.max_group_ratio``/``plan.min_channels`` set and on
  ``plan.channel_multiple``; with a memory budget, also an even grid of feasible counts,
  since memory falls with every channel. At most ``plan.max_levels`` per group.
- **Latency**: a layer whose input and output each belong to one group is a table over
  (input level, output level), linearised exactly (see ``_milp.py``); a layer fed by a
  concatenation of several groups is decomposed around its output group: exact when at
  most one input group is cut, an approximation otherwise, so the true prediction is
  checked after solving and the limit tightened by the excess if it was missed.
- **Objective**: the importance lost on the greedy's normalised scale (``--calib`` scores
  arrive as ``mod.scores`` like any other criterion).
- **Constraints**: predicted latency ``<= budget``; optionally weight bytes and peak
  activation bytes (``memory.py``: exact polynomials of the counts).
- **Unreachable budget**: the program first minimises latency; the plan then loses the
  least importance *at that latency*, so it cuts no further than the fastest plan needs.
- **Safety**: the greedy runs too; when it is feasible and loses less (a time limit cut
  the search short), its plan is returned. Any solver failure falls back to it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.plan._milp import Costs, LevelProgram, Solution, SolverUnavailable
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.latency import LatencyPlanner, _planner
from onnx_hwprune.passes.plan.memory import MemoryBudget, Poly, activation_steps, weight_poly
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["ExactPlanner", "ExactPlannerPass", "ExactResult"]

log = logging.getLogger(__name__)

_REL = 1e-9  # relative slack when comparing a prediction with its limit


@dataclass(frozen=True)
class ExactResult:
    """A plan with how it was found (also recorded in ``plan.meta``)."""

    plan: Plan
    counts: dict[str, int]
    loss: float
    predicted_ms: float
    status: str  # optimal | time_limit | greedy | unreachable...
    gap: float
    message: str = ""


class ExactPlanner:
    """Plans over one :class:`LatencyPlanner`'s groups, cost model and importance."""

    def __init__(
        self,
        base: LatencyPlanner,
        graph,
        time_limit: float = 5.0,
        max_levels: int = 32,
        gap: float = 1e-3,
    ) -> None:
        self.base, self.graph = base, graph
        self.time_limit, self.max_levels, self.gap = time_limit, max(2, max_levels), gap
        self.sizes = {n: g.size for n, g in base.groups.items()}
        self._deadline, self._solver_seconds = math.inf, 0.0
        self._start: dict[str, int] | None = None  # the greedy's choice, a MIP start
        self._cache: dict[bool, dict[str, list[int]]] = {}  # levels, with/without memory
        self._memo: dict[tuple, Costs] = {}  # a layer's latency terms by its groups' levels

    # -- candidate counts --------------------------------------------------------------
    def levels(self, with_memory: bool = False) -> dict[str, list[int]]:
        """Candidate counts per group, descending, the full count first."""
        at_floor = {n: self.sizes[n] - self.base.floor[n] for n in self.sizes}
        out = {}
        for name, size in self.sizes.items():
            counts = set(self.base.stair_edges(name)) | {size}
            others = {n: r for n, r in at_floor.items() if n != name}
            counts |= set(self.base.stair_edges(name, others))
            if with_memory:
                counts |= set(self._grid(name))
            out[name] = _thin(sorted(counts, reverse=True), self.max_levels)
        return out

    def _grid(self, name: str) -> list[int]:
        feasible = [c for c in range(self.base.floor[name], self.sizes[name] + 1)
                    if self.base.feasible(name, c)]  # fmt: skip
        step = max(1, len(feasible) // self.max_levels)
        return feasible[::-step]

    def _levels(self, with_memory: bool, extra: Mapping[str, int]) -> dict[str, list[int]]:
        """Candidate counts (computed once per planner: they do not depend on the budget),
        plus the ``extra`` counts (the greedy's plan, so that it can start the search)."""
        if with_memory not in self._cache:
            self._cache[with_memory] = self.levels(with_memory)
        levels = dict(self._cache[with_memory])
        for g, count in extra.items():
            if count not in levels[g]:
                levels[g] = sorted([*levels[g], count], reverse=True)
        return levels

    # -- costs over levels -------------------------------------------------------------
    def latency_costs(self, levels: Mapping[str, list[int]]) -> tuple[Costs, int]:
        """Predicted latency as a :class:`Costs`; the count of approximated layers."""
        costs, approx = Costs(const=self.base.cost.residual_ms), 0
        for layer in self.base.map.layers:
            ins = [g for g, _ in self.base.map.width.get(layer.in_space, []) if g in levels]
            outs = [g for g, _ in self.base.map.width.get(layer.out_space, []) if g in levels]
            involved = list(dict.fromkeys(outs + ins))
            approx += len(involved) > 2
            self._layer_terms(costs, layer, involved, levels)
        return costs, approx

    def _layer_terms(self, costs: Costs, layer, involved: list[str], levels) -> None:
        """Adds the layer's tables; memoised by the layer and its groups' levels, so a
        sweep of budgets recomputes only the layers whose levels changed."""
        key = (layer.node, *((g, tuple(levels[g])) for g in involved))
        if key not in self._memo:
            scratch = Costs()
            self._compute_terms(scratch, layer, involved, levels)
            self._memo[key] = scratch
        terms = self._memo[key]
        costs.const += terms.const
        for g, table in terms.unary.items():
            costs.add_unary(g, table)
        for (g, h), table in terms.pair.items():
            costs.add_pair(g, h, table)

    def _compute_terms(self, costs: Costs, layer, involved: list[str], levels) -> None:
        def ms(removed: Mapping[str, int]) -> float:
            counts = self.base.map.layer_counts(layer, removed)
            return self.base.cost.layer_latency(layer.node, *counts).ms

        def cut(g: str, count: int) -> dict[str, int]:
            return {g: self.sizes[g] - count}

        if not involved:
            costs.const += ms({})
            return
        anchor, rest = involved[0], involved[1:]
        base = np.array([ms(cut(anchor, c)) for c in levels[anchor]])
        costs.add_unary(anchor, base)
        for g in rest:  # exact for one or two groups; first order in the others
            table = [
                [ms({**cut(anchor, a), **cut(g, c)}) for c in levels[g]] for a in levels[anchor]
            ]
            costs.add_pair(anchor, g, np.asarray(table) - base[:, None])

    def memory_costs(self, levels, poly: Poly) -> Costs:
        costs = Costs(const=poly.const)
        for g, a in poly.lin.items():
            costs.add_unary(g, a * np.asarray(levels[g], dtype=np.float64))
        for (g, h), b in poly.quad.items():
            if g == h:
                costs.add_unary(g, b * np.asarray(levels[g], dtype=np.float64) ** 2)
            else:
                costs.add_pair(g, h, b * np.outer(levels[g], levels[h]))
        return costs

    def loss_costs(self, levels: Mapping[str, list[int]]) -> Costs:
        costs = Costs()
        for g, counts in levels.items():
            costs.add_unary(g, [self.base.loss[g][self.sizes[g] - c] for c in counts])
        return costs

    # -- planning ----------------------------------------------------------------------
    def plan(self, budget_ms: float, memory: MemoryBudget | None = None) -> ExactResult:
        """Least importance lost with predicted latency ``<= budget_ms`` (see module doc)."""
        greedy = self._greedy(budget_ms, memory)
        feasible = greedy.status == "greedy"
        levels = self._levels(memory is not None, greedy.counts if feasible else {})
        latency, approx = self.latency_costs(levels)
        self._start = (
            {g: levels[g].index(c) for g, c in greedy.counts.items()} if feasible else None
        )
        program = LevelProgram({g: len(c) for g, c in levels.items()})
        self._memory_rows(program, levels, memory)
        start = time.perf_counter()
        self._deadline, self._solver_seconds = start + self.time_limit, 0.0
        try:
            found = self._solve(program, levels, latency, budget_ms)
        except SolverUnavailable as exc:
            log.warning("exact planner unavailable (%s): using the greedy plan", exc)
            return self._from_greedy(greedy, "greedy (no solver)")
        best = self._better(found, greedy, budget_ms)
        meta = {"planner": "exact", "levels": sum(map(len, levels.values())),
                "approximate_layers": approx, "greedy_loss": greedy.loss,
                "solver_seconds": self._solver_seconds,
                "planning_seconds": time.perf_counter() - start}  # fmt: skip
        return _with_meta(best, meta)

    def _memory_rows(self, program: LevelProgram, levels, memory: MemoryBudget | None) -> None:
        if memory is None:
            return
        full = {g: self.sizes[g] for g in levels}
        if memory.weights is not None:
            poly = weight_poly(self.graph, self.base.map.width, self.sizes)
            program.constrain(
                self.memory_costs(levels, poly), memory.weights.resolve(poly.value(full))
            )
        if memory.activations is not None:
            steps = activation_steps(self.graph, self.base.map.width, self.sizes)
            limit = memory.activations.resolve(max((s.value(full) for s in steps), default=0.0))
            for step in steps:
                program.constrain(self.memory_costs(levels, step), limit)

    def _solve(
        self, program: LevelProgram, levels, latency: Costs, budget_ms: float
    ) -> ExactResult:
        loss, limit = self.loss_costs(levels), budget_ms
        for _ in range(4):  # tightening rounds for approximated layers
            sol = self._run(program, loss, latency, limit)
            if sol.choice is None and sol.status == "infeasible":
                return self._unreachable(program, levels, latency, loss, budget_ms)
            if sol.choice is None:
                return _empty(sol.status)
            counts = {g: levels[g][i] for g, i in sol.choice.items()}
            predicted = self._predict(counts)
            if predicted <= budget_ms * (1 + _REL) + 1e-12:
                return self._result(counts, sol.status, sol.gap, predicted)
            limit -= predicted - budget_ms  # the approximation was optimistic by this much
        return _empty("approximation did not converge")

    def _run(self, program, objective: Costs, latency: Costs, limit: float) -> Solution:
        trial = LevelProgram(program.sizes)
        trial.constraints = [*program.constraints, (latency, limit * (1 + _REL))]
        return self._timed(trial, objective, start=self._start)

    def _timed(
        self, program: LevelProgram, objective: Costs, share: float = 1.0, start=None
    ) -> Solution:
        sol = program.solve(objective, self._left() * share, self.gap, start)
        self._solver_seconds += sol.seconds
        return sol

    def _left(self) -> float:
        """Seconds left of the time limit shared by every solve of one ``plan`` call."""
        return max(0.01, self._deadline - time.perf_counter())

    def _unreachable(
        self, program, levels, latency: Costs, loss: Costs, budget_ms: float
    ) -> ExactResult:
        fastest = self._timed(program, latency, 0.5)
        if fastest.choice is None:
            return _empty("infeasible: the memory budget cannot be met")
        counts = {g: levels[g][i] for g, i in fastest.choice.items()}
        best_ms = self._predict(counts)
        sol = self._run(program, loss, latency, latency.value(fastest.choice))
        if sol.choice is not None:
            counts = {g: levels[g][i] for g, i in sol.choice.items()}
            best_ms = self._predict(counts)
        message = (f"latency budget {budget_ms:.3f} ms is not reachable: the fastest plan "
                   f"predicts {best_ms:.3f} ms; returning it")  # fmt: skip
        log.warning(message)
        gap = max(fastest.gap, sol.gap if sol.choice is not None else 0.0)
        return self._result(counts, "unreachable", gap, best_ms, message)

    def _predict(self, counts: Mapping[str, int]) -> float:
        return self.base.predict({g: self.sizes[g] - c for g, c in counts.items()})

    def _loss(self, counts: Mapping[str, int]) -> float:
        return float(sum(self.base.loss[g][self.sizes[g] - c] for g, c in counts.items()))

    def _result(
        self, counts, status: str, gap: float, predicted: float, message: str = ""
    ) -> ExactResult:
        loss = self._loss(counts)
        # no solver gap (the greedy's plan kept) is null: NaN is not JSON, and a plan saved
        # with it (--save-plan) could not be read back (--plan)
        finite_gap = gap if math.isfinite(gap) else None
        meta = {"predicted_ms": predicted, "status": status, "gap": finite_gap,
                "importance_loss": loss}  # fmt: skip
        if message:
            meta["message"] = message
        plan = self.base._plan(counts, "latency", meta)
        return ExactResult(plan, dict(counts), loss, predicted, status, gap, message)

    # -- the greedy beside it ----------------------------------------------------------
    def _greedy(self, budget_ms: float, memory: MemoryBudget | None) -> ExactResult:
        plan = self.base.plan_to_budget(budget_ms, warn=False)  # the exact planner warns
        counts = {g: len(gp.keep) for g, gp in plan.groups.items()}
        ok = plan.meta["predicted_ms"] <= budget_ms * (1 + _REL) and self._memory_ok(counts, memory)
        return self._result(
            counts, "greedy" if ok else "greedy-infeasible", 0.0, plan.meta["predicted_ms"]
        )

    def _memory_ok(self, counts: Mapping[str, int], memory: MemoryBudget | None) -> bool:
        if memory is None:
            return True
        full = dict(self.sizes)
        if memory.weights is not None:
            poly = weight_poly(self.graph, self.base.map.width, self.sizes)
            if poly.value(counts) > memory.weights.resolve(poly.value(full)) * (1 + _REL):
                return False
        if memory.activations is not None:
            steps = activation_steps(self.graph, self.base.map.width, self.sizes)
            limit = memory.activations.resolve(max((s.value(full) for s in steps), default=0.0))
            return all(s.value(counts) <= limit * (1 + _REL) for s in steps)
        return True

    def _better(self, found: ExactResult, greedy: ExactResult, budget_ms: float) -> ExactResult:
        """The solver's plan unless the greedy's is feasible and loses less (or it has none)."""
        solved = bool(found.counts) and found.status in ("optimal", "time_limit")
        if greedy.status == "greedy" and (not solved or greedy.loss < found.loss - 1e-12):
            log.info("exact planner (%s): the greedy plan is kept", found.status)
            return self._from_greedy(greedy, f"greedy (solver: {found.status})")
        if found.counts:
            return found
        log.warning("exact planner: %s; using the greedy plan", found.status)
        return self._from_greedy(greedy, greedy.status)

    def _from_greedy(self, greedy: ExactResult, status: str) -> ExactResult:
        return self._result(greedy.counts, status, math.nan, greedy.predicted_ms, greedy.message)


def _thin(counts: list[int], limit: int) -> list[int]:
    """At most ``limit`` counts: always the first (full) and last (deepest), evenly between."""
    if len(counts) <= limit:
        return counts
    picks = np.linspace(0, len(counts) - 1, limit).round().astype(int)
    return [counts[i] for i in sorted(set(picks.tolist()))]


def _empty(status: str) -> ExactResult:
    return ExactResult(Plan({}), {}, math.inf, math.inf, status, math.inf)


def _with_meta(result: ExactResult, extra: dict) -> ExactResult:
    plan = result.plan
    meta = {**plan.meta, **extra}
    return replace(result, plan=Plan(plan.groups, plan.method, plan.criterion, meta))


class ExactPlannerPass(Pass):
    """Planning pass: least importance lost under ``budget`` (and ``memory``), exactly."""

    name = "ExactPlanner"

    def __init__(self, budget: LatencyBudget, memory: MemoryBudget | None = None) -> None:
        self.budget, self.memory = budget, memory

    def requires(self, mod: Module) -> None:
        if mod.groups is None or mod.scores is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis and ChannelImportance first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        base = _planner(mod, ctx)
        settings = (ctx.get(f"plan.{k}") for k in ("time_limit", "max_levels", "mip_gap"))
        planner = ExactPlanner(base, mod.graph, *settings)
        full = base.predict({})
        budget_ms = self.budget.resolve(full)
        result = planner.plan(budget_ms, self.memory)
        # the same keys as the greedy's plans: reports and the accuracy search read them
        meta = {**result.plan.meta, "budget": str(self.budget), "budget_ms": budget_ms,
                "full_ms": full}  # fmt: skip
        if self.memory is not None:
            meta["memory_budget"] = str(self.memory)
        return mod.replace(plan=Plan(result.plan.groups, "latency", result.plan.criterion, meta))
