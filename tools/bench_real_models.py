"""The default job on the real-model corpus (``tests/corpus.py``): MACs cut, predicted and
measured speedup, output agreement with the original, and the guard's decision.

    XDG_CACHE_HOME=/tmp/cache-bench python tools/bench_real_models.py --out /tmp/real.json \
        torch_resnet18 ppocr_cls ...

Each model runs ``onnx-hwprune IN OUT [--input-shape ...] --threads 1`` in-process (the
default ``cpu`` target, budget 0.7, guard on, no data) and its JSON report is kept.
Latency is measured on this host (noisy when shared: read the spreads). Prints a
Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from corpus import CORPUS, corpus_model  # noqa: E402

from onnx_hwprune.cli import main  # noqa: E402


def run_one(name: str, work: Path, extra: list[str]) -> dict:
    model = corpus_model(name, work)
    out, report = work / f"{name}.pruned.onnx", work / f"{name}.report.json"
    args = [str(model.path), str(out), *model.shape_args(), "--threads", "1", "--quiet",
            "--report", str(report), *extra]  # fmt: skip
    code = main(args)
    if code != 0 or not report.exists():
        return {"name": name, "exit": code}
    return {"name": name, "exit": code, "report": json.loads(report.read_text())}


def row(result: dict) -> str:
    rep = result.get("report")
    if rep is None or "network" not in rep:
        reason = (rep or {}).get("reason", f"exit {result['exit']}")
        return f"| {result['name']} | unchanged: {reason[:60]} | | | | |"
    m0, m1 = rep["network"]["macs"]
    lat = rep.get("latency", {})
    pred = lat.get("predicted", {}).get("network_ms")
    meas = lat.get("measured")
    pred_s = f"{pred[0] / pred[1]:.2f}x" if pred else "-"
    meas_s = (f"{meas['original']['median_ms'] / meas['pruned']['median_ms']:.2f}x"
              if meas else "-")  # fmt: skip
    fid = rep.get("fidelity", {})
    cos = f"{fid['cosine']:.3f}" if fid else "-"
    search = rep.get("accuracy_search", {})
    budget = f"{search['chosen']:.3f}" if search.get("chosen") else "0.7"
    cut = f"{100 * (1 - m1 / m0):.1f}%"
    return f"| {result['name']} | {cut} | {pred_s} | {meas_s} | {cos} | {budget} |"


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(CORPUS))
    parser.add_argument("--out", type=Path, help="write every report here (JSON)")
    parser.add_argument("--extra", default="", help="extra CLI options, space separated")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(run_one(name, Path(tmp), args.extra.split()))
            print(row(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    print("| model | MACs cut | predicted | measured | output cosine | budget used |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(row(result))


if __name__ == "__main__":
    main_cli()
