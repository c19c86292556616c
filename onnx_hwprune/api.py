"""The one-call API: ``onnx_hwprune.prune(model, ...)``.

A thin composition of the passes and the runtime steps, as a flat list of named steps
(:data:`PIPELINE`):

    analyse -> calibrate -> price (cost model: profile what the DB lacks) -> [synthesise]
    -> plan and remove (scores, uniform | global | latency | a given plan, [snap], removal,
       [closed loop]) -> keep dims -> [recover] -> [quantize] -> verify
    -> report (predicted latency with provenance, measured latency, accuracy)

Use the passes directly for anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from onnx_hwprune import _data, _latency
from onnx_hwprune._dynamic import keep_model_dims
from onnx_hwprune._job_report import job_report
from onnx_hwprune._synthetic import synthetic_calibration
from onnx_hwprune.errors import NothingToPrice, UserError
from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph, verify_model
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes._infra import Module, Pass, PassContext, Sequential
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA, DataImportance
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.sensitivity import SensitivityAnalysis
from onnx_hwprune.passes.plan.latency import SnapPass
from onnx_hwprune.passes.plan.methods import PlanRequest, get_method
from onnx_hwprune.passes.transform.bias_compensation import (
    Compensation,
    apply_deltas,
    compensation_deltas,
)
from onnx_hwprune.passes.transform.remove_channels import RemoveChannels, kept_positions

__all__ = ["PruneResult", "prune", "planning_passes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """``model`` is None when nothing could be pruned (``reason`` says why)."""

    model: onnx.ModelProto | None
    plan: Any
    report: dict[str, Any]
    reason: str = ""


def planning_passes(opts: PruneOptions) -> list[Pass]:
    """The passes from channel scores to a plan, for the resolved method."""
    method = get_method(opts.resolved_method())
    request = PlanRequest(
        opts.effective_ratio, opts.effective_budget, opts.plan, opts.planner, opts.memory_budget
    )
    return [method.make(request)] + ([SnapPass()] if opts.snap else [])


def prune(
    model: ModelSource,
    options: PruneOptions | None = None,
    *,
    ctx: PassContext | None = None,
    progress: Callable | None = None,
    **option_values: Any,
) -> PruneResult:
    """Prune ``model`` (a path, bytes or ModelProto; never modified) and verify the result.

    Options come as a :class:`PruneOptions` or as its fields by keyword
    (``prune(m, ratio=0.3, method="global")``).

    Raises:
        UserError: the model, the data or an option is unusable.
    """
    opts = replace(options or PruneOptions(), **option_values)
    opts.validate()
    ctx = ctx or PassContext.current()
    from onnx_hwprune._accuracy_search import guard_applies, prune_within_accuracy

    if (opts.max_accuracy_drop is not None and opts.eval_data is not None) or guard_applies(opts):
        result = prune_within_accuracy(model, opts, ctx=ctx, progress=progress)
    else:
        result = prune_once(model, opts, ctx=ctx, progress=progress)
    warning = result.report.get("fidelity", {}).get("warning")
    if warning:  # once per job: the accuracy search's trials do not repeat it
        log.warning("%s", warning)
    return result


def prune_once(
    model: ModelSource,
    opts: PruneOptions,
    *,
    ctx: PassContext,
    progress: Callable | None = None,
    shared: Shared | None = None,
) -> PruneResult:
    """One pruning job at ``opts``' budget, without the accuracy search: the steps of
    :data:`PIPELINE` in order, then the report from what they produced. ``shared``
    is what the jobs of a search share: profiling and sensitivity happen once."""
    job = _Job(model, opts, ctx, progress, shared or Shared())
    for name, step in PIPELINE:
        log.debug("prune step: %s", name)
        job = step(job)
        if job.reason:  # nothing to prune or to price: not bad input, the model stays
            report = {"options": opts.to_json(), "reason": job.reason}
            return PruneResult(None, None, report, job.reason)
    return PruneResult(job.written, job.planned.plan, job_report(job))


@dataclass
class Shared:
    """What the jobs of one accuracy search share, built by the first job that needs it:
    they prune the same model for the same target on the same data, so the cost model
    (profiling) and the measured sensitivity table are the same for every trial (each
    trial rebuilt them: on PP-OCRv5 rec the table alone took ~65 s a trial)."""

    pricing: _latency.Pricing = field(default_factory=_latency.Pricing)
    sensitivity: Any = None  # passes.analysis.sensitivity.SensitivityTable
    synthetic: tuple | None = None  # (fit, check, info): _synthetic.synthetic_calibration


@dataclass(frozen=True)
class _Job:
    """What the steps of one job have produced so far. Each step returns a new one."""

    model: ModelSource
    opts: PruneOptions
    ctx: PassContext
    progress: Callable | None
    shared: Shared
    reason: str = ""  # set by a step that finds nothing to do: the pipeline stops
    mod: Module | None = None  # the analysed original (graph + channel groups)
    source: onnx.ModelProto | None = None  # its export: the names later steps refer to
    factory: Any = None  # calibration batches, or None
    synthetic: dict | None = None  # what the data synthesis did, or why it did not run
    held_back: dict | None = None  # synthesised inputs kept from recovery, for the checks
    cost: Any = None  # the cost model, its backend (None: not timed), and a note
    backend: Any = None
    latency_note: str = ""
    planned: Module | None = None  # the original with its plan
    comp: Compensation | None = None
    pruned_graph: Any = None
    out: onnx.ModelProto | None = None  # the pruned model, at the planning shapes
    rounds: list | None = None  # the closed loop's measurements
    kept: Any = None  # the model at the user's dynamic dims (_dynamic.keep_model_dims)
    written: onnx.ModelProto | None = None  # what will be written
    recovery: dict | None = None
    pruned_float: onnx.ModelProto | None = None  # before quantization

    def but(self, **changes: Any) -> _Job:
        return replace(self, **changes)


def _analyse(job: _Job) -> _Job:
    mod = ChannelGroupAnalysis()(Module(load_graph(job.model, job.opts.input_shapes)), job.ctx)
    if not mod.groups.prunable:
        return job.but(reason="no prunable channel group: " + _frozen_summary(mod))
    return job.but(mod=mod, source=export_model(mod.graph))


def _calibrate(job: _Job) -> _Job:
    """Bad calibration data fails here, before any profiling or planning."""
    return job.but(factory=_data.calibration(job.opts, job.source))


def _synthesise(job: _Job) -> _Job:
    """No data given: inputs synthesised from the model's BatchNorm statistics become the
    calibration data, a third held back for the checks (once per search: the trials reuse
    them). After pricing, so that a bad profile database fails before this work."""
    opts = job.opts
    if job.shared.synthetic is None:  # (None, None, {}) with data given or synthesis off
        job.shared.synthetic = synthetic_calibration(opts, job.source)
    fit, check, info = job.shared.synthetic
    if fit is None:
        return job.but(synthetic=info)
    opts = replace(opts, calib=fit)
    return job.but(opts=opts, synthetic=info, held_back=check,
                   factory=_data.calibration(opts, job.source))  # fmt: skip


def _price(job: _Job) -> _Job:
    opts = job.opts
    try:
        cost, backend, note = _cost_model(opts, job.source, job.progress, job.shared.pricing)
    except NothingToPrice as exc:  # e.g. integer operators: no latency model, not bad input
        return job.but(reason=f"no layer the {opts.target} cost model can price: {exc}")
    ctx = job.ctx
    if opts.needs_cost_model():
        ctx = replace(ctx, cost_model=cost, target=_target(opts))
    return job.but(cost=cost, backend=backend, latency_note=note, ctx=ctx)


def _sense(job: _Job) -> _Job:
    """Measured sensitivity (``--calib``, budget planners): the refit error per group and
    kept count, measured once, before any (re-)planning round of the closed loop."""
    if not job.opts.uses_sensitivity():
        return job
    scored = _scored(job.opts, job.mod, job.factory, job.ctx)
    if job.shared.sensitivity is None:
        job.shared.sensitivity = _sensitivity(job.opts, scored, job.factory, job.ctx).sensitivity
    table = job.shared.sensitivity
    # the planner removes channels in the order the table priced (greedy or the criterion)
    return job.but(mod=scored.replace(sensitivity=table, scores={**scored.scores, **table.scores}))


def _plan_and_remove(job: _Job) -> _Job:
    """Scores, plan, removal; with a budget measured on the target, re-planned while the
    measured result misses it (``closed_loop.py``)."""
    opts, mod, factory = job.opts, job.mod, job.factory

    def attempt(ctx: PassContext):
        planned = _plan(opts, mod, factory, ctx)
        comp = _compensation(opts, planned)
        pruned_graph = _remove(planned, ctx, comp)
        # at the planning shapes: what latency is measured on
        return planned, (comp, pruned_graph), export_model(pruned_graph)

    rounds, cost = None, job.cost
    if _closes_loop(opts, job.backend):
        from onnx_hwprune.closed_loop import close_loop

        measured = (job.backend, job.source, mod.groups, mod.graph)
        attempted, rounds, cost = close_loop(
            attempt, job.ctx, opts.effective_budget, *measured, form=_latency.priced_form(opts)
        )
    else:
        attempted = attempt(job.ctx)
    planned, (comp, pruned_graph), out = attempted
    return job.but(planned=planned, comp=comp, pruned_graph=pruned_graph, out=out,
                   written=out, rounds=rounds, cost=cost)  # fmt: skip


def _keep_dims(job: _Job) -> _Job:
    """Re-apply the plan at the model's own dynamic dims when shapes were only given to plan."""
    if not job.opts.input_shapes or job.opts.fix_input_shape:
        return job

    def remove(planned: Module) -> onnx.ModelProto:
        return export_model(_remove(planned, job.ctx, job.comp))

    kept = keep_model_dims(job.model, job.planned.plan, remove)
    return job.but(kept=kept, written=kept.model or job.written)


