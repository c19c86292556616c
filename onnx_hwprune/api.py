"""The one-call API: ``onnx_hwprune.prune(model, ...)``.

A thin composition of the passes and the runtime steps:

    load + analyse -> [cost model: profile what the DB lacks] -> scores (weights or data)
    -> plan (uniform | global | latency | a given plan) -> [snap] -> remove channels
    -> export -> [recover on calibration data] -> verify -> report
    (predicted latency with provenance, measured latency, accuracy)

Use the passes directly for anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import onnx

from onnx_hwprune import _data, _latency
from onnx_hwprune._dynamic import keep_model_dims, output_section
from onnx_hwprune.errors import NothingToPrice, UserError
from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph, verify_model
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes._infra import Module, Pass, PassContext, Sequential
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA, DataImportance
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.sensitivity import SensitivityAnalysis
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.latency import SnapPass
from onnx_hwprune.passes.plan.methods import PlanRequest, get_method
from onnx_hwprune.passes.transform.bias_compensation import (
    Compensation,
    apply_deltas,
    compensation_deltas,
)
from onnx_hwprune.passes.transform.remove_channels import RemoveChannels, kept_positions
from onnx_hwprune.report import build_report

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
        return prune_within_accuracy(model, opts, ctx=ctx, progress=progress)
    mod = ChannelGroupAnalysis()(Module(load_graph(model, opts.input_shapes)), ctx)
    if not mod.groups.prunable:
        reason = "no prunable channel group: " + _frozen_summary(mod)
        return PruneResult(None, None, {"options": opts.to_json(), "reason": reason}, reason)
    source = export_model(mod.graph)  # the names every later step refers to
    factory = _data.calibration(opts, source)
    try:
        cost, backend, latency_note = _cost_model(opts, source, progress)
    except NothingToPrice as exc:  # e.g. integer operators: no latency model, not bad input
        reason = f"no layer the {opts.target} cost model can price: {exc}"
        return PruneResult(None, None, {"options": opts.to_json(), "reason": reason}, reason)
    if opts.needs_cost_model():
        ctx = replace(ctx, cost_model=cost, target=_target(opts))
    if opts.uses_sensitivity():  # measured once, before any (re-)planning round
        mod = _sensitivity(opts, _scored(opts, mod, factory, ctx), factory, ctx)

    def attempt(ctx):
        planned = _plan(opts, mod, factory, ctx)
        comp = _compensation(opts, planned)
        pruned_graph = _remove(planned, ctx, comp)
        # at the planning shapes: what latency is measured on
        return planned, (comp, pruned_graph), export_model(pruned_graph)

    rounds = None
    if _closes_loop(opts, backend):  # measure the result; re-plan while it misses
        from onnx_hwprune.closed_loop import close_loop

        attempted, rounds, cost = close_loop(attempt, ctx, opts.effective_budget, backend, source,
                                             mod.groups, mod.graph)  # fmt: skip
    else:
        attempted = attempt(ctx)
    planned, (comp, pruned_graph), out = attempted
    written, kept = out, None
    if opts.input_shapes and not opts.fix_input_shape:
        kept = keep_model_dims(model, planned.plan, lambda m: export_model(_remove(m, ctx, comp)))
        written = kept.model or out
    recovery = None
    if opts.resolved_recover():
        rec_source, rec_groups = (
            (kept.source, kept.module.groups) if kept and kept.model else (source, mod.groups)
        )
        written, recovery = _data.recover_model(
            opts, rec_source, written, rec_groups, planned.plan, factory
        )
    pruned_float = None
    if opts.quantize:
        pruned_float, written = written, _data.quantize_model(opts, written, factory)
    verify_model(written)
    report = build_report(
        mod.groups,
        planned.plan,
        model_stats(mod.graph),
        model_stats(pruned_graph),
        opts.to_json(),
    )
    _add_sections(report, opts, cost, backend, mod, planned.plan, source, (out, written), rounds)
    if rounds is not None:
        report["latency"]["closed_loop"] = rounds
    if pruned_float is not None:
        _add_quantize_section(report, opts, source, pruned_float, written)
    if recovery is not None:
        report["recovery"] = recovery
    if mod.sensitivity is not None:
        report["sensitivity"] = mod.sensitivity.summary()
    report["output"] = output_section(written, kept)
    if latency_note and "predicted" not in report.get("latency", {}):
        report.setdefault("latency", {})["note"] = latency_note
    if comp is not None:
        report["bias_compensation"] = comp.summary()
    _add_fidelity(report, source, written, factory)
    return PruneResult(written, planned.plan, report)


def _cost_model(opts: PruneOptions, source: onnx.ModelProto, progress):
    """(cost model, backend, note). Planning by latency needs the cost model. The
    hardware-blind methods are timed too (original and result, interleaved: cheap), and
    predicted where the target's model needs no profiling (mali, shipped profiles), so
    their summaries compare with the latency planner's; where a model cannot be timed
    (a symbolic input), the note says why and pruning goes on."""
    if opts.needs_cost_model():
        return (*_latency.cost_model(opts, source, progress), "")
    if not opts.measure:
        return None, None, ""
    try:
        return (*_latency.baseline_latency(opts, source), _latency.BASELINE_NOTE)
    except UserError as exc:
        return None, None, f"latency not predicted or measured: {exc}"


def _add_fidelity(report: dict, source, written, factory) -> None:
    from onnx_hwprune.runtime.fidelity import fidelity_section

    section = fidelity_section(source, written, factory)
    if section is not None:
        report["fidelity"] = section
        if "warning" in section:
            log.warning("%s", section["warning"])


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
    stream = _data.tensor_stream(factory, ctx.get("plan.sensitivity_samples"))
    return SensitivityAnalysis()(mod, replace(ctx, tensor_stream=stream))


def _last_measured(last: dict) -> dict:
    s0, s1 = last["spreads"]
    return {"original": {"median_ms": last["original_ms"], "spread": s0},
            "pruned": {"median_ms": last["measured_ms"], "spread": s1}}  # fmt: skip


def _add_sections(report, opts, cost, backend, mod, plan, source, models, rounds=None) -> None:
    """Latency predicted and measured (``models``: the model as planned and as written)."""
    (out, written), latency = models, {}
    if cost is not None:
        latency["predicted"] = _latency.predicted_section(cost, mod.graph, mod.groups, plan)
    if opts.measure and backend is not None and rounds:  # the loop's last measurement
        latency["measured"] = _last_measured(rounds[-1])
    elif opts.measure and backend is not None:
        latency["measured"] = _latency.measured_section(
            backend, {"original": source, "pruned": out}
        )
    if latency:
        report["latency"] = latency
    if opts.eval_data is not None:
        report["accuracy"] = _data.accuracy_section(opts, source, written)


def _add_quantize_section(report, opts, source, pruned_float, out) -> None:
    from onnx_hwprune.runtime.quantize import quantization_summary

    report["quantize"] = quantization_summary(opts.quantize)
    if opts.eval_data is not None:
        report["accuracy"] = _data.accuracy_section(opts, source, out, pruned_float)


def _frozen_summary(mod: Module) -> str:
    reasons = sorted({g.frozen_reasons[0] for g in mod.groups if g.frozen_reasons})
    return (
        "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        if reasons
        else "no conv/gemm layers"
    )
