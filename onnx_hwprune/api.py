"""The one-call API: ``onnx_hwprune.prune(model, ratio=0.3)``.

It is a thin composition of the passes (frontend -> analysis -> importance -> plan ->
removal -> export and verify); use the passes directly for anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph, verify_model
from onnx_hwprune.passes._infra import Module, Pass, PassContext, Sequential
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.baselines import PLANNERS
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform.remove_channels import RemoveChannels, UsePlan
from onnx_hwprune.report import build_report

__all__ = ["PruneResult", "prune", "planning_passes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """``model`` is None when nothing could be pruned (``reason`` says why)."""

    model: onnx.ModelProto | None
    plan: Plan | None
    report: dict[str, Any]
    reason: str = ""


def planning_passes(
    method: str, ratio: float, criterion: str, plan: Plan | None = None
) -> list[Pass]:
    """The passes between analysis and removal for the baseline methods."""
    if plan is not None:
        return [UsePlan(plan)]
    if method not in PLANNERS:
        raise ValueError(f"unknown method {method!r}")
    return [ChannelImportance(criterion), PLANNERS[method](ratio)]


def prune(
    model: ModelSource,
    *,
    ratio: float = 0.3,
    method: str = "uniform",
    criterion: str = "l1",
    plan: Plan | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    ctx: PassContext | None = None,
) -> PruneResult:
    """Prune ``model`` (a path, bytes or ModelProto; never modified) and verify the result.

    Raises:
        UserError: the model or an option is unusable.
    """
    ctx = ctx or PassContext.current()
    mod = ChannelGroupAnalysis()(Module(load_graph(model, input_shapes)), ctx)
    options = {"method": plan.method if plan else method, "ratio": ratio, "criterion": criterion}
    if not mod.groups.prunable:
        reason = "no prunable channel group: " + _frozen_summary(mod)
        return PruneResult(None, None, {"options": options, "reason": reason}, reason)
    before = model_stats(mod.graph)
    planned = Sequential(planning_passes(method, ratio, criterion, plan), "plan")(mod, ctx)
    pruned = RemoveChannels()(planned, ctx)
    out = export_model(pruned.graph)
    verify_model(out)
    report = build_report(mod.groups, planned.plan, before, model_stats(pruned.graph), options)
    return PruneResult(out, planned.plan, report)


def _frozen_summary(mod: Module) -> str:
    reasons = sorted({g.frozen_reasons[0] for g in mod.groups if g.frozen_reasons})
    return (
        "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
        if reasons
        else "no conv/gemm layers"
    )
