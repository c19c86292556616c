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
from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph, verify_model
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes._infra import Module, Pass, PassContext, Sequential
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA, DataImportance
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.latency import SnapPass
from onnx_hwprune.passes.plan.methods import PlanRequest, get_method
from onnx_hwprune.passes.transform.remove_channels import RemoveChannels
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
    request = PlanRequest(opts.effective_ratio, opts.effective_budget, opts.plan)
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
    mod = ChannelGroupAnalysis()(Module(load_graph(model, opts.input_shapes)), ctx)
    if not mod.groups.prunable:
        reason = "no prunable channel group: " + _frozen_summary(mod)
        return PruneResult(None, None, {"options": opts.to_json(), "reason": reason}, reason)
    source = export_model(mod.graph)  # the names every later step refers to
    factory = _data.calibration(opts, source)
    cost = backend = None
    if opts.needs_cost_model():
        cost, backend = _latency.cost_model(opts, source, progress)
        ctx = replace(ctx, cost_model=cost, target=_target(opts))

    def attempt(ctx):
        planned = _plan(opts, mod, factory, ctx)
        pruned_mod = RemoveChannels()(planned, ctx)
        return planned, pruned_mod, export_model(pruned_mod.graph)

    rounds = None
    if _closes_loop(opts, backend):  # measure the result; re-plan while it misses
        from onnx_hwprune.closed_loop import close_loop

        attempted, rounds, cost = close_loop(attempt, ctx, opts.effective_budget, backend, source,
                                       mod.groups, mod.graph)  # fmt: skip
    else:
        attempted = attempt(ctx)
    planned, pruned_mod, out = attempted
    if opts.recover:
        out = _data.recover_model(opts, source, out, mod.groups, planned.plan, factory)
    verify_model(out)
    report = build_report(
        mod.groups,
        planned.plan,
        model_stats(mod.graph),
        model_stats(pruned_mod.graph),
        opts.to_json(),
    )
    _add_sections(report, opts, cost, backend, mod, planned.plan, source, out, rounds)
    if rounds is not None:
        report["latency"]["closed_loop"] = rounds
    return PruneResult(out, planned.plan, report)


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
    if get_method(opts.resolved_method()).needs_scores or opts.snap:
        if opts.criterion in DATA_CRITERIA:
            data_ctx = replace(ctx, activations=_data.activations(factory))
            mod = DataImportance(opts.criterion)(mod, data_ctx)
        else:
            mod = ChannelImportance(opts.criterion)(mod, ctx)
    return Sequential(planning_passes(opts), "plan")(mod, ctx)


def _last_measured(last: dict) -> dict:
    s0, s1 = last["spreads"]
    return {"original": {"median_ms": last["original_ms"], "spread": s0},
            "pruned": {"median_ms": last["measured_ms"], "spread": s1}}  # fmt: skip


def _add_sections(report, opts, cost, backend, mod, plan, source, out, rounds=None) -> None:
    if cost is not None:
        report["latency"] = {
            "predicted": _latency.predicted_section(cost, mod.graph, mod.groups, plan)
        }
        if opts.measure and backend is not None and rounds:  # the loop's last measurement
            report["latency"]["measured"] = _last_measured(rounds[-1])
        elif opts.measure and backend is not None:
            report["latency"]["measured"] = _latency.measured_section(
                backend, {"original": source, "pruned": out}
            )
    if opts.eval_data is not None:
        report["accuracy"] = _data.accuracy_section(opts, source, out)


def _frozen_summary(mod: Module) -> str:
    reasons = sorted({g.frozen_reasons[0] for g in mod.groups if g.frozen_reasons})
    return (
        "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        if reasons
        else "no conv/gemm layers"
    )
