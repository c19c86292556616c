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

__all__ = [
    "Pricing",
    "cost_model",
    "priced_form",
    "baseline_latency",
    "predicted_section",
    "measured_section",
    "measured_timings",
    "summarise_timings",
]

log = logging.getLogger(__name__)


class Pricing:
    """The target's cost model for one source model, built once per pruning job.

    The accuracy guard's trials and its final, measured run plan the same model for the
    same target with different budgets; profiling belongs to the job, not to each trial
    (a second build re-measured every noisy point, doubling a first run). Built on first
    use; :meth:`get` then anchors to the original's latency measured *now* where the
    options ask to measure (anchoring returns a new model: the cached one stays raw).
    """

    def __init__(self) -> None:
        self._built: tuple | None = None
        self._key: tuple | None = None

    def get(self, opts: PruneOptions, source: onnx.ModelProto, progress: Callable | None = None):
        """(cost model, backend or None), as :func:`cost_model` returns them."""
        key = (opts.target, opts.threads, opts.quantize, opts.pinned_profile, opts.profile_db)
        if self._built is None or key != self._key:
            self._built, self._key = _priced(opts, source, progress), key
        cost, backend, static = self._built
        return (_anchored_now(cost, backend, static) if opts.measure else cost), backend


def cost_model(opts: PruneOptions, source: onnx.ModelProto, progress: Callable | None = None):
    """(cost model, backend or None) for ``opts.target``, by its ``cost_source``.

    Three sources, never confused: a profile shipped in the package (``cudnn-h100``:
    measured on that GPU, nothing measured here); an analytic estimate (``mali``),
    replaced by a board's measurements when the profile DB has them; otherwise measured
    on this host, reusing what the DB holds. The backend is None where nothing can be
    timed here. Measured models are anchored to the original's latency now
    (``opts.measure``).
    """
    return Pricing().get(opts, source, progress)


def _priced(opts: PruneOptions, source: onnx.ModelProto, progress: Callable | None):
    """(raw cost model, backend or None, the static model it prices)."""
    from onnx_hwprune.cost_models.profile_db import ProfileDB
    from onnx_hwprune.frontends.onnx import with_static_inputs
    from onnx_hwprune.runtime.gpu_targets import shipped_cost_model
    from onnx_hwprune.runtime.targets import get_target

    target = get_target(opts.target, measurable=False)
    static = with_static_inputs(source)  # deployment latency: batch 1 where symbolic
    form = priced_form(opts)
    static = form(static) if form else static
    if target.cost_source == "shipped":
        return shipped_cost_model(target.name, static, progress=progress), None, static
    if opts.pinned_profile is not None:  # reproducible: reads that file only, times nothing
        from onnx_hwprune.runtime.pinned import pinned_cost_model

        return pinned_cost_model(opts.pinned_profile, static, target.name), None, static
    db = ProfileDB(opts.profile_db)
    try:
        if target.cost_source == "analytic":
            return _analytic(target.name, static, db), None, static
        return (*_measured(opts, static, db, progress), static)
    finally:
        db.close()


def priced_form(opts: PruneOptions) -> Callable | None:
    """The form a model is priced (and timed against its budget) in, as a function of
    the float model, or None for the model as it is. With ``--quantize int8`` that is its
    QDQ form: the plan is for the int8 kernels that will run (int8 staircases), and timed
    as float an int8 plan looked over-pruned to the closed loop."""
    if opts.quantize != "int8":
        return None
    from onnx_hwprune.runtime.quantize import qdq_for_planning

    return qdq_for_planning


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
    from onnx_hwprune.context_configs import context_models

    own = opts.quantize != "int8"  # the frontend's own output: not normalised a second time
    cost = build_cost_model(static, backend, opts.target, db, progress=progress, normalized=own,
                            context_models=context_models)  # fmt: skip
    counts = db.quality_counts(opts.target, backend.fingerprint_hash())
    if counts["noisy"] + counts["drifted"] + counts["retried"]:
        log.warning(
            "the profile holds %d noisy and %d drifted points (the next run that measures "
            "re-measures them) and %d retried (untrusted twice: used; `profile --verify` or "
            "--rebuild on a quieter machine) of %d; see README 'Measuring on a shared machine'",
            counts["noisy"], counts["drifted"], counts["retried"], sum(counts.values()),
        )  # fmt: skip
    return cost, backend


def _anchored_now(cost, backend, static: onnx.ModelProto):
    """A budget fraction is a fraction of what the original measures now (where it can
    be timed here: shipped, pinned and analytic models stay as they are)."""
    if backend is None:
        return cost
    from onnx_hwprune.cost_models.anchor import anchored

    now = measured_section(backend, {"original": static})["original"]["median_ms"]
    log.info("original measured %.3f ms now (profile: %.3f ms)", now, cost.predict())
    return anchored(cost, now)


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
        "followers_ms": getattr(cost, "followers_ms", 0.0),  # the mali model has none
        # the original as measured when planning (None: nothing measured here)
        "anchored_to_ms": getattr(cost, "measured_full_ms", None),
        "layers": layers,
    }


def measured_section(
    backend, models: Mapping[str, onnx.ModelProto], rounds: int = 7
) -> dict[str, Any]:
    """Median ms of each model, timed by the timing protocol in one interleaved run; every
    model after ``"original"`` also gets its paired ``ratio`` to it (per-round time over
    the original's in the same round, median) and that ratio's ``ratio_spread``."""
    return summarise_timings(measured_timings(backend, models, rounds))


def measured_timings(backend, models: Mapping[str, onnx.ModelProto], rounds: int = 7) -> dict:
    """The models timed by the timing protocol in one interleaved run: name -> Timing."""
    from onnx_hwprune.runtime.timing import TimingConfig, measure

    runnables = {name: backend.prepare(model) for name, model in models.items()}
    try:
        return measure({n: r.sample for n, r in runnables.items()}, TimingConfig(rounds=rounds))
    finally:
        for runnable in runnables.values():
            runnable.close()


def summarise_timings(timings: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`measured_section`'s dict from timings (one run's, or several pooled)."""
    from onnx_hwprune.runtime.timing import paired_ratio

    out = {name: {"median_ms": t.median_ms, "spread": t.spread} for name, t in timings.items()}
    base = timings.get("original")
    for name, timing in timings.items():
        if base is not None and name != "original":
            ratio, spread = paired_ratio(timing, base)
            out[name].update(ratio=ratio, ratio_spread=spread)
    return out
