"""Benchmark: does the pruned model meet the latency budget it was asked for?

For each network (ResNet-18, ResNet-50, MobileNetV2, VGG-16 from the model builders and
DenseNet-121 from the onnx package's light zoo; random weights, seed 0, batch 1) and each
budget (0.5, 0.7, 0.9 of the original's measured latency), the real pruning job runs as a
user would start it (``onnx_hwprune.api.prune`` with ``--latency-budget B``: profiling
into this benchmark's own database, anchoring to the original as measured, the closed
loop). Data synthesis is off: the weights are random, and only latency is asked here.

Then the original and the three pruned models of a network are timed in ONE interleaved
run (``runtime/timing.py``), independently of the jobs' own closed-loop timings, and each
cell reports measured/original against the budget: the paired per-round ratio (median
over rounds of pruned/original timed in the same round) and the ratio of the medians.
Goal (issue 16): within 5% in all 15.

Usage: python tools/bench_budget_cells.py --out results.json [--networks ...]
       [--budgets 0.5 0.7 0.9] [--image-size 224] [--rounds 9]
Pin it to an idle core (``taskset -c 1``) on a shared machine; the jobs run at 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from onnx_hwprune.api import prune
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure, paired_ratio
from onnx_hwprune.testing.zoo import benchmark_network

TOLERANCE = 0.05


def _job(model, budget: float, db: Path) -> dict:
    began = time.perf_counter()
    result = prune(model, latency_budget=str(budget), threads=1, profile_db=db,
                   synthetic_data="off")  # fmt: skip
    latency = result.report.get("latency", {})
    rounds = latency.get("closed_loop") or []
    return {"model": result.model, "seconds": round(time.perf_counter() - began, 1),
            "macs_kept": _macs_kept(result.report), "closed_loop_rounds": len(rounds),
            "job_measured": latency.get("measured"), "reason": result.reason}  # fmt: skip


def _macs_kept(report: dict) -> float | None:
    before, after = report.get("network", {}).get("macs", [None, None])
    return round(after / before, 4) if before and after else None


def bench_network(name: str, args) -> list[dict]:
    model = benchmark_network(name, args.image_size)
    jobs = {b: _job(model, b, args.out.with_suffix(".sqlite")) for b in args.budgets}
    models = {"original": model} | {b: j["model"] for b, j in jobs.items() if j["model"]}
    backend = get_target("cpu").make_backend(threads=1)
    runnables = {k: backend.prepare(m) for k, m in models.items()}
    try:
        timings = measure({k: r.sample for k, r in runnables.items()},
                          TimingConfig(rounds=args.rounds))  # fmt: skip
    finally:
        for r in runnables.values():
            r.close()
    orig = timings["original"]
    rows = []
    for budget, job in jobs.items():
        got = timings.get(budget)
        ratio, ratio_spread = paired_ratio(got, orig) if got else (None, None)
        rows.append({"network": name, "budget": budget, "original_ms": orig.median_ms,
                     "pruned_ms": got.median_ms if got else None, "ratio": ratio,
                     "ratio_spread": ratio_spread,
                     "median_ratio": got.median_ms / orig.median_ms if got else None,
                     "miss": None if ratio is None else ratio / budget - 1,
                     "spread": [orig.spread, got.spread if got else None],
                     **{k: v for k, v in job.items() if k != "model"}})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| network | budget | measured / original (paired; spread) | vs budget | MACs kept "
             "| loop rounds | job time |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["ratio"] is None:
            lines.append(f"| {r['network']} | {r['budget']} | not pruned: {r['reason']} | | | | |")
            continue
        ok = "" if abs(r["miss"]) <= TOLERANCE else " (missed)"
        lines.append(f"| {r['network']} | {r['budget']} | {r['ratio']:.3f} "
                     f"({100 * r['ratio_spread']:.0f}%) | {100 * r['miss']:+.1f}%{ok} | "
                     f"{r['macs_kept']} | {r['closed_loop_rounds']} | "
                     f"{r['seconds']} s |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    nets = ["resnet18", "mobilenet_v2", "resnet50", "vgg16", "densenet121"]
    p.add_argument("--networks", nargs="+", default=nets)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    rows: list[dict] = []
    for name in args.networks:
        rows += bench_network(name, args)
        args.out.write_text(json.dumps({"load": os.getloadavg(), "rows": rows}, indent=1,
                                       default=str))  # fmt: skip
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