def _recover(job: _Job) -> _Job:
    if not job.opts.resolved_recover():
        return job
    kept, factory = job.kept, job.factory
    source, groups = (
        (kept.source, kept.module.groups) if kept and kept.model else (job.source, job.mod.groups)
    )
    if source is not job.source:
        # Batches sized for the model recovery runs on: --input-shape x:1,... fixes the batch
        # at 1 for planning only, and distill trained on batches of one sample (noisy Adam
        # steps that undid lsq on PP-OCRv5 cls: 77% -> 51% agreement).
        factory = _data.calibration(job.opts, source)
    written, section = _data.recover_model(
        job.opts, source, job.written, groups, job.planned.plan, factory
    )
    return job.but(written=written, recovery=section)


def _quantize(job: _Job) -> _Job:
    if not job.opts.quantize:
        return job
    quantized = _data.quantize_model(job.opts, job.written, job.factory)
    return job.but(pruned_float=job.written, written=quantized)


def _verify(job: _Job) -> _Job:
    verify_model(job.written)  # nothing invalid is ever returned, let alone written
    return job


PIPELINE: tuple[tuple[str, Callable[[_Job], _Job]], ...] = (
    ("analyse", _analyse),  # load, normalise, channel groups (stops: nothing prunable)
    ("calibrate", _calibrate),  # calibration batches, checked now
    ("price", _price),  # the target's cost model, or baseline timing (stops: nothing priced)
    ("synthesise", _synthesise),  # [no data] calibration inputs from BatchNorm statistics
    ("sense", _sense),  # [--calib] scores and the measured refit error per group and count
    ("plan and remove", _plan_and_remove),  # scores, plan, [snap], removal, [closed loop]
    ("keep dims", _keep_dims),  # the user's dynamic dims back
    ("recover", _recover),  # RecoverPass / distill / auto on calibration data
    ("quantize", _quantize),  # int8 after recovery
    ("verify", _verify),  # checker + strict shape inference
)
"""One pruning job, step by step; each step reads the job so far and returns a new one."""


