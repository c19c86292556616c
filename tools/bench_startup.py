"""Benchmark of start-up cost: ``onnx-hwprune --version`` and lower-layer imports.

Each case runs in a fresh process, ``--repeats`` times, interleaved; the median wall time
is reported, with the heavy modules (onnx, onnxruntime, tvm, torch, the API) that the
case loaded. Goals (issue #10): ``--version`` under 0.5 s; importing
``onnx_hwprune.cost_models.staircase`` loads no onnxruntime.

Usage: python tools/bench_startup.py [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("onnx", "onnxruntime", "tvm", "torch", "onnx_hwprune.api")
_LOADED = "import sys; print(','.join(m for m in {heavy} if m in sys.modules))"


def _cases() -> dict[str, list[str]]:
    cli = shutil.which("onnx-hwprune") or str(Path(sys.executable).with_name("onnx-hwprune"))
    probe = _LOADED.format(heavy=HEAVY)
    return {
        "onnx-hwprune --version": [cli, "--version"],
        "import cost_models.staircase": [
            sys.executable, "-c", f"import onnx_hwprune.cost_models.staircase; {probe}"
        ],
        "import onnx_hwprune": [sys.executable, "-c", f"import onnx_hwprune; {probe}"],
    }  # fmt: skip


def _run(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    cases = _cases()
    times: dict[str, list[float]] = {name: [] for name in cases}
    loaded: dict[str, str] = {}
    for _ in range(args.repeats):  # interleaved: load changes hit every case alike
        for name, argv in cases.items():
            seconds, out = _run(argv)
            times[name].append(seconds)
            loaded[name] = "" if name.endswith("--version") else out
    results = {
        name: {"median_s": statistics.median(ts), "runs_s": ts, "heavy_loaded": loaded[name]}
        for name, ts in times.items()
    }
    for name, r in results.items():
        heavy = r["heavy_loaded"] or "none"
        print(f"{name:32s} median {r['median_s']:.3f} s   heavy modules loaded: {heavy}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
