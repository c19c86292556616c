"""Benchmark: seconds per distillation step against samples per pass and memory layout.

``--recover distill`` splits each calibration batch into passes of
``runtime.distill.MICRO_BATCH`` samples (gradients summed: the same Adam step) and runs
the converted module channels-last. This times one step (teacher in onnxruntime, student
forward and backward in torch, one thread) on a pruned model for each variant, the
variants interleaved and repeated, and reports the median per sample against the old
path (the whole batch in one pass, NCHW).

    python tools/bench_distill_speed.py rec_pruned.onnx:3,48,320 cls_pruned.onnx:3,48,192 \
        [--batch 64] [--chunks 64 16 8] [--repeats 5] [--out results.json]

Each model is ``PATH:C,H,W`` (a pruned model as the job writes it, so that its weights
are initializers; the sizes of one input sample). The student is its own teacher: the
loss is zero, the work is the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

import numpy as np
import onnx
import torch

from onnx_hwprune.runtime import distill as d


@contextmanager
def _layout(channels_last: bool):
    """The distillation path as it is (NHWC), or with the layout change undone."""
    saved = d._channels_last, d._as_tensor
    if not channels_last:
        d._channels_last = lambda torch, module: module
        d._as_tensor = lambda torch, a: torch.from_numpy(np.ascontiguousarray(a))
    try:
        yield
    finally:
        d._channels_last, d._as_tensor = saved


def _step(model: onnx.ModelProto, batch: dict, chunk: int, channels_last: bool):
    with _layout(channels_last):
        step, _ = d._make_step(torch, model, model, batch, None, threads=1, chunk=chunk)
    return step


def _time(step, batch: dict, channels_last: bool) -> float:
    with _layout(channels_last):
        start = time.perf_counter()
        step(batch)
        return time.perf_counter() - start


def bench(path: str, sample: list[int], batch_size: int, chunks: list[int], repeats: int):
    model = onnx.load(path)
    x = np.random.default_rng(0).standard_normal([batch_size, *sample]).astype(np.float32)
    batch = {model.graph.input[0].name: x}
    variants = [(c, cl) for c in chunks for cl in (False, True)]
    steps = {v: _step(model, batch, *v) for v in variants}
    for v in variants:  # warm-up: the first pass allocates and creates kernels
        _time(steps[v], batch, v[1])
    seconds: dict = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            seconds[v].append(_time(steps[v], batch, v[1]))
    base = statistics.median(seconds[(batch_size, False)])
    rows = []
    for (chunk, cl), values in seconds.items():
        median = statistics.median(values)
        rows.append({
            "model": path, "batch": batch_size, "samples_per_pass": chunk,
            "layout": "nhwc" if cl else "nchw", "ms_per_sample": 1000 * median / batch_size,
            "spread": (max(values) - min(values)) / median, "speedup": base / median,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="PATH:C,H,W")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 16, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chunks = sorted(set(args.chunks) | {args.batch}, reverse=True)
    rows = []
    for spec in args.models:
        path, sample = spec.rsplit(":", 1)
        for row in bench(path, [int(v) for v in sample.split(",")], args.batch, chunks,
                         args.repeats):  # fmt: skip
            rows.append(row)
            print(f"{row['model']}  {row['samples_per_pass']:>3} per pass  {row['layout']}  "
                  f"{row['ms_per_sample']:7.1f} ms/sample  spread {row['spread']:.0%}  "
                  f"{row['speedup']:.2f}x", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
