"""Benchmark of the latency model: measurements needed, prediction error, whole network.

For each target and network (ResNet-50, MobileNetV2, VGG-16 at 224x224 by default;
also ``resnet18``, ``densenet121`` or a file, see ``_load``):

1. *Measurements needed*: every distinct layer family (signature + full channel counts) is
   profiled with the staircase detector into a fresh profile DB; the number of points
   measured is compared with an exhaustive sweep of each profiled axis (every count
   1..N, the other axis at full; also over the modelled range ``[lo, N]``).
2. *Per-layer prediction error*: ``--holdout`` random counts per axis in ``[lo, N]`` that
   the detector did not measure, plus random off-axis (in, out) pairs for dense layers,
   are measured and compared with the model (MAPE).
3. *Whole network*: the cost model (calibrated on the unpruned network) predicts pruned
   variants (channels inside residual blocks / expansions / chains cut to random
   fractions, aligned and unaligned); every variant is measured (interleaved) and compared,
   without and with the in-context correction (whole pruned networks timed per node at
   their own configurations, ``runtime/context_profile.py``; the variants stay held out).

Writes ``results_<target>.json`` into ``--out`` and prints a markdown table.

Usage::

    python tools/bench_latency_model.py --out /tmp/bench [--targets cpu,tvm-llvm]
        [--networks resnet50,mobilenet_v2,vgg16] [--image-size 224] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_hwprune.context_configs import context_models, first_channels_plan
from onnx_hwprune.cost_models.network import LayerEntry, NetworkCostModel, prediction_report
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.signature import extract_layers
from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.runtime.microbench import measure_points
from onnx_hwprune.runtime.profiler import (
    ProfileOptions,
    calibrate,
    in_context_corrections,
    model_key,
    profile_layers,
)
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure
from onnx_hwprune.testing.zoo import BENCHMARK_NETWORKS, benchmark_network

logger = logging.getLogger("bench")
_PER_CHANNEL = ("BatchNormalization", "Relu", "Clip", "MaxPool")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for target_name in args.targets.split(","):
        target = get_target(target_name)
        backend = target.make_backend(threads=args.threads)
        db_path = args.out / f"bench_{target_name}.sqlite"
        if db_path.exists() and not args.resume:
            db_path.unlink()
        results = {"target": target_name, "source": target.source,
                   "fingerprint": backend.fingerprint(), "args": _jsonable(vars(args)),
                   "networks": {}}  # fmt: skip
        with ProfileDB(db_path) as db:
            for net in args.networks.split(","):
                size = args.tvm_image_size if target_name.startswith("tvm") else args.image_size
                results["networks"][net] = bench_network(net, size, target_name, backend, db, args)
                _write(args.out / f"results_{target_name}.json", results)
        print(markdown(results))
    return 0


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--targets", default="cpu,tvm-llvm")
    p.add_argument("--networks", default="resnet50,mobilenet_v2,vgg16",
                   help="built-in names, or model files as PATH:input=1x3xHxW")  # fmt: skip
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--tvm-image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--holdout", type=int, default=4, help="held-out counts per axis")
    p.add_argument("--variants", type=int, default=3, help="pruned variants per network")
    p.add_argument("--max-families", type=int, default=0, help="0: all layer families")
    p.add_argument("--no-network", action="store_true", help="skip the whole-network part")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 families, image 64")
    p.add_argument("--resume", action="store_true", help="keep an existing bench DB")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.max_families, args.image_size, args.tvm_image_size = 3, 64, 32
        args.holdout, args.variants = 2, 1
    return args


def bench_network(net, size, target, backend, db, args) -> dict:
    """All three measures for one network on one target."""
    t0 = time.monotonic()
    model = _load(net, size)
    layers = extract_layers(gs.import_onnx(model))
    families = _families(layers, args.max_families)
    options = ProfileOptions()
    counted = []
    models = {}
    for layer in families.values():
        before = len(counted)
        progress = lambda i, c, n, label: counted.extend([1] * n)  # noqa: E731
        models.update(profile_layers([layer], backend, target, db, options, progress))
        logger.info("%s %s: %d points", net, layer.node, len(counted) - before)
    profile_s = time.monotonic() - t0
    rng = random.Random(args.seed)
    fam_rows = [_family_row(layer, models[key], backend, target, args, rng)
                for key, layer in families.items()]  # fmt: skip
    result = {"image_size": size, "layers": len(layers), "families": len(families),
              "profile_seconds": profile_s, "points_measured": len(counted),
              "family_rows": fam_rows, **_summarise(fam_rows)}  # fmt: skip
    if not args.no_network and not args.max_families:
        result["network"] = _bench_whole(model, layers, models, backend, target, args, rng, db)
    result["seconds"] = time.monotonic() - t0
    return result


def _load(net: str, size: int) -> onnx.ModelProto:
    """A network built in code, or ``PATH:input=1x3x48x192`` (a file at a static shape)."""
    if net in BENCHMARK_NETWORKS:
        return normalize_model(benchmark_network(net, size))
    path, _, shape = net.partition(":")
    name, _, dims = shape.partition("=")
    return normalize_model(path, {name: [int(d) for d in dims.split("x")]} if dims else None)


def _families(layers, limit):
    fams = {}
    for layer in layers:
        fams.setdefault((layer.signature.key(), layer.in_channels, layer.out_channels), layer)
    return dict(list(fams.items())[:limit]) if limit else fams


def _family_row(layer, model, backend, target, args, rng) -> dict:
    """Exhaustive-sweep size and held-out errors of one family."""
    sig = layer.signature
    measured = {(name, c) for name, prof in model.axes for c, _, _ in prof.points}
    measured |= {("2d", (i, o)) for i, o, _ in model.off_axis}  # the off-axis grid
    pairs, preds = [], []
    full_axis, range_axis = 0, 0
    for name, prof in model.axes:
        full_axis += prof.full
        range_axis += prof.full - prof.lo + 1
        pool = [c for c in range(prof.lo, prof.full) if (name, c) not in measured]
        for c in rng.sample(pool, min(args.holdout, len(pool))):
            pair = _pair(name, c, layer, model)
            pairs.append(pair)
            preds.append(("axis", pair, model.latency(*pair)))
    both = len(model.axes) == 2 and all(p.lo < p.full for _, p in model.axes)
    if sig.group_kind == "dense" and both:  # a 1-channel axis (det's head) has no room
        for _ in range(args.holdout // 2):
            pair = (rng.randint(model.axis("in").lo, layer.in_channels - 1),
                    rng.randint(model.axis("out").lo, layer.out_channels - 1))  # fmt: skip
            pairs.append(pair)
            preds.append(("2d", pair, model.latency(*pair)))
    # Held-out truth is anchored like the profile, so both sit on the same footing.
    anchor = ((layer.in_channels, layer.out_channels), model.full_ms)
    truth = measure_points(backend, target, sig, pairs, anchor=anchor) if pairs else {}
    errs = [_holdout_row(k, p, e, truth[p].median_ms) for k, p, e in preds]
    return {"node": layer.node, "signature": sig.describe(), "in": layer.in_channels,
            "out": layer.out_channels, "axes": [n for n, _ in model.axes],
            "points": len(measured), "exhaustive_full": full_axis,
            "exhaustive_range": range_axis, "holdout": errs,
            "align": {n: p.align for n, p in model.axes},
            "edges": {n: [c for c, _ in model.stair_edges(n)][:8] for n, _ in model.axes},
            }  # fmt: skip


def _holdout_row(kind, pair, est, meas) -> dict:
    return {"kind": kind, "in": pair[0], "out": pair[1], "pred": est.ms, "meas": meas,
            "provenance": est.provenance, "ape": abs(est.ms - meas) / meas}  # fmt: skip


def _pair(axis, c, layer, model):
    if axis == "in":
        return (c, layer.out_channels)
    if axis == "out":
        return (layer.in_channels, c)
    return (c * model.per_ch[0], c * model.per_ch[1])


def _summarise(rows) -> dict:
    def mape(kind):
        v = [e["ape"] for r in rows for e in r["holdout"] if e["kind"] == kind]
        return float(np.mean(v)) if v else None

    points = sum(r["points"] for r in rows)
    convs = [r for r in rows if r["signature"].startswith("Conv")]
    conv_points = sum(r["points"] for r in convs)
    return {"fraction_of_full_sweep_convs": conv_points
            / max(1, sum(r["exhaustive_full"] for r in convs)),"points_distinct": points,
            "exhaustive_full": sum(r["exhaustive_full"] for r in rows),
            "exhaustive_range": sum(r["exhaustive_range"] for r in rows),
            "fraction_of_full_sweep": points / max(1, sum(r["exhaustive_full"] for r in rows)),
            "fraction_of_range_sweep": points / max(1, sum(r["exhaustive_range"] for r in rows)),
            "mape_axis": mape("axis"), "mape_2d": mape("2d"),
            "holdout_points": sum(len(r["holdout"]) for r in rows)}  # fmt: skip


# -- whole network ---------------------------------------------------------------------


def _bench_whole(model, layers, models, backend, target, args, rng, db) -> dict:
    key = {layer.node: (layer.signature.key(), layer.in_channels, layer.out_channels)
           for layer in layers}  # fmt: skip
    variants = _variants(model, args.variants, rng)
    runnables = {name: backend.prepare(m) for name, (m, _) in variants.items()}
    timings = measure({n: r.sample for n, r in runnables.items()}, TimingConfig(rounds=7))
    del runnables
    # The unpruned model's time comes from the same interleaved batch as the variants.
    total, residual, scales, followers = calibrate(
        model, backend, layers, models, total_ms=timings["full"].median_ms
    )
    entries = tuple(
        LayerEntry(
            x.node,
            x.in_channels,
            x.out_channels,
            models[key[x.node]],
            scales[x.node],
            follower_ms=followers.get(x.node, 0.0),
        )
        for x in layers
    )
    cost = NetworkCostModel(target, backend.fingerprint_hash(), entries, residual, total)
    unscaled = tuple(LayerEntry(e.node, e.in_channels, e.out_channels, e.model) for e in entries)
    raw_residual = total - sum(e.model.full_ms for e in entries)
    raw = NetworkCostModel(target, "", unscaled, raw_residual, total)
    # The unpruned model calibrates the prediction (error 0 by construction): not a case.
    pruned = {n: ch for n, (_, ch) in variants.items() if n != "full"}
    cases = [(n, cost.predict(ch), timings[n].median_ms) for n, ch in pruned.items()]
    raw_cases = [(n, raw.predict(ch), timings[n].median_ms) for n, ch in pruned.items()]
    # In-context points come from their own configurations (runtime/context_profile.py),
    # not from these variants: the variants stay held out.
    t0 = time.monotonic()
    key = (target, backend.fingerprint_hash(), model_key(model))
    context = in_context_corrections(model, layers, models, backend, key, db, context_models)
    ctx_entries = tuple(replace(e, context=context.get(e.node)) for e in entries)
    ctx_cost = replace(cost, layers=ctx_entries)
    ctx_cases = [(n, ctx_cost.predict(ch), timings[n].median_ms) for n, ch in pruned.items()]
    # The same with the followers held constant in the residual (the model before they
    # were separated), to show what they change.
    const = replace(ctx_cost, layers=tuple(replace(e, follower_ms=0.0) for e in ctx_entries),
                    residual_ms=residual + sum(followers.values()))  # fmt: skip
    const_cases = [(n, const.predict(ch), timings[n].median_ms) for n, ch in pruned.items()]
    return {
        "measured_full_ms": total,
        "residual_ms": residual,
        "calibrated": prediction_report(cases),
        "uncalibrated": prediction_report(raw_cases),
        "in_context": prediction_report(ctx_cases),
        "in_context_followers_constant": prediction_report(const_cases),
        "followers_ms": sum(followers.values()),
        "in_context_seconds": time.monotonic() - t0,
        "variants": {
            n: {"channels": {k: list(v) for k, v in ch.items()}} for n, ch in pruned.items()
        },
    }


def _variants(model, count, rng) -> dict:
    """name -> (pruned model, channels by layer); the first is the unpruned model.

    Every prunable channel group of the project's own analysis is cut (keeping its first
    channels), so the variants cover what a plan may cut: residual-coupled groups and
    whatever a hand-written chain finder would miss (PP-OCRv5's recognizer has no plain
    conv -> conv chain). Groups under 8 channels stay whole."""
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    full = {x.node: (x.in_channels, x.out_channels) for x in extract_layers(graph)}
    out = {"full": (model, {})}
    styles = ["aligned16", "unaligned", "mixed"]
    for v in range(count):
        style = styles[v % len(styles)]

        def count_of(size: int, style=style) -> int:
            k = max(1, int(size * rng.uniform(0.4, 0.95)))
            if style == "aligned16" or (style == "mixed" and rng.random() < 0.5):
                k = max(16, k - k % 16)
            return k

        plan = first_channels_plan(groups, count_of, method="bench")
        pruned = export_model(remove_channels(graph, groups, plan))  # a copy: graph stays
        counts = {x.node: (x.in_channels, x.out_channels)
                  for x in extract_layers(gs.import_onnx(pruned))}  # fmt: skip
        out[f"{style}{v}"] = (pruned, {n: c for n, c in counts.items() if c != full.get(n)})
    return out


def _chains(graph) -> list[list]:
    """[producer, (depthwise), consumer] chains joined by per-channel ops only."""
    chains = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or not _dense(node):
            continue
        path, cur = [node], node
        while True:
            users = list(cur.outputs[0].outputs)
            if len(users) != 1:
                break
            cur = users[0]
            if cur.op in _PER_CHANNEL or _channel_affine(cur):
                continue
            if cur.op == "Conv" and _depthwise(cur) and len(path) == 1:
                path.append(cur)
                continue
            if cur.op in ("Conv", "Gemm") and _dense(cur) and cur.op == node.op:
                path.append(cur)
                chains.append(path)
            break
    return chains


def _channel_affine(node) -> bool:
    """A Mul/Add by a per-channel constant ``[C, 1, 1]`` (DenseNet-121 of the light zoo
    scales after each BatchNorm so)."""
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2:
        return False
    const = node.inputs[1]
    return isinstance(const, gs.Constant) and const.values.ndim == 3 and const.values.size > 1


def _dense(node) -> bool:
    ok = len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant)
    if node.op == "Gemm":
        return ok and int(node.attrs.get("transB", 0)) == 1
    return ok and int(node.attrs.get("group", 1)) == 1


def _depthwise(node) -> bool:
    return int(node.attrs.get("group", 1)) > 1 and node.inputs[1].values.shape[1] == 1


def _prune(model, keeps) -> tuple[onnx.ModelProto, dict]:
    """Cut each chain's channels to ``k``: the producer's outputs, per-channel params in
    between, the depthwise conv, the consumer's inputs."""
    graph = gs.import_onnx(model)
    channels: dict[str, tuple[int, int]] = {}
    for chain in _chains(graph):
        _cut(chain, keeps[chain[0].name], channels)
    io = {t.name for t in graph.inputs + graph.outputs}
    for t in graph.tensors().values():
        if not isinstance(t, gs.Constant) and t.name not in io:
            t.shape = None  # re-inferred below with the pruned channel counts
    pruned = gs.export_onnx(graph.cleanup().toposort())
    pruned.ir_version = 10
    return onnx.shape_inference.infer_shapes(pruned), channels


