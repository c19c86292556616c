"""Benchmark: latency-aware pruning against hardware-blind pruning, measured on the target.

For each network (ResNet-18, ResNet-50, MobileNetV2, VGG-16 from the model builders at
224x224 batch 1, random weights with seed 0, and densenet121 from the onnx package's
light zoo) and each target, at 30/50/70% FLOPs reduction:

- ``uniform`` and ``global`` (l1): the ratio that reaches the FLOPs target (bisection);
- ``uniform+snap``: the uniform plan snapped to the target's stair edges (FLOPs may be
  a little higher: snap only gives channels back);
- ``latency``: the greedy latency planner, its budget found by bisection so that its FLOPs
  match the target (at most the uniform plan's FLOPs);
- ``exact`` (with ``--exact``): the exact planner (``passes/plan/exact.py``), bisected alike.

All variants of a network, plus the original, are timed in ONE interleaved run of the
timing protocol (``runtime/timing.py``), so drift hits them alike. Reported: median ms,
speedup over the original and over ``uniform`` at the same FLOPs, predicted ms.

Usage: python tools/bench_pruning.py --out DIR [--targets cpu tvm-llvm] [--networks ...]
       [--reductions 0.3 0.5 0.7] [--rounds 7] [--exact] [--time-limit S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.frontends.onnx import export_model, load_graph, with_static_inputs
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import global_plan, uniform_plan
from onnx_hwprune.passes.plan.exact import ExactPlanner
from onnx_hwprune.passes.plan.latency import LatencyPlanner
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.runtime.profiler import build_cost_model
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure
from onnx_hwprune.testing.zoo import benchmark_network


def _removed(plan) -> dict[str, int]:
    return {n: gp.size - len(gp.keep) for n, gp in plan.groups.items()}


def _bisect(
    make_plan, macs_of, target_macs: float, lo: float, hi: float, decreasing: bool, steps: int = 14
):
    """The plan from ``make_plan(x)`` whose MACs are the largest not above ``target_macs``.

    ``decreasing``: MACs fall as x grows (a ratio) rather than rise (a budget).
    """
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = make_plan(mid)
        if macs_of(plan) <= target_macs:
            best = plan
            lo, hi = (lo, mid) if decreasing else (mid, hi)
        else:
            lo, hi = (mid, hi) if decreasing else (lo, mid)
    return best or make_plan(hi if decreasing else lo)


def _plans(graph, groups, scores, planner, reduction: float, exact=None) -> dict:
    full = planner.map.macs({})
    target = full * (1 - reduction)

    def macs(p):
        return planner.map.macs(_removed(p))

    uni = _bisect(lambda r: uniform_plan(groups, scores, r), macs, target, 0.0, 0.99, True)
    glo = _bisect(lambda r: global_plan(groups, scores, r), macs, target, 0.0, 0.99, True)
    full_ms = planner.predict({})
    lat = _bisect(lambda b: planner.plan_to_budget(full_ms * b), macs, macs(uni), 0.02, 1.0, False)
    plans = {
        "uniform": uni,
        "global": glo,
        "uniform+snap": planner.snap(uni, scores),
        "latency": lat,
    }
    if exact is not None:  # the exact planner, its budget bisected like the greedy's
        plans["exact"] = _bisect(
            lambda b: exact.plan(full_ms * b).plan, macs, macs(uni), 0.02, 1.0, False, steps=10
        )
    return plans


def bench_network(name: str, target_name: str, args, db: ProfileDB) -> list[dict]:
    graph = load_graph(benchmark_network(name, args.image_size))
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    source = with_static_inputs(export_model(graph))
    target = get_target(target_name)
    backend = target.make_backend(threads=args.threads)
    t0 = time.monotonic()
    cost = build_cost_model(source, backend, target_name, db)
    profile_s = time.monotonic() - t0
    nodes = [e.node for e in cost.layers]
    planner = LatencyPlanner(
        graph, groups, scores, cost, nodes, channel_multiple=target.channel_multiple
    )
    exact = ExactPlanner(planner, graph, time_limit=args.time_limit) if args.exact else None
    variants = {"original": (None, source)}
    for r in args.reductions:
        for method, plan in _plans(graph, groups, scores, planner, r, exact).items():
            variants[f"{method}@{r:g}"] = (
                plan,
                with_static_inputs(export_model(remove_channels(graph, groups, plan))),
            )
    timings = _time_all(backend, {k: m for k, (_, m) in variants.items()}, args.rounds)
    return _rows(name, target_name, variants, timings, planner, profile_s)


def _time_all(backend, models: dict, rounds: int) -> dict:
    runnables = {k: backend.prepare(m) for k, m in models.items()}
    try:
        return measure({k: r.sample for k, r in runnables.items()}, TimingConfig(rounds=rounds))
    finally:
        for r in runnables.values():
            r.close()


def _rows(name, target, variants, timings, planner, profile_s) -> list[dict]:
    full_macs, orig_ms = planner.map.macs({}), timings["original"].median_ms
    rows = []
    for key, (plan, _) in variants.items():
        method, _, red = key.partition("@")
        removed = _removed(plan) if plan else {}
        ms, macs = timings[key].median_ms, planner.map.macs(removed)
        uniform = timings.get(f"uniform@{red}") if red else None
        row = {"network": name, "target": target, "method": method}
        row["reduction"] = float(red) if red else 0.0
        row.update(macs=macs, macs_reduction=1 - macs / full_macs)
        row.update(
            measured_ms=ms, spread=timings[key].spread, predicted_ms=planner.predict(removed)
        )
        row["speedup_vs_original"] = orig_ms / ms
        row["speedup_vs_uniform"] = uniform.median_ms / ms if uniform else None
        row["budget_ms"] = plan.meta.get("budget_ms") if plan else None
        row["profile_s"] = profile_s
        rows.append(row)
    return rows


_COLUMNS = ("network", "target", "FLOPs cut", "method", "MACs cut", "measured ms", "predicted ms",
            "x orig", "x uniform")  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in rows:
        vs_uniform = f"{r['speedup_vs_uniform']:.2f}" if r["speedup_vs_uniform"] else "-"
        cells = [r["network"], r["target"], f"{r['reduction']:.0%}", r["method"]]
        cells += [
            f"{r['macs_reduction']:.1%}",
            f"{r['measured_ms']:.2f}",
            f"{r['predicted_ms']:.2f}",
        ]
        cells += [f"{r['speedup_vs_original']:.2f}", vs_uniform]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["network"], r["target"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (net, tgt) in zip(axes[0], keys, strict=True):
        for method in ("original", "uniform", "global", "uniform+snap", "latency", "exact"):
            mine = [
                r for r in rows if (r["network"], r["target"], r["method"]) == (net, tgt, method)
            ]
            pts = sorted((r["macs"] / 1e9, r["measured_ms"]) for r in mine)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.set(title=f"{net} on {tgt}", xlabel="GMACs", ylabel="measured ms")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--targets", nargs="+", default=["cpu"])
    parser.add_argument(
        "--networks",
        nargs="+",
        default=["resnet18", "resnet50", "mobilenet_v2", "vgg16", "densenet121"],
    )
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--profile-db", type=Path, default=None)
    parser.add_argument("--exact", action="store_true", help="also the exact planner")
    parser.add_argument("--time-limit", type=float, default=10.0, help="exact planner's limit")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db = ProfileDB(args.profile_db or args.out / "profiles.sqlite")
    rows = []
    for target in args.targets:
        for name in args.networks:
            t0 = time.monotonic()
            rows += bench_network(name, target, args, db)
            print(f"{name} on {target}: {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
            (args.out / "pruning.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    (args.out / "pruning.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "pruning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
