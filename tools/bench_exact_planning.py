"""Benchmark: planning time and plan quality of the exact planner against the greedy, and
the weight memory the exact program saves for 10% more latency.

For each network (the model builders at 224x224, random weights, seed 0) the cost model is
built from the profile database (profiling what it lacks: run once to warm it, the
second run times planning with a warm profile). At each latency budget:

- ``greedy_s`` / ``exact_s``: wall time of ``plan_to_budget`` and of ``ExactPlanner.plan``
  (levels, tables, the program, the greedy it runs beside, and the check);
- ``greedy_loss`` / ``exact_loss``: importance lost (lower is better), solver status, gap;
- memory: the least weight bytes with the same importance loss as the exact plan and a
  latency budget 10% higher (the program's objective swapped for weight bytes), against
  the exact plan's weight bytes.

Usage: python tools/bench_exact_planning.py --networks resnet50 mobilenet_v2
       [--budgets 0.9 0.7 0.5 0.3] [--threads 1] [--profile-db DB] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.frontends.onnx import export_model, load_graph, with_static_inputs
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan._milp import LevelProgram
from onnx_hwprune.passes.plan.exact import ExactPlanner
from onnx_hwprune.passes.plan.latency import LatencyPlanner
from onnx_hwprune.passes.plan.memory import weight_poly
from onnx_hwprune.runtime.profiler import build_cost_model
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.testing.networks import NETWORKS


def _planners(name: str, args, db: ProfileDB):
    graph = load_graph(NETWORKS[name](seed=0, image_size=224))
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    target = get_target("cpu")
    source = with_static_inputs(export_model(graph))
    t0 = time.perf_counter()
    cost = build_cost_model(source, target.make_backend(threads=args.threads), "cpu", db)
    profile_s = time.perf_counter() - t0
    nodes = [e.node for e in cost.layers]
    base = LatencyPlanner(graph, groups, scores, cost, nodes,
                          channel_multiple=target.channel_multiple)  # fmt: skip
    return graph, base, ExactPlanner(base, graph, time_limit=args.time_limit), profile_s


def least_weights(exact: ExactPlanner, graph, budget_ms: float, result) -> float:
    """Least weight bytes with latency <= budget and importance loss <= the result's; the
    result's plan (feasible by construction) starts the search."""
    levels = exact.levels(with_memory=True)
    for g, count in result.counts.items():
        if count not in levels[g]:
            levels[g] = sorted([*levels[g], count], reverse=True)
    max_loss = result.loss
    program = LevelProgram({g: len(c) for g, c in levels.items()})
    latency, _ = exact.latency_costs(levels)
    program.constrain(latency, budget_ms)
    program.constrain(exact.loss_costs(levels), max_loss * (1 + 1e-9))
    weights = exact.memory_costs(levels, weight_poly(graph, exact.base.map.width, exact.sizes))
    start = {g: levels[g].index(c) for g, c in result.counts.items()}
    sol = program.solve(weights, exact.time_limit, start=start)
    if sol.choice is None:
        return float("nan")
    counts = {g: levels[g][i] for g, i in sol.choice.items()}
    if exact._predict(counts) > budget_ms * (1 + 1e-9):
        return float("nan")  # an approximated layer missed the budget: not counted
    return weights.value(sol.choice)


def bench(name: str, args, db: ProfileDB) -> list[dict]:
    graph, base, exact, profile_s = _planners(name, args, db)
    full = base.predict({})
    poly = weight_poly(graph, base.map.width, exact.sizes)
    rows = []
    for fraction in args.budgets:
        t0 = time.perf_counter()
        greedy = base.plan_to_budget(full * fraction)
        t1 = time.perf_counter()
        result = exact.plan(full * fraction)
        t2 = time.perf_counter()
        meta = result.plan.meta
        row = {"network": name, "budget": fraction, "profile_s": profile_s,
               "greedy_s": t1 - t0, "exact_s": t2 - t1, "status": meta["status"],
               "gap": meta["gap"], "levels": meta["levels"],
               "approximate_layers": meta["approximate_layers"],
               "greedy_loss": meta["greedy_loss"], "exact_loss": result.loss,
               "greedy_ms": greedy.meta["predicted_ms"], "exact_ms": result.predicted_ms,
               "exact_weights": poly.value(result.counts),
               "full_weights": poly.value(exact.sizes)}  # fmt: skip
        if args.memory:
            row["weights_at_1.1x_latency"] = least_weights(
                exact, graph, result.predicted_ms * 1.1, result
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet50"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.9, 0.7, 0.5, 0.3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--memory", action="store_true", help="also the 10%% memory trade")
    parser.add_argument("--profile-db", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    db = ProfileDB(args.profile_db)
    try:
        rows = [row for name in args.networks for row in bench(name, args, db)]
    finally:
        db.close()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
