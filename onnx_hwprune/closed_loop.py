"""The closed loop: measure the pruned model, and re-plan while it misses the budget.

After the first plan is applied, the pruned model is timed on the target interleaved with
the original (one run, so load hits both alike). When it misses the budget by more than
:data:`TOLERANCE`, the cost model is refit through both measurements
(:func:`~onnx_hwprune.cost_models.anchor.corrected`) and the job plans again, at most
:data:`MAX_ROUNDS` times. A fractional budget is judged against the original measured in
the same run, a budget in ms as given. Every round is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from onnx_hwprune.cost_models.anchor import corrected
from onnx_hwprune.passes.plan._channels import ChannelMap

__all__ = ["MAX_ROUNDS", "TOLERANCE", "close_loop"]

log = logging.getLogger(__name__)

MAX_ROUNDS = 3
TOLERANCE = 0.03

Attempt = Callable[[Any], tuple[Any, Any, Any]]
"""``attempt(ctx) -> (planned module, pruned module, pruned model)``: plan on
``ctx.cost_model`` and apply the plan."""


def close_loop(attempt: Attempt, ctx, budget, backend, source, groups, graph):
    """Run ``attempt`` and re-plan through measurements; returns (attempt's result, rounds,
    the cost model of the last plan)."""
    from onnx_hwprune._latency import measured_section

    result = attempt(ctx)
    rounds: list[dict] = []
    for index in range(MAX_ROUNDS + 1):
        planned, out = result[0], result[-1]
        got = measured_section(backend, {"original": source, "pruned": out})
        orig, pruned = got["original"]["median_ms"], got["pruned"]["median_ms"]
        budget_ms = budget.resolve(orig)
        channels = _channels(ctx.cost_model, graph, groups, planned.plan)
        rounds.append(_round(index, ctx.cost_model.predict(channels), orig, pruned, budget_ms))
        rounds[-1]["spreads"] = [got["original"]["spread"], got["pruned"]["spread"]]
        log.info("closed loop round %d: %s", index, rounds[-1])
        if pruned <= budget_ms * (1 + TOLERANCE) or index == MAX_ROUNDS:
            break
        cost = corrected(ctx.cost_model, channels, orig, pruned)
        ctx = replace(ctx, cost_model=cost)
        previous = planned.plan.groups
        result = attempt(ctx)
        if result[0].plan.groups == previous:  # the corrected model changed nothing
            rounds[-1]["note"] = "re-plan gave the same plan; stopped"
            break
    return result, rounds, ctx.cost_model


def _channels(cost, graph, groups, plan) -> dict:
    cmap = ChannelMap(graph, groups, [e.node for e in cost.layers])
    return cmap.all_counts({n: gp.size - len(gp.keep) for n, gp in plan.groups.items()})


def _round(index: int, predicted: float, orig: float, pruned: float, budget_ms: float) -> dict:
    return {
        "round": index,
        "predicted_ms": predicted,
        "measured_ms": pruned,
        "original_ms": orig,
        "budget_ms": budget_ms,
        "miss": pruned / budget_ms - 1,
    }