def _cost_model(opts: PruneOptions, source: onnx.ModelProto, progress, pricing):
    """(cost model, backend, note). Planning by latency needs the cost model. The
    hardware-blind methods are timed too (original and result, interleaved: cheap), and
    predicted where the target's model needs no profiling (mali, shipped profiles), so
    their summaries compare with the latency planner's; where a model cannot be timed
    (a symbolic input), the note says why and pruning goes on."""
    if opts.needs_cost_model():
        return (*pricing.get(opts, source, progress), "")
    if not opts.measure:
        return None, None, ""
    try:
        return (*_latency.baseline_latency(opts, source), _latency.BASELINE_NOTE)
    except UserError as exc:
        return None, None, f"latency not predicted or measured: {exc}"


def _compensation(opts: PruneOptions, planned: Module) -> Compensation | None:
    if not opts.effective_bias_compensation or not planned.plan.pruned_groups():
        return None
    return compensation_deltas(planned.graph, planned.groups, planned.plan)


def _remove(planned: Module, ctx: PassContext, comp: Compensation | None):
    """The pruned graph, with the removed channels' expected contribution in the biases."""
    graph = RemoveChannels()(planned, ctx).graph
    if comp is not None:
        apply_deltas(graph, comp, kept_positions(planned.groups, planned.plan))
    return graph


def _closes_loop(opts: PruneOptions, backend) -> bool:
    """A latency budget, measured on the target: plans are checked against the target."""
    return (
        backend is not None and opts.measure and opts.method_record().drive == "budget"
        and opts.plan is None
    )  # fmt: skip


def _target(opts: PruneOptions):
    """The target record: its constraints (``plan.channel_multiple``) apply unless the
    context's config sets them explicitly."""
    from onnx_hwprune.runtime.targets import get_target

    return get_target(opts.target, measurable=False)


def _plan(opts: PruneOptions, mod: Module, factory, ctx: PassContext) -> Module:
    if mod.scores is None and (get_method(opts.resolved_method()).needs_scores or opts.snap):
        mod = _scored(opts, mod, factory, ctx)
    return Sequential(planning_passes(opts), "plan")(mod, ctx)


def _scored(opts: PruneOptions, mod: Module, factory, ctx: PassContext) -> Module:
    if opts.criterion in DATA_CRITERIA:
        data_ctx = replace(ctx, activations=_data.activations(factory))
        return DataImportance(opts.criterion)(mod, data_ctx)
    return ChannelImportance(opts.criterion)(mod, ctx)


def _sensitivity(opts: PruneOptions, mod: Module, factory, ctx: PassContext) -> Module:
    """Measured refit error per group and count: the budget planners' objective."""
    tensors = _data.tensors(factory, ctx.get("plan.sensitivity_samples"))
    return SensitivityAnalysis()(mod, replace(ctx, tensors=tensors))


def _frozen_summary(mod: Module) -> str:
    reasons = sorted({g.frozen_reasons[0] for g in mod.groups if g.frozen_reasons})
    return (
        "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        if reasons
        else "no conv/gemm layers"
    )
