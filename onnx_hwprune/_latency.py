"""The latency steps of a pruning job: the target's cost model (profiling what the
profile database lacks), predicted latency per layer with provenance, and the measured
latency of the original and the result, timed in one interleaved run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import onnx

from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan._channels import ChannelMap
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["cost_model", "baseline_latency", "predicted_section", "measured_section"]

log = logging.getLogger(__name__)


def cost_model(opts: PruneOptions, source: onnx.ModelProto, progress: Callable | None = None):
    """(cost model, backend or None) for ``opts.target``, by its ``cost_source``.

    Three sources, never confused: a profile shipped in the package (``cudnn-h100``:
    measured on that GPU, nothing measured here); an analytic estimate (``mali``),
    replaced by a board's measurements when the profile DB has them; otherwise measured
    on this host, reusing what the DB holds. The backend is None where nothing can be
    timed here.
    """
    from onnx_hwprune.cost_models.profile_db import ProfileDB
    from onnx_hwprune.frontends.onnx import with_static_inputs
    from onnx_hwprune.runtime.gpu_targets import shipped_cost_model
    from onnx_hwprune.runtime.targets import get_target

    target = get_target(opts.target, measurable=False)
    static = with_static_inputs(source)  # deployment latency: batch 1 where symbolic
    if opts.quantize == "int8":  # plan for the int8 kernels that will run (int8 staircases)
        from onnx_hwprune.runtime.quantize import qdq_for_planning

        static = qdq_for_planning(static)
    if target.cost_source == "shipped":
        return shipped_cost_model(target.name, static, progress=progress), None
    if opts.pinned_profile is not None:  # reproducible: reads that file only, times nothing
        from onnx_hwprune.runtime.pinned import pinned_cost_model

        return pinned_cost_model(opts.pinned_profile, static, target.name), None
    db = ProfileDB(opts.profile_db)
    try:
        if target.cost_source == "analytic":
            return _analytic(target.name, static, db), None
        return _measured(opts, static, db, progress)
    finally:
        db.close()


def _analytic(name: str, static: onnx.ModelProto, db):
    from onnx_hwprune.runtime.mali_models import mali_cost_model

    cost = mali_cost_model(static, db, target=name)
    if getattr(cost, "provenance", "") == "estimated":
        log.warning(
            "%s: no board measurements in the profile database; planning from the analytic "
            "Mali-G72 MP12 model: every latency is an estimate",
            name,
        )
    return cost


def _measured(opts: PruneOptions, static: onnx.ModelProto, db, progress):
    from onnx_hwprune.runtime.profiler import build_cost_model
    from onnx_hwprune.runtime.targets import get_target

    backend = get_target(opts.target).make_backend(threads=opts.threads)
    cost = build_cost_model(static, backend, opts.target, db, progress=progress)
    counts = db.quality_counts(opts.target, backend.fingerprint_hash())
    if counts["noisy"] + counts["drifted"]:
        log.warning(
            "the profile holds %d noisy and %d drifted points (of %d): the next run that measures "
            "re-measures them; see README 'Measuring on a shared machine'",
            counts["noisy"], counts["drifted"], sum(counts.values()),
        )  # fmt: skip
    if opts.measure:  # a budget fraction is a fraction of what the original measures now
        from onnx_hwprune.cost_models.anchor import anchored

        now = measured_section(backend, {"original": static})["original"]["median_ms"]
        log.info("original measured %.3f ms now (profile: %.3f ms)", now, cost.predict())
        cost = anchored(cost, now)
    return cost, backend


BASELINE_NOTE = (
    "latency predicted: not for a hardware-blind method on a measured target (it would "
    "profile every layer); add --snap, or compare with --method latency"
)


def baseline_latency(opts: PruneOptions, source: onnx.ModelProto):
    """(cost model or None, backend or None) for uniform/global: the cost model where it
    costs no profiling, the backend to time the original and the result."""
    from onnx_hwprune.frontends.onnx import with_static_inputs
    from onnx_hwprune.runtime.gpu_targets import shipped_profiles
    from onnx_hwprune.runtime.targets import get_target

    if opts.target == "mali" or opts.target in shipped_profiles():
        return cost_model(opts, source)
    with_static_inputs(source)  # a symbolic spatial dim fails here, with the hint
    return None, get_target(opts.target).make_backend(threads=opts.threads)


def source_of(cost, target: str) -> str:
    """Where the numbers come from, for reports."""
    from onnx_hwprune.runtime.gpu_targets import describe_shipped_profile
    from onnx_hwprune.runtime.targets import TARGETS

    record = TARGETS.get(target)
    if record is not None and record.cost_source == "shipped":
        return describe_shipped_profile(target)
    return getattr(cost, "source", f"measured on this host ({target}), staircase model")


def predicted_section(cost, graph, groups: ChannelGroups, plan: Plan) -> dict[str, Any]:
    """Per layer and for the network: predicted ms before/after, with provenance."""
    cmap = ChannelMap(graph, groups, [e.node for e in cost.layers])
    removed = {n: gp.size - len(gp.keep) for n, gp in plan.groups.items()}
    before, after = cost.predict_detail({}), cost.predict_detail(cmap.all_counts(removed))
    layers = {
        node: {
            "ms": [before["layers"][node].ms, est.ms],
            "provenance": [before["layers"][node].provenance, est.provenance],
        }
        for node, est in after["layers"].items()
    }
    return {
        "target": cost.target,
        "source": source_of(cost, cost.target),
        "network_ms": [before["total_ms"], after["total_ms"]],
        "provenance": [before.get("provenance"), after.get("provenance")],
        "residual_ms": cost.residual_ms,
        # the original as measured when planning (None: nothing measured here)
        "anchored_to_ms": getattr(cost, "measured_full_ms", None),
        "layers": layers,
    }


def measured_section(
    backend, models: Mapping[str, onnx.ModelProto], rounds: int = 7
) -> dict[str, Any]:
    """Median ms of each model, timed by the timing protocol in one interleaved run."""
    from onnx_hwprune.runtime.timing import TimingConfig, measure

    runnables = {name: backend.prepare(model) for name, model in models.items()}
    try:
        timings = measure({n: r.sample for n, r in runnables.items()}, TimingConfig(rounds=rounds))
    finally:
        for runnable in runnables.values():
            runnable.close()
    return {name: {"median_ms": t.median_ms, "spread": t.spread} for name, t in timings.items()}
