"""Does int8 pay on this model? Float against its int8 form, timed on ``cpu``.

For each model of the real-model corpus (``tests/corpus.py``), the float model at its
planning shape and its int8 form as ``--quantize int8`` writes it (BatchNorms folded,
onnxruntime's ``quantize_static``: QDQ, per-channel int8 weights, uint8 activations;
calibrated here on N(0, 1) inputs, which set values, not the kernels that run) are timed
in one interleaved run, ``--repeats`` times (median of medians; speed = float / int8,
paired per round). The ops that onnxruntime still runs on a dequantized tensor after its
QDQ fusions (float work between a dequantize and a quantize: no int8 kernel in its CPU
provider) are counted by type from its optimised graph. Where int8 is slower than float,
``--quantize int8`` says so after the job; this tells before it.

Usage: python tools/bench_int8_vs_float.py [--threads 1] [--repeats 3] NAME ...
       (names: ``tests/corpus.py``, e.g. ppocr_cls ppocr_det ppocr_rec zoo_squeezenet)
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import CORPUS, corpus_model  # noqa: E402

from onnx_hwprune.frontends.onnx import normalize_model, parse_input_shapes  # noqa: E402
from onnx_hwprune.runtime.quantize import qdq_for_planning  # noqa: E402
from onnx_hwprune.runtime.targets import get_target  # noqa: E402
from onnx_hwprune.runtime.timing import TimingConfig, measure, paired_ratio  # noqa: E402


def float_glue(qdq) -> collections.Counter:
    """Op types that onnxruntime, after its QDQ fusions (``ORT_ENABLE_ALL``, as deployed),
    still runs on a dequantized tensor: float work between a dequantize and a quantize."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return collections.Counter(
        n.op_type
        for n in graph.node
        if n.op_type != "QuantizeLinear" and any(i in dequantized for i in n.input)
    )


def compare(name: str, cache: Path, threads: int, repeats: int) -> str:
    entry = corpus_model(name, cache)
    shapes = parse_input_shapes([entry.input_shape]) if entry.input_shape else None
    static = normalize_model(entry.path, shapes)
    qdq = qdq_for_planning(static)
    backend = get_target("cpu").make_backend(threads=threads)
    runnables = {"float": backend.prepare(static), "int8": backend.prepare(qdq)}
    runs = []
    try:
        for seed in range(repeats):
            config = TimingConfig(rounds=7, seed=seed)
            runs.append(measure({k: r.sample for k, r in runnables.items()}, config))
    finally:
        for r in runnables.values():
            r.close()
    f = statistics.median(r["float"].median_ms for r in runs)
    q = statistics.median(r["int8"].median_ms for r in runs)
    speed = statistics.median(1 / paired_ratio(r["int8"], r["float"])[0] for r in runs)
    spread = max(max(r[k].spread for k in r) for r in runs)
    glue = ", ".join(f"{op} {n}" for op, n in float_glue(qdq).most_common(4)) or "-"
    shape = entry.input_shape or "as declared"
    return f"| {name} | {shape} | {f:.3f} | {q:.3f} | **{speed:.2f}x** | {spread:.0%} | {glue} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CORPUS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"cpu, {args.threads} thread(s), median of {args.repeats} interleaved runs; "
          "speed: float / int8, paired per round")  # fmt: skip
    print("| model | input | float ms | int8 ms | int8 speed | worst spread | "
          "float ops (top 4) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            print(compare(name, Path(tmp), args.threads, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
