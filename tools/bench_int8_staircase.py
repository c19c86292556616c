"""A float and an int8 staircase of the same layer, measured side by side on ``cpu``.

The layer: 3x3 conv, stride 1, pad 1, on 28x28, with bias and Relu (a ResNet stage-2
conv at 112x112 input scaled down). The float points run onnxruntime's float kernel
(NCHWc FusedConv); the int8 points are the micro-benchmarks of ``runtime/qdq_layer.py``:
the channels-last QLinearConv that onnxruntime makes of the QDQ conv, alone. All
points of both dtypes are timed in one interleaved run (shared protocol, median of
rounds), so load changes hit both alike.

Usage: python tools/bench_int8_staircase.py [--in-ch 64] [--out 33:97] [--step 4]
       [--threads 1] [--repeats 3]
Prints a markdown table (ms) and the ratio int8/float per point.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

from onnx_hwprune.cost_models.signature import LayerSignature, int8_layout
from onnx_hwprune.runtime.microbench import build_layer_model
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure


def _sig(dtype: str, hw: int) -> LayerSignature:
    sig = LayerSignature(
        op="Conv",
        kernel=(3, 3),
        strides=(1, 1),
        pads=(1, 1, 1, 1),
        dilations=(1, 1),
        input_hw=(hw, hw),
        dtype=dtype,
        bias=True,
        activation="Relu",
    )
    return replace(sig, layout=int8_layout(sig))  # as extract_layers tags it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-ch", type=int, default=64)
    parser.add_argument("--out", default="33:97", help="out-channel range lo:hi (hi excluded)")
    parser.add_argument("--step", type=int, default=4)
    parser.add_argument("--hw", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="whole interleaved runs; the table gives the median of their medians",
    )
    args = parser.parse_args(argv)
    lo, hi = (int(v) for v in args.out.split(":"))
    backend = get_target("cpu").make_backend(threads=args.threads)
    outs = list(range(lo, hi, args.step))
    runnables = {
        (dtype, c): backend.prepare(build_layer_model(_sig(dtype, args.hw), args.in_ch, c))
        for c in outs
        for dtype in ("float32", "int8")
    }
    runs = []
    try:
        for seed in range(args.repeats):  # another shuffle order each run
            config = TimingConfig(rounds=7, seed=seed)
            runs.append(measure({k: r.sample for k, r in runnables.items()}, config))
    finally:
        for r in runnables.values():
            r.close()
    print(f"in={args.in_ch}, 3x3 conv + bias + Relu at {args.hw}x{args.hw}, cpu, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved runs, ms "
          "(spread: the largest IQR/median of a run)")  # fmt: skip
    print("| out | float32 ms | spread | int8 ms | spread | int8/float |")
    print("|---|---|---|---|---|---|")
    for c in outs:
        f, fs = _summary(runs, ("float32", c))
        q, qs = _summary(runs, ("int8", c))
        print(f"| {c} | {f:.4f} | {fs:.0%} | {q:.4f} | {qs:.0%} | {q / f:.2f} |")
    return 0


def _summary(runs: list[dict], key) -> tuple[float, float]:
    """Median over runs of a candidate's median, and its worst spread in any run."""
    return (statistics.median(r[key].median_ms for r in runs),
            max(r[key].spread for r in runs))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
