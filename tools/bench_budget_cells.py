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

``--channel-multiples 4 1`` runs every cell once per value of ``plan.channel_multiple``
(the ``cpu`` target's alignment rule; 1 turns it off, leaving alignment to the measured
in-context penalties) on one profile database, and times all of a network's models in
the same interleaved run: does the measured penalty alone plan as well as the rule?

``--networks`` also takes ``.onnx`` files (``examples/digits_resnet.onnx``), with a
static input shape where the file's is dynamic (``PATH/cls.onnx:x=1x3x48x192``).

Usage: python tools/bench_budget_cells.py --out results.json [--networks ...]
       [--budgets 0.5 0.7 0.9] [--image-size 224] [--rounds 9] [--channel-multiples 4 1]
Pin it to an idle core (``taskset -c 1``) on a shared machine; the jobs run at 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import onnx

from onnx_hwprune import PassContext, prune
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure, paired_ratio
from onnx_hwprune.testing.zoo import BENCHMARK_NETWORKS, benchmark_network

sys.path.insert(0, str(Path(__file__).parent))
from bench_latency_model import _load as load_network  # noqa: E402

TOLERANCE = 0.05


def _job(model, budget: float, db: Path, multiple: int | None) -> dict:
    began = time.perf_counter()
    config = {} if multiple is None else {"plan.channel_multiple": multiple}
    result = prune(model, latency_budget=str(budget), threads=1, profile_db=db,
                   synthetic_data="off", ctx=PassContext(config=config))  # fmt: skip
    latency = result.report.get("latency", {})
    rounds = latency.get("closed_loop") or []
    return {"model": result.model, "seconds": round(time.perf_counter() - began, 1),
            "macs_kept": _macs_kept(result.report), "closed_loop_rounds": len(rounds),
            "job_measured": latency.get("measured"), "reason": result.reason,
            "channel_multiple": multiple, "unaligned_groups": _unaligned(result.plan)}  # fmt: skip


def _unaligned(plan) -> list[int] | None:
    """Kept counts of the cut groups that are not multiples of 4 (what the rule forbids)."""
    if plan is None:
        return None
    return sorted(len(g.keep) for g in plan.groups.values() if g.removed and len(g.keep) % 4)


def _macs_kept(report: dict) -> float | None:
    before, after = report.get("network", {}).get("macs", [None, None])
    return round(after / before, 4) if before and after else None


def _load(name: str, size: int) -> onnx.ModelProto:
    """A network built in code, as the builders make it, or a model file read as the
    latency benchmark reads it (``PATH:input=1x3x48x192`` fixes a static shape, as
    PP-OCRv5's models need)."""
    if name in BENCHMARK_NETWORKS:
        return benchmark_network(name, size)
    return load_network(name, size)


def bench_network(name: str, args) -> list[dict]:
    model = _load(name, args.image_size)
    db = args.out.with_suffix(".sqlite")
    jobs = {(b, m): _job(model, b, db, m) for b in args.budgets for m in args.channel_multiples}
    models = {"original": model} | {k: j["model"] for k, j in jobs.items() if j["model"]}
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
    for (budget, _), job in jobs.items():
        got = timings.get((budget, job["channel_multiple"]))
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
    lines = ["| network | budget | channel_multiple | measured / original (paired; spread) "
             "| vs budget | MACs kept | groups kept at counts not multiples of 4 | loop rounds "
             "| job time |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        head = f"| {r['network']} | {r['budget']} | {r['channel_multiple'] or 'target'} |"
        if r["ratio"] is None:
            lines.append(f"{head} not pruned: {r['reason']} | | | | | |")
            continue
        ok = "" if abs(r["miss"]) <= TOLERANCE else " (missed)"
        lines.append(f"{head} {r['ratio']:.3f} ({100 * r['ratio_spread']:.0f}%) | "
                     f"{100 * r['miss']:+.1f}%{ok} | {r['macs_kept']} | "
                     f"{r['unaligned_groups']} | {r['closed_loop_rounds']} | "
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
    p.add_argument(
        "--channel-multiples",
        nargs="+",
        type=int,
        default=[None],
        help="plan.channel_multiple values to compare (default: the target's)",
    )
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
