"""Measure a CUDA GPU in one call: cuDNN layer profiles, staircase plots, pruning benchmark.

Runs on a machine with torch (CUDA build), onnx, onnxruntime (CPU is enough), numpy,
onnx-graphsurgeon and this package; no TVM and no network needed. For each cuDNN setting
(``cudnn``: benchmark off; ``cudnn-benchmark``: autotuned) and batch size:

1. profiles every layer signature of ResNet-50, MobileNetV2 and VGG-16 (224x224, random
   weights, seed 0) plus any ``--models`` with the staircase search, calibrates each
   network on the GPU, and exports ``DIR/profiles/<target>-<gpu>.json`` (the profile
   export format, the full device fingerprint and the date) ready to be copied into
   ``cost_models/profiles/`` to ship as target ``<target>-<gpu>`` (e.g. ``cudnn-h100``);
2. checks that each exported file replays: the shipped-profile cost model built from it,
   measuring nothing, predicts what the measured one does (``DIR/replay_check.json``);
3. measures the staircases of a few representative layers (``DIR/staircases.json``) and
   plots them (``DIR/staircase_*.png``);
4. runs the pruning comparison of ``tools/bench_pruning.py`` (original, uniform, global,
   uniform+snap, latency at equal FLOPs) with whole networks timed on the GPU
   (``DIR/pruning_gpu.{json,md,png}``).

Measurements are cached in ``DIR/profiles.sqlite``: rerunning the same command resumes.
Without matplotlib the PNGs are skipped; ``--replot --out DIR`` draws them later from the
JSON results, on any machine.

Usage: python tools/bench_gpu.py --out DIR [--networks resnet50 mobilenet_v2 vgg16]
       [--batch 1 8] [--settings cudnn cudnn-benchmark] [--reductions 0.3 0.5 0.7]
       [--models extra.onnx ...] [--skip plots pruning] [--replot]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import onnx

from onnx_hwprune._version import __version__
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.frontends.onnx import export_model, load_graph, with_static_inputs
from onnx_hwprune.runtime.cudnn import CudnnBackend, cuda_available
from onnx_hwprune.runtime.gpu_targets import (
    GPU_PROFILE_OPTIONS,
    gpu_slug,
    search_settings,
    shipped_cost_model,
    validate_gpu_profile,
)
from onnx_hwprune.runtime.microbench import measure_points
from onnx_hwprune.runtime.profiler import build_cost_model, load_model_and_layers
from onnx_hwprune.testing.networks import NETWORKS

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pruning  # noqa: E402 - the CPU benchmark's planners, rows, table and plot

SETTINGS = {"cudnn": False, "cudnn-benchmark": True}
#: (network, layer node, axis) whose staircases are plotted: a 3x3 and a 1x1 of ResNet-50
#: at two depths, VGG-16's 512-channel 3x3, and a MobileNetV2 depthwise conv.
PLOT_LAYERS = (
    ("resnet50", "layer2.block1.conv2", "out"),
    ("resnet50", "layer3.block1.conv1", "in"),
    ("resnet50", "layer4.block1.conv2", "out"),
    ("vgg16", "features.conv11", "out"),
    ("mobilenet_v2", "features.10.dw.conv", "ch"),
)
_MAX_PLOT_POINTS = 96


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def network_source(name: str, batch: int):
    """(graph, static ONNX model) of a benchmark network, built as bench_pruning does."""
    graph = load_graph(NETWORKS[name](seed=0, batch=batch, image_size=224))
    return graph, with_static_inputs(export_model(graph))


def profile_all(args, db: ProfileDB) -> dict[str, dict]:
    """Profile + calibrate every network (and --models) per setting and batch."""
    fingerprints = {}
    for target, benchmark in SETTINGS.items():
        if target not in args.settings:
            continue
        backend = CudnnBackend(benchmark=benchmark)
        fingerprints[target] = backend.fingerprint()
        for batch in args.batch:
            for name in args.networks:
                t0 = time.monotonic()
                build_cost_model(
                    network_source(name, batch)[1], backend, target, db, GPU_PROFILE_OPTIONS
                )
                log(f"{target} b{batch} {name}: profiled in {time.monotonic() - t0:.0f}s")
        for path in args.models:
            model = with_static_inputs(onnx.load(str(path)), batch=args.batch[0])
            build_cost_model(model, backend, target, db, GPU_PROFILE_OPTIONS)
            log(f"{target} {path}: profiled")
    return fingerprints


def export_profiles(args, db: ProfileDB, fingerprints: dict[str, dict]) -> dict[str, Path]:
    """One validated profile file per setting: ``DIR/profiles/<target>-<gpu>.json``."""
    folder = args.out / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    whole, paths = db.export_json(), {}
    for target, fp in fingerprints.items():
        doc = _one_device(
            whole, target, CudnnBackend(benchmark=SETTINGS[target]).fingerprint_hash()
        )
        doc["measured"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool": "tools/bench_gpu.py",
            "onnx_hwprune": __version__,
            "networks": list(args.networks),
            "batches": list(args.batch),
            "command": " ".join(sys.argv),
            "search": search_settings(),
        }
        name = f"{target}-{gpu_slug(fp['gpu'])}"
        validate_gpu_profile(doc, name=name, origin=name)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        paths[target] = path
        log(f"wrote {path} ({len(doc['measurements'])} measurements)")
    return paths


def _one_device(doc: dict, target: str, fp_hash: str) -> dict:
    def mine(entry: dict) -> bool:
        return entry["target"] == target and entry["fingerprint_hash"] == fp_hash

    return {
        "format": doc["format"],
        "version": doc["version"],
        "devices": [d for d in doc["devices"] if mine(d)],
        "measurements": [m for m in doc["measurements"] if mine(m)],
        "calibrations": [c for c in doc["calibrations"] if mine(c)],
    }


def replay_check(args, db: ProfileDB, paths: dict[str, Path]) -> list[dict]:
    """Cost models from each exported file (no measuring) against the measured ones."""
    rows = []
    for target, path in paths.items():
        backend = CudnnBackend(benchmark=SETTINGS[target])
        for batch in args.batch:
            for name in args.networks:
                source = network_source(name, batch)[1]
                shipped = shipped_cost_model(path.stem, source, directory=path.parent)
                measured = build_cost_model(source, backend, target, db, GPU_PROFILE_OPTIONS)
                row = {"profile": path.stem, "network": name, "batch": batch}
                row.update(shipped_ms=shipped.predict({}), measured_model_ms=measured.predict({}))
                row["match"] = abs(row["shipped_ms"] - row["measured_model_ms"]) < 1e-9
                rows.append(row)
    (args.out / "replay_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    bad = [r for r in rows if not r["match"]]
    log(
        f"replay check: {len(rows) - len(bad)}/{len(rows)} match"
        + (f"; MISMATCH {bad}" if bad else "")
    )
    return rows


def sweep_staircases(args, db: ProfileDB) -> list[dict]:
    """Measure :data:`PLOT_LAYERS` along one axis (batch 1, each setting) into
    ``DIR/staircases.json``; the plots are drawn from that file."""
    gpu, curves = CudnnBackend().fingerprint()["gpu"], []
    for net, node, axis in PLOT_LAYERS:
        if net not in args.networks:
            continue
        layer = next(
            x for x in load_model_and_layers(network_source(net, 1)[1])[1] if x.node == node
        )
        for target in args.settings:
            counts, ms = _sweep(layer, axis, target, db)
            curve = {"network": net, "node": node, "axis": axis, "target": target, "gpu": gpu}
            sig = layer.signature.describe()
            curves.append({**curve, "signature": sig, "counts": counts, "ms": ms})
    (args.out / "staircases.json").write_text(json.dumps(curves, indent=1) + "\n")
    return curves


def plot_staircases(out: Path) -> None:
    """``DIR/staircase_<net>_<node>.png`` from ``DIR/staircases.json`` (no GPU needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads((out / "staircases.json").read_text())
    for net, node in dict.fromkeys((c["network"], c["node"]) for c in curves):
        mine = [c for c in curves if (c["network"], c["node"]) == (net, node)]
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for c in mine:
            ax.plot(c["counts"], c["ms"], marker=".", lw=0.8, label=c["target"])
        title = f"{net} {node} on {mine[0]['gpu']}\n{mine[0]['signature']}"
        ax.set(title=title, xlabel=f"{mine[0]['axis']} channels", ylabel="ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"staircase_{net}_{node.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        log(f"wrote {path}")


def replot(out: Path) -> None:
    """Draw every PNG from the JSON results in ``out`` (matplotlib needed, no GPU)."""
    if (out / "staircases.json").exists():
        plot_staircases(out)
    if (out / "pruning_gpu.json").exists():
        bench_pruning.plot(
            json.loads((out / "pruning_gpu.json").read_text()), out / "pruning_gpu.png"
        )
        log(f"wrote {out / 'pruning_gpu.png'}")


def _sweep(layer, axis: str, target: str, db: ProfileDB) -> tuple[list[int], list[float]]:
    full = layer.in_channels if axis in ("in", "ch") else layer.out_channels
    step = max(1, full // _MAX_PLOT_POINTS)
    counts = sorted({*range(step, full + 1, step), full})
    if axis == "in":
        points = [(c, layer.out_channels) for c in counts]
    elif axis == "out":
        points = [(layer.in_channels, c) for c in counts]
    else:
        points = [(c, c * layer.signature.multiplier) for c in counts]
    backend = CudnnBackend(benchmark=SETTINGS[target])
    got = measure_points(
        backend, target, layer.signature, points, db=db, config=GPU_PROFILE_OPTIONS.timing
    )
    return counts, [got[p].median_ms for p in points]


def pruning(args, db: ProfileDB) -> list[dict]:
    """bench_pruning's comparison with the cuDNN backends, whole networks on the GPU."""
    from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
    from onnx_hwprune.passes.analysis.importance import channel_importance
    from onnx_hwprune.passes.plan.latency import LatencyPlanner
    from onnx_hwprune.passes.transform.remove_channels import remove_channels

    rows = []
    for target in args.settings:
        backend = CudnnBackend(benchmark=SETTINGS[target])
        for batch in args.batch:
            for name in args.networks:
                t0 = time.monotonic()
                graph, source = network_source(name, batch)
                groups = analyze_channel_groups(graph)
                scores = channel_importance(graph, groups, "l1")
                cost = build_cost_model(source, backend, target, db, GPU_PROFILE_OPTIONS)
                planner = LatencyPlanner(graph, groups, scores, cost, [e.node for e in cost.layers])
                variants = {"original": (None, source)}
                for r in args.reductions:
                    for method, plan in bench_pruning._plans(
                        graph, groups, scores, planner, r
                    ).items():
                        pruned = remove_channels(graph, groups, plan)
                        variants[f"{method}@{r:g}"] = (
                            plan,
                            with_static_inputs(export_model(pruned)),
                        )
                timings = bench_pruning._time_all(
                    backend, {k: m for k, (_, m) in variants.items()}, args.rounds
                )
                label = f"{name} b{batch}"
                rows += bench_pruning._rows(label, target, variants, timings, planner, 0.0)
                log(f"pruning {label} on {target}: {time.monotonic() - t0:.0f}s")
                (args.out / "pruning_gpu.json").write_text(json.dumps(rows, indent=1))
    (args.out / "pruning_gpu.md").write_text(bench_pruning.table(rows) + "\n")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="results folder")
    parser.add_argument(
        "--networks",
        nargs="+",
        default=["resnet50", "mobilenet_v2", "vgg16"],
        choices=sorted(NETWORKS),
    )
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds for whole networks"
    )
    parser.add_argument(
        "--models", nargs="*", type=Path, default=[], help="extra ONNX models to profile"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["plots", "pruning"])
    parser.add_argument("--replot", action="store_true", help="only redraw PNGs from DIR's JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        replot(args.out)
        return 0
    ok, why = cuda_available()
    if not ok:
        print(f"bench_gpu: needs a CUDA GPU: {why}", file=sys.stderr)
        return 2
    if "tvm" in sys.modules:
        log("warning: tvm was imported; nothing on this path should need it")
    args.out.mkdir(parents=True, exist_ok=True)
    with ProfileDB(args.out / "profiles.sqlite") as db:
        fingerprints = profile_all(args, db)
        paths = export_profiles(args, db, fingerprints)
        replay_check(args, db, paths)
        if "plots" not in args.skip:
            sweep_staircases(args, db)
        if "pruning" not in args.skip:
            print(bench_pruning.table(pruning(args, db)))
    try:
        replot(args.out)
    except ImportError:  # matplotlib is optional on the GPU machine
        log("matplotlib missing: draw the PNGs elsewhere with --replot --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
