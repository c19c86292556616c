"""Benchmark: is a 1x1 conv faster as Conv or as MatMul on this target (seed 001's
primitive selection)?

For a few layer shapes (ResNet/MobileNet 1x1 convs at batch 1), three implementations
of the same product are timed in ONE interleaved run of the timing protocol:

- ``conv``: ``Conv`` 1x1 on NCHW (what exporters write; onnxruntime runs it in NCHWc);
- ``matmul_nchw``: ``MatMul(W[Cout, Cin], X[1, Cin, H*W])``: the same layout, no reorder;
- ``matmul_nhwc``: ``MatMul(X[1, H*W, Cin], W[Cin, Cout])``: channels-last, as a chain of
  such layers would run with no transposes between them.

Reported: median ms of each and the ratio to ``conv``. If no variant is faster by more
than the noise, the planner has nothing to choose and the variants stay out of it.

Usage: python tools/bench_conv1x1_variants.py [--threads 1] [--rounds 7] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure

SHAPES = ((64, 256, 56), (256, 64, 56), (128, 512, 28), (512, 128, 28), (256, 1024, 14),
          (1024, 256, 14), (960, 160, 7), (2048, 512, 7))  # fmt: skip


def _model(kind: str, cin: int, cout: int, hw: int):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    if kind == "conv":
        x_shape, y_shape = [1, cin, hw, hw], [1, cout, hw, hw]
        weight = numpy_helper.from_array(w.reshape(cout, cin, 1, 1), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])
    elif kind == "matmul_nchw":
        x_shape, y_shape = [1, cin, hw * hw], [1, cout, hw * hw]
        weight = numpy_helper.from_array(w, "w")
        node = helper.make_node("MatMul", ["w", "x"], ["y"])
    else:
        x_shape, y_shape = [1, hw * hw, cin], [1, hw * hw, cout]
        weight = numpy_helper.from_array(np.ascontiguousarray(w.T), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    backend = get_target("cpu").make_backend(threads=args.threads)
    models = {
        f"{kind}/{cin}x{cout}@{hw}": _model(kind, cin, cout, hw)
        for cin, cout, hw in SHAPES
        for kind in ("conv", "matmul_nchw", "matmul_nhwc")
    }
    runnables = {k: backend.prepare(m) for k, m in models.items()}
    try:
        timings = measure(
            {k: r.sample for k, r in runnables.items()}, TimingConfig(rounds=args.rounds)
        )
    finally:
        for r in runnables.values():
            r.close()
    rows = []
    print("| Cin x Cout @ HxW | conv ms | MatMul NCHW | MatMul NHWC |\n|---|---|---|---|")
    for cin, cout, hw in SHAPES:
        key = f"{cin}x{cout}@{hw}"
        ms = {k: timings[f"{k}/{key}"].median_ms for k in ("conv", "matmul_nchw", "matmul_nhwc")}
        spread = max(timings[f"{k}/{key}"].spread for k in ms)
        rows.append({"shape": key, **ms, "max_spread": spread})
        print(f"| {cin}x{cout} @ {hw}x{hw} | {ms['conv']:.3f} | "
              f"{ms['matmul_nchw']:.3f} ({ms['conv'] / ms['matmul_nchw']:.2f}x) | "
              f"{ms['matmul_nhwc']:.3f} ({ms['conv'] / ms['matmul_nhwc']:.2f}x) |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