def _cut(chain, k, channels) -> None:
    prod, cons = chain[0], chain[-1]
    w = prod.inputs[1]
    w.values = w.values[:k]
    for extra in prod.inputs[2:]:
        extra.values = extra.values[:k]
    cur = prod
    while cur is not cons:
        cur = cur.outputs[0].outputs[0]
        if cur.op == "BatchNormalization":
            for p in cur.inputs[1:]:
                p.values = p.values[:k]
        elif _channel_affine(cur):
            cur.inputs[1].values = cur.inputs[1].values[:k]
        elif cur is not cons and cur.op == "Conv":
            cur.inputs[1].values = cur.inputs[1].values[:k]
            for extra in cur.inputs[2:]:
                extra.values = extra.values[:k]
            cur.attrs["group"] = k
            channels[cur.name] = (k, k)
    cons.inputs[1].values = cons.inputs[1].values[:, :k]
    p_in = prod.inputs[1].values.shape[1]
    channels[prod.name] = (channels.get(prod.name, (p_in, 0))[0], k)
    c_out = cons.inputs[1].values.shape[0]
    channels[cons.name] = (k, channels.get(cons.name, (0, c_out))[1])


# -- output ----------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """The summary table of one target."""
    fp = results["fingerprint"]
    lines = [f"### target `{results['target']}`: {fp.get('cpu')}, {fp.get('threads')} thread(s)",
             "", "| network | families | points measured | vs full sweep | vs range sweep | "
             "held-out MAPE (axis) | MAPE (2-D) | network MAPE (calibrated / raw) | "
             "network MAPE / max (in-context) | profile time |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for net, r in results["networks"].items():
        nw = r.get("network")
        nwtxt = (f"{nw['calibrated']['mape']:.1%} / {nw['uncalibrated']['mape']:.1%}"
                 if nw else "n/a")  # fmt: skip
        ic = nw.get("in_context") if nw else None
        nwtxt += f" | {ic['mape']:.1%} / {ic['max_abs_error']:.1%}" if ic else " | n/a"
        lines.append(
            f"| {net} @{r['image_size']} | {r['families']} | {r['points_distinct']} | "
            f"{r['fraction_of_full_sweep']:.1%} | {r['fraction_of_range_sweep']:.1%} | "
            f"{_pct(r['mape_axis'])} | {_pct(r['mape_2d'])} | {nwtxt} | "
            f"{r['profile_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _write(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(main())
