"""Accuracy vs FLOPs reduction on the digits example, per criterion, with and without recovery.

For each MACs reduction (default 30/50/70%), the uniform ratio that reaches it is found by
bisection on ``uniform_plan`` + ``model_stats`` (the ratio -> MACs map does not depend on
the criterion); then, for each criterion, the plan is applied and the pruned model's test
top-1 accuracy is measured without recovery and with each recovery method, the data
criteria and the recovery using the first ``--calib-limit`` calibration images.

Usage::

    python tools/bench_accuracy.py [--out DIR] [--reductions 0.3,0.5,0.7]

Prints a markdown table and writes ``accuracy.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA
from onnx_hwprune.passes.analysis.importance import CRITERIA, channel_importance
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.recovery import data_importance, recover
from onnx_hwprune.runtime.evaluate import evaluate

__all__ = ["main", "ratio_for_reduction"]

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def macs_reduction(graph, groups, ratio: float) -> float:
    scores = {g.name: np.zeros(g.size) for g in groups.prunable}
    pruned = remove_channels(graph, groups, uniform_plan(groups, scores, ratio))
    return 1.0 - model_stats(pruned).macs / model_stats(graph).macs


def ratio_for_reduction(graph, groups, target: float, steps: int = 30) -> float:
    """The smallest uniform ratio (to ``2**-steps``) whose MACs reduction reaches ``target``."""
    lo, hi = 0.0, 0.99
    if macs_reduction(graph, groups, hi) < target:
        raise ValueError(f"a uniform plan cannot remove {target:.0%} of the MACs")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_reduction(graph, groups, mid) >= target else (mid, hi)
    return hi


def _scores(original, graph, groups, criterion: str, factory):
    if criterion in CRITERIA:
        return channel_importance(graph, groups, criterion)
    return data_importance(original, groups, criterion, factory)


def run_bench(args: argparse.Namespace) -> dict:
    original = normalize_model(args.model)
    graph = load_graph(original)
    groups = analyze_channel_groups(graph)
    factory = calib_factory(args.calib, original, batch_size=64, limit=args.calib_limit)
    baseline = evaluate(original, args.test).top1
    rows = []
    for target in args.reductions:
        ratio = ratio_for_reduction(graph, groups, target)
        for criterion in args.criteria:
            plan = uniform_plan(groups, _scores(original, graph, groups, criterion, factory), ratio)
            pruned_graph = remove_channels(graph, groups, plan)
            pruned = export_model(pruned_graph)
            row = {
                "target_reduction": target,
                "ratio": ratio,
                "macs_reduction": 1 - model_stats(pruned_graph).macs / model_stats(graph).macs,
                "criterion": criterion,
                "none": evaluate(pruned, args.test).top1,
            }
            for method in args.recover:
                start = time.perf_counter()
                repaired = recover(original, pruned, groups, plan, factory, method, args.ridge)
                row[method] = evaluate(repaired, args.test).top1
                row[f"{method}_seconds"] = time.perf_counter() - start
            rows.append(row)
            logger.info("%s", row)
    return {"baseline_top1": baseline, "calib_samples": args.calib_limit, "rows": rows}


def markdown(result: dict, methods: list[str]) -> str:
    head = "| FLOPs reduction | criterion | no recovery | " + " | ".join(methods) + " |"
    lines = [f"Unpruned: {result['baseline_top1']:.2%} test top-1.", "", head]
    lines.append("|" + "---|" * (3 + len(methods)))
    for r in result["rows"]:
        cells = [f"{r['macs_reduction']:.1%}", r["criterion"], f"{r['none']:.2%}"]
        cells += [f"{r[m]:.2%}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(EXAMPLES / "digits_resnet.onnx"))
    parser.add_argument("--test", default=str(EXAMPLES / "digits_test.npz"))
    parser.add_argument("--calib", default=str(EXAMPLES / "digits_calib.npz"))
    parser.add_argument("--calib-limit", type=int, default=256)
    parser.add_argument("--reductions", default="0.3,0.5,0.7")
    parser.add_argument("--criteria", default=",".join([*CRITERIA, *DATA_CRITERIA]))
    parser.add_argument("--recover", default="lsq", help="comma-separated methods, e.g. lsq,bias")
    parser.add_argument("--ridge", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="write accuracy.json here")
    args = parser.parse_args(argv)
    args.reductions = [float(v) for v in args.reductions.split(",")]
    args.criteria = args.criteria.split(",")
    args.recover = [m for m in args.recover.split(",") if m]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = run_bench(args)
    print(markdown(result, args.recover))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
