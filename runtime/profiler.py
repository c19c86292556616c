"""Profile a model on a target: micro-benchmark every layer signature, calibrate in context.

This is the glue between the measurement side (a :class:`~.backend.Backend`, the timing
protocol, one-layer models) and the plain-data cost models. It only talks to backends
through ``prepare``/``sample``/``fingerprint`` (and an optional ``node_times`` for
in-context calibration), so new backends need no change here.

Typical use (what the planner needs)::

    from onnx_hwprune.cost_models.profile_db import ProfileDB
    from onnx_hwprune.runtime.profiler import build_cost_model
    from onnx_hwprune.runtime.targets import get_target

    with ProfileDB() as db:
        cost = build_cost_model("model.onnx", get_target("cpu").make_backend(), "cpu", db)
    cost.layer_latency("layer1.block0.conv2", 64, 48)   # Estimate(ms, provenance)
    cost.stair_edges("layer1.block0.conv2", "out")     # [(64, ms), (48, ms), ...]
    cost.predict({"layer1.block0.conv2": (64, 48), "layer1.block0.conv3": (48, 256)})
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx

from onnx_hwprune.cost_models.network import (
    NetworkCostModel,
    assemble_cost_model,
    layer_key,
    require_layers,
)
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.signature import Layer, LayerSignature, extract_layers
from onnx_hwprune.cost_models.stair_search import detect_axis, exhaustive_axis
from onnx_hwprune.cost_models.staircase import SearchConfig, StaircaseModel
from onnx_hwprune.runtime.backend import Backend, RecordedBackend
from onnx_hwprune.runtime.drift import DriftConfig, DriftGuard
from onnx_hwprune.runtime.microbench import measure_points
from onnx_hwprune.runtime.timing import TimingConfig, measure

__all__ = [
    "BudgetExceeded",
    "ProfileOptions",
    "build_cost_model",
    "calibrate",
    "load_model_and_layers",
    "profile_layers",
]

logger = logging.getLogger(__name__)

_ATTRIBUTION = 3
"""Version of the per-node attribution a stored calibration was made with: 1 separated
the followers; 2 names the HardSwish onnxruntime inlines and gives layout reorders to
their neighbours; 3 walks a conv's chain through a constant Mul that onnxruntime fused
into it, knows the "fused <gemm>" and "<tensor>_bn"/"_mul" kernel names, and splits a
node after a channel concatenation among the concatenated layers
(``runtime/node_profile.py``)."""
ContextModels = Callable[[onnx.ModelProto], Mapping[str, onnx.ModelProto]]
"""``context_models(model) -> {configuration name: pruned model}`` (see build_cost_model)."""
Progress = Callable[[int, int, int, str], None]
"""``progress(layer_index, layer_count, newly_measured, label)``: called when a layer
signature starts (with 0 measured) and after each measured batch."""


class BudgetExceeded(Exception):
    """The time budget ran out; what was measured is in the database."""


@dataclass(frozen=True)
class ProfileOptions:
    """How to profile: search knobs, timing protocol, exhaustive sweep, time budget, and
    whether every group re-times the layer's full point as an anchor against drift, the
    drift guard's thresholds (``drift=None`` turns the guard off)."""

    search: SearchConfig = field(default_factory=SearchConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    exhaustive: bool = False
    time_budget_s: float | None = None
    anchor: bool = True
    drift: DriftConfig | None = field(default_factory=DriftConfig)


def load_model_and_layers(
    source, *, normalized: bool = False
) -> tuple[onnx.ModelProto, list[Layer]]:
    """Normalised model and its prunable layers (via the ONNX frontend).

    ``normalized``: ``source`` is a model the frontend already produced (the pass
    pipeline's exported graph with static inputs, ``frontends.onnx.with_static_inputs``):
    its layers are read as it is, without reading and normalising it a second time (the
    normalisation is idempotent: the model hash, and so every stored calibration, is the
    same either way).
    """
    import onnx_graphsurgeon as gs

    from onnx_hwprune.frontends.onnx import normalize_model

    model = source if normalized and isinstance(source, onnx.ModelProto) else None
    model = model if model is not None else normalize_model(source)
    return model, extract_layers(gs.import_onnx(model))


def model_key(model: onnx.ModelProto) -> str:
    """Hash identifying a model's graph (for stored calibrations)."""
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()[:16]


def profile_layers(
    layers: list[Layer],
    backend: Backend,
    target: str,
    db: ProfileDB | None,
    options: ProfileOptions | None = None,
    progress: Progress | None = None,
) -> dict[tuple[str, int, int], StaircaseModel]:
    """A staircase model per distinct (signature, full in, full out) of ``layers``.

    Layers with identical signatures share every measurement (and the database shares
    them with earlier runs). Raises :class:`BudgetExceeded` when the budget runs out.
    """
    options = options or ProfileOptions()
    deadline = time.monotonic() + options.time_budget_s if options.time_budget_s else None
    distinct: dict[tuple[str, int, int], Layer] = {}
    for layer in layers:
        distinct.setdefault(layer_key(layer), layer)
    models = {}
    guard = _guard(backend, options)
    try:
        for index, (key, layer) in enumerate(distinct.items()):
            label = f"{layer.node}: {layer.signature.describe()}"
            report = _reporter(progress, index, len(distinct), label)
            report(0)
            axes = _axes_to_profile(layer)
            models[key] = _profile_one(
                layer, axes, backend, target, db, options, report, deadline, guard
            )
    finally:
        if guard is not None:
            guard.close()
            if guard.discarded:
                logger.warning("%d measurement groups drifted and were redone", guard.discarded)
    return models


def _guard(backend: Backend, options: ProfileOptions) -> DriftGuard | None:
    # A recorded device measures nothing: its stored points are all there is.
    if options.drift is None or isinstance(backend, RecordedBackend):
        return None
    return DriftGuard(backend, options.drift)


def _reporter(progress: Progress | None, index: int, count: int, label: str):
    def report(n: int) -> None:
        if progress is not None:
            progress(index, count, n, label)

    return report


def _axes_to_profile(layer: Layer) -> tuple[str, ...]:
    if layer.signature.group_kind == "grouped":
        # Pruning narrows every group and keeps the count (see LayerSignature): two
        # axes tied to multiples of the group count, which the axis search cannot probe.
        # Only the full point is measured; other counts are a stated MACs-scaled estimate.
        return ()
    if layer.signature.group_kind != "dense":
        return ("ch",) if layer.in_prunable or layer.out_prunable else ()
    return tuple(a for a, ok in (("in", layer.in_prunable), ("out", layer.out_prunable)) if ok)


def _profile_one(layer, axes, backend, target, db, options, progress, deadline, guard=None):
    sig, fi, fo = layer.signature, layer.in_channels, layer.out_channels
    per_ch = _per_ch(sig)

    anchor: list = []  # set once the full point is known: every later group is rescaled

    def measure_pairs(pairs: list[tuple[int, int]]) -> dict:
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded(f"time budget reached while profiling {layer.node}")
        return measure_points(
            backend, target, sig, pairs, db=db, config=options.timing, on_measured=progress,
            anchor=anchor[0] if anchor and options.anchor else None, guard=guard,
        )  # fmt: skip

    full = measure_pairs([(fi, fo)])[(fi, fo)]
    anchor.append(((fi, fo), full.median_ms))
    profiles = []
    for axis in axes:
        fn = _axis_measure(axis, fi, fo, per_ch, measure_pairs)
        n_full = fi // per_ch[0] if axis == "ch" else (fi if axis == "in" else fo)
        if options.exhaustive:
            profiles.append((axis, exhaustive_axis(fn, n_full)))
        else:
            profiles.append((axis, detect_axis(fn, n_full, options.search)))
    kind = "dense" if sig.group_kind == "dense" else "tied"
    model = StaircaseModel(sig.key(), kind, fi, fo, full.median_ms, tuple(profiles), per_ch)
    probes = [] if options.exhaustive else model.off_axis_probes()
    if not probes:
        return model
    got = measure_pairs(probes)
    return model.with_off_axis({p: got[p].median_ms for p in probes})


def _per_ch(sig: LayerSignature) -> tuple[int, int]:
    if sig.group_kind == "depthwise":
        return (1, sig.multiplier)
    if sig.group_kind == "grouped":
        return (sig.in_per_group, sig.out_per_group)
    return (1, 1)


def _axis_measure(axis, fi, fo, per_ch, measure_pairs):
    def pair(c: int) -> tuple[int, int]:
        if axis == "in":
            return (c, fo)
        if axis == "out":
            return (fi, c)
        return (c * per_ch[0], c * per_ch[1])

    def fn(counts: list[int]) -> dict[int, tuple[float, float]]:
        if not counts:
            return {}
        got = measure_pairs([pair(c) for c in counts])
        return {c: (got[pair(c)].median_ms, got[pair(c)].spread) for c in counts}

    return fn


def calibrate(
    model: onnx.ModelProto,
    backend: Backend,
    layers: list[Layer],
    models: dict,
    timing: TimingConfig | None = None,
    total_ms: float | None = None,
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """Measure the whole model; returns (total ms, residual ms, per-layer scale, per-layer
    follower ms).

    With a backend offering ``node_times(model)`` (onnxruntime), each layer's in-context
    share calibrates its micro-benchmark, the nodes that only carry a layer's channels on
    are its followers (they scale with its out-channels) and the rest is the residual.
    Otherwise (TVM) one global scale spreads the whole-model time over the layers in
    proportion to their micro-benchmarks and the residual is 0: the unprofiled rest
    (BatchNorm, activations and adds, which TVM's default pipeline does not fuse) scales
    with the channel counts, and so does load on a shared machine; an additive residual
    was seen to over-predict pruned ResNet-50s by 25-36%. ``total_ms`` reuses a whole-model
    latency measured elsewhere (e.g. interleaved with pruned variants).
    """
    total = total_ms if total_ms is not None else _time_model(model, backend, timing)
    micro = {l.node: models[layer_key(l)].full_ms for l in layers}  # noqa: E741
    node_times = getattr(backend, "node_times", None)
    if node_times is None:
        return total, 0.0, dict.fromkeys(micro, total / sum(micro.values())), {}
    from onnx_hwprune.runtime.node_profile import attribute_to_layers

    ctx = attribute_to_layers(model, node_times(model), [l.node for l in layers], total)  # noqa: E741
    scales = {n: (ctx.layer_ms[n] / micro[n] if ctx.layer_ms[n] > 0 else 1.0) for n in micro}
    followers = dict(ctx.follower_ms)
    residual = total - sum(micro[n] * scales[n] for n in micro) - sum(followers.values())
    return total, residual, scales, followers


def _time_model(model: onnx.ModelProto, backend: Backend, timing: TimingConfig | None) -> float:
    runnable = backend.prepare(model)
    try:
        return measure({"model": runnable.sample}, timing or TimingConfig())["model"].median_ms
    finally:
        runnable.close()


def _integer_ops_hint(model: onnx.ModelProto) -> str:
    """Integer-operator models (QLinearConv, ConvInteger) prune, but have no latency
    model yet: say what works instead."""
    integer = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"}
    if not any(n.op_type in integer for n in model.graph.node):
        return ""
    return (
        "; its layers are integer operators (QOperator or dynamic quantization), which "
        "have no latency model: use --ratio or --method global, or prune the float or "
        "QDQ model"
    )


def build_cost_model(
    source,
    backend: Backend,
    target: str,
    db: ProfileDB | None,
    options: ProfileOptions | None = None,
    progress: Progress | None = None,
    *,
    normalized: bool = False,
    context_models: ContextModels | None = None,
) -> NetworkCostModel:
    """Profile (or reuse from ``db``) every layer of ``source`` and calibrate the network.

    The calibration is stored in ``db`` under the model's hash and reused next time.
    ``normalized``: see :func:`load_model_and_layers`. ``context_models``: the pruned
    networks to time in context where no in-context points are stored (the API passes
    ``onnx_hwprune.context_configs.context_models``; the runtime never builds them).
    """
    model, layers = load_model_and_layers(source, normalized=normalized)
    require_layers(layers, _integer_ops_hint(model))
    models = profile_layers(layers, backend, target, db, options, progress)
    fp, mkey = backend.fingerprint_hash(), model_key(model)
    cal = db.get_calibration(target, fp, mkey) if db else None
    # A calibration stored by an older attribution held followers in the residual: before
    # followers were separated, or (version 1) before HardSwish and reorders had owners.
    old = cal is not None and cal.get("attribution", 0) < _ATTRIBUTION
    old = old and hasattr(backend, "node_times")
    if cal is None or old:
        total, residual, scales, followers = calibrate(model, backend, layers, models)
        cal = {"total_ms": total, "residual_ms": residual, "scales": scales,
               "followers": followers, "attribution": _ATTRIBUTION}  # fmt: skip
        if db:
            db.put_calibration(target, fp, mkey, cal)
    key = (target, fp, mkey)
    timing = (options or ProfileOptions()).timing
    # in-context points stored with an older attribution are measured again with it
    context = in_context_corrections(
        model, layers, models, backend, key, db, context_models, timing, stale=old
    )
    return assemble_cost_model(target, fp, layers, models, cal, context)


def in_context_corrections(
    model, layers, models, backend, key, db, context_models=None, timing=None, stale=False
) -> dict:
    """Per-layer :class:`~onnx_hwprune.cost_models.context.ContextCorrection` from the
    in-context points stored under ``key`` = (target, fingerprint hash, model hash), timing
    ``context_models(model)`` first where the backend has a per-node profiler and none
    are stored, some configuration is missing, or they are ``stale``."""
    from onnx_hwprune.cost_models.context import correction_from_points

    points = db.get_context(*key) if db and not stale else []
    node_times = _node_times_many(backend)
    if node_times is not None and context_models is not None:
        configs = _configs(context_models, model)
        # a set stored by an older version lacks configurations added since: re-measured
        if configs and (not points or set(configs) - {p.config for p in points}):
            wall = _wall_times(backend, timing or TimingConfig())
            points = _measure_context(model, layers, configs, node_times, wall) or points
            if db and points:
                db.put_context(*key, points)
    by_node: dict[str, list] = {}
    for p in points:
        by_node.setdefault(p.node, []).append(p)
    out = {}
    for layer in layers:
        corr = correction_from_points(models[layer_key(layer)], layer.in_channels,
                                      layer.out_channels, by_node.get(layer.node, []))  # fmt: skip
        if corr is not None:
            out[layer.node] = corr
    return out


def _node_times_many(backend: Backend):
    """``{name: model} -> {name: node times}``: interleaved where the backend offers it."""
    many = getattr(backend, "node_times_many", None)
    one = getattr(backend, "node_times", None)
    if many is None and one is not None:
        return lambda models: {name: one(m) for name, m in models.items()}
    return many


def _wall_times(backend: Backend, timing: TimingConfig):
    """``{name: model} -> {name: median ms}``, all timed interleaved (timing protocol)."""

    def wall(models: dict) -> dict[str, float]:
        runnables = {name: backend.prepare(m) for name, m in models.items()}
        try:
            got = measure({n: r.sample for n, r in runnables.items()}, timing)
        finally:
            for r in runnables.values():
                r.close()
        return {n: t.median_ms for n, t in got.items()}

    return wall


def _configs(context_models, model) -> Mapping[str, onnx.ModelProto]:
    try:
        return context_models(model)
    except Exception as exc:  # noqa: BLE001 - the isolated staircase still prices every layer
        logger.warning("in-context configurations failed (%s): staircases stay uncorrected",
                       exc)  # fmt: skip
        return {}


def _measure_context(model, layers, configs, node_times, wall_times) -> list:
    from onnx_hwprune.runtime.context_profile import measure_context

    try:
        return measure_context(model, layers, configs, node_times, wall_times)
    except Exception as exc:  # noqa: BLE001 - the isolated staircase still prices every layer
        logger.warning("in-context timing failed (%s): staircases stay uncorrected", exc)
        return []
