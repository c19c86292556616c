"""Int8 planning against a float plan quantized afterwards, at the same budget, on ``cpu``.

For each network (random weights: latency only, no accuracy) two jobs run at
``--latency-budget`` (a fraction of the measured original's latency):

- **int8 plan**: ``prune(..., quantize="int8")``: the planner prices the QDQ form of the
  model on int8 staircases, and the result is quantized with onnxruntime's
  ``quantize_static`` (QDQ, per-channel weights);
- **float plan, quantized afterwards**: ``prune(...)`` on float staircases, then the same
  quantizer with the same calibration batches.

The int8 original (the unpruned model through the same quantizer), both int8 results and
the float original are then timed in one interleaved run (``--repeats`` runs, median of
medians), so load changes hit all of them alike. Calibration batches are seeded random
normals (the networks have random weights).

Usage: python tools/bench_int8_planning.py [--nets resnet18 mobilenet_v2] [--size 112]
           [--budget 0.7] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from onnx_hwprune.api import prune
from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.runtime.quantize import quantize_int8
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure, paired_ratio
from onnx_hwprune.testing import networks


def _calib(model, path: Path, samples: int = 32) -> Path:
    name = model.graph.input[0].name
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal((samples, *dims[1:])).astype(np.float32)
    np.savez(path, **{name: x})
    return path


def _jobs(model, calib: Path, budget: str, threads: int) -> dict:
    common = dict(target="cpu", threads=threads, latency_budget=budget, calib=str(calib),
                  recover="none")  # fmt: skip
    int8 = prune(model, quantize="int8", **common)
    floated = prune(model, **common)
    factory = calib_factory(str(calib), model, 16, None, None)
    return {
        "float original": model,
        "int8 original": quantize_int8(model, factory),
        "int8 plan": int8.model,
        "float plan, quantized": quantize_int8(floated.model, factory),
        "_reports": (int8.report, floated.report),
    }


def _time(models: dict, threads: int, repeats: int) -> dict[str, tuple[float, float]]:
    backend = get_target("cpu").make_backend(threads=threads)
    runnables = {k: backend.prepare(m) for k, m in models.items()}
    runs = []
    try:
        for seed in range(repeats):
            runs.append(measure({k: r.sample for k, r in runnables.items()},
                                TimingConfig(rounds=7, seed=seed)))  # fmt: skip
    finally:
        for r in runnables.values():
            r.close()
    base = "int8 original"
    return {k: (statistics.median(r[k].median_ms for r in runs), max(r[k].spread for r in runs),
                statistics.median(paired_ratio(r[base], r[k])[0] for r in runs))
            for k in models}  # fmt: skip


def _loop(report: dict) -> str:
    """The job's closed-loop rounds: measured vs budget (ms), spreads, the kept round."""
    rounds = report.get("latency", {}).get("closed_loop") or []
    return "; ".join(
        f"round {r['round']}: predicted {r['predicted_ms']:.2f}, measured {r['measured_ms']:.2f}"
        f" vs budget {r['budget_ms']:.2f} (spreads {max(r['spreads']):.0%},"
        f" paired {r.get('ratio_spread', float('nan')):.0%})"
        + (" kept" if r.get("kept") else "")
        + (f" [{r['note']}]" if r.get("note") else "")
        for r in rounds
    )


def _macs(report: dict) -> float:
    before, after = report["network"]["macs"]
    return after / before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--budget", default="0.7")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"cpu, {args.threads} thread(s), budget {args.budget}, input {args.size}x{args.size}; "
          f"ms: median of {args.repeats} interleaved runs (spread: worst IQR/median); speed: "
          "int8 original / model, paired per round, median over runs")  # fmt: skip
    print("| network | model | MACs kept | ms | spread | vs int8 original |")
    print("|---|---|---|---|---|---|")
    for net in args.nets:
        model = getattr(networks, net)(image_size=args.size)
        with tempfile.TemporaryDirectory() as tmp:
            jobs = _jobs(model, _calib(model, Path(tmp) / "calib.npz"), args.budget, args.threads)
        int8_report, float_report = jobs.pop("_reports")
        kept = {"int8 plan": _macs(int8_report), "float plan, quantized": _macs(float_report)}
        for label, report in (("int8 plan", int8_report), ("float plan", float_report)):
            print(f"<!-- {net} {label}: {_loop(report)} -->")
        times = _time(jobs, args.threads, args.repeats)
        for name, (ms, spread, speed) in times.items():
            share = f"{kept[name]:.1%}" if name in kept else "100%"
            print(f"| {net} | {name} | {share} | {ms:.3f} | {spread:.0%} | {speed:.2f}x |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
