"""Benchmark of the core pass: time and peak memory of analysis + channel removal.

Measures, for each network built by ``onnx_hwprune.testing.networks`` (random
weights, fixed seed), in a fresh process per network so peaks do not mix:

- ``load``: file -> normalised IR (opset upgrade, folding, shape inference);
- ``core``: channel-group analysis + importance + plan + removal (the issue's goal: < 2 s
  for ResNet-50);
- ``export``: IR -> ONNX with re-inferred shapes, plus the full checker;
- peak RSS (sampled every 2 ms by a thread) as a multiple of the model file's size (goal:
  < 3x): for the core alone (above the RSS with the loaded graph), and end to end (file
  to verified pruned model, above the RSS right after imports, in a fresh process).

Usage: python tools/bench_core.py [--networks resnet50 vgg16] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _child(path: str, repeats: int) -> dict:
    """Runs in the fresh process: time each stage ``repeats`` times, then one memory run."""
    from onnx_hwprune.frontends.onnx import export_model, load_graph, verify_model
    from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
    from onnx_hwprune.passes.analysis.importance import channel_importance
    from onnx_hwprune.passes.plan.baselines import uniform_plan
    from onnx_hwprune.passes.transform.remove_channels import remove_channels

    def core(graph):
        groups = analyze_channel_groups(graph)
        plan = uniform_plan(groups, channel_importance(graph, groups, "l1"), 0.3)
        return remove_channels(graph, groups, plan)

    start_base = _rss_bytes()
    with PeakRSS() as e2e_peak:  # first run: file to verified pruned model, from a clean heap
        verify_model(export_model(core(load_graph(path))))
    times: dict[str, list[float]] = {"load": [], "core": [], "export": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = load_graph(path)
        t1 = time.perf_counter()
        pruned = core(graph)
        t2 = time.perf_counter()
        verify_model(export_model(pruned))
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            value and times[key].append(value)
        del graph, pruned
    graph = load_graph(path)
    base = _rss_bytes()
    with PeakRSS() as core_peak:
        pruned = core(graph)
    with PeakRSS() as all_peak:
        verify_model(export_model(pruned))
    return {
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
        "core_peak_over_baseline_bytes": core_peak.peak - base,
        "core_plus_export_peak_over_baseline_bytes": max(core_peak.peak, all_peak.peak) - base,
        "end_to_end_peak_bytes": e2e_peak.peak - start_base,
    }


def _bench(name: str, repeats: int, workdir: Path) -> dict:
    import onnx

    from onnx_hwprune.testing.networks import NETWORKS

    path = workdir / f"{name}.onnx"
    onnx.save(NETWORKS[name](seed=0), path)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    result.update(
        network=name,
        model_bytes=size,
        core_peak_x_model=result["core_peak_over_baseline_bytes"] / size,
        core_plus_export_peak_x_model=result["core_plus_export_peak_over_baseline_bytes"] / size,
        end_to_end_peak_x_model=result["end_to_end_peak_bytes"] / size,
    )
    return result


def _table(rows: list[dict]) -> str:
    lines = [
        "| network | model MB | load s | analysis+removal s | export+check s | "
        "peak mem, core | peak mem, load+core+export |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median_s"]
        cells = [r["network"], f"{r['model_bytes'] / 1e6:.1f}"]
        cells += [f"{m[k]:.2f}" for k in ("load", "core", "export")]
        cells += [f"{r[k]:.2f}x" for k in ("core_peak_x_model", "end_to_end_peak_x_model")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--networks", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2", "vgg16"]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_bench(name, args.repeats, Path(tmp)) for name in args.networks]
    cores = os.cpu_count()
    print(f"machine: {cores} cores; median of {args.repeats} runs; memory: peak RSS / file size")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
