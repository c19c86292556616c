"""``--max-accuracy-drop P`` with ``--eval``: the fastest plan whose measured accuracy
stays within P points of the original's.

Accuracy falls as the latency budget tightens, so the budget (a fraction of the
original's predicted latency) is bisected between the requested one and 1.0: every trial
is a full pruning job (planning, removal, recovery where asked) whose top-1 on the
``--eval`` data is measured (for unlabelled data: the agreement with the original's
top-1). The profile database makes the trials after the first cheap. The fastest trial
within P points wins (measured latency where timed, else predicted); when none is, the
model is left unchanged and the report says why.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from onnx_hwprune.errors import UserError
from onnx_hwprune.options import DEFAULT_BUDGET, PruneOptions
from onnx_hwprune.passes.plan.budget import LatencyBudget

__all__ = ["prune_within_accuracy", "accuracy_drop", "guard_applies", "GUARD_COSINE"]

log = logging.getLogger(__name__)

STEPS = 5  # bisection steps after the requested budget: 1/32 of the interval


GUARD_COSINE = 0.95  # the default job's floor on output cosine and top-1 agreement


def accuracy_drop(report: dict[str, Any]) -> float:
    """Points of top-1 lost (or of disagreement with the original, for unlabelled data);
    without ``--eval``, points lost on the data at hand by the worst of output cosine,
    top-1 agreement and, for sequences, agreement on content positions (the guard)."""
    if "accuracy" not in report:
        from onnx_hwprune.runtime.fidelity import worst_agreement

        return 100.0 * (1.0 - worst_agreement(report.get("fidelity", {})))
    acc = report["accuracy"]
    if acc.get("top1") is not None:
        before, after = acc["top1"]
        return 100.0 * (before - after)
    return 100.0 * (1.0 - acc["agreement"])


def _speed(report: dict[str, Any]) -> float:
    latency = report.get("latency", {})
    if "measured" in latency:
        return latency["measured"]["pruned"]["median_ms"]
    return latency["predicted"]["network_ms"][1]


def prune_within_accuracy(model, opts: PruneOptions, **kwargs: Any):
    """Bisect the budget (see module doc); returns the chosen :class:`PruneResult`."""
    from onnx_hwprune.api import PruneResult, Shared, prune_once

    if opts.resolved_method() != "latency":
        raise UserError("--max-accuracy-drop needs the latency method")
    budget = opts.latency_budget or DEFAULT_BUDGET
    limit = opts.max_accuracy_drop
    if limit is None:  # the default job's guard (see guard_applies)
        limit = 100.0 * (1.0 - GUARD_COSINE)
    # Trials are compared on predicted latency; only the chosen plan is timed (below).
    base = replace(opts, max_accuracy_drop=None, guard=False, measure=False)
    trials: list[dict[str, Any]] = []
    shared = Shared()  # one profile and one sensitivity table for every trial

    def prune(model, opts, **kwargs):
        return prune_once(model, opts, shared=shared, **kwargs)

    def trial(fraction: float):
        result = prune(model, replace(base, latency_budget=LatencyBudget(fraction=fraction)),
                       **kwargs)  # fmt: skip
        drop = accuracy_drop(result.report) if result.model is not None else 0.0
        ok = result.model is not None and drop <= limit
        ms = _speed(result.report) if result.model is not None else None
        trials.append({"budget": fraction, "accuracy_drop": drop, "within": ok, "ms": ms})
        log.info("budget %.3f: accuracy drop %.2f points (%s)", fraction, drop, ok)
        return result, ok

    first = budget.fraction
    if first is None:  # a time budget: as a fraction of the original's prediction
        probe, _ = trial(1.0)
        first = min(1.0, budget.ms / probe.report["plan"]["meta"]["full_ms"])
    best, ok = trial(first)
    if best.model is None:  # nothing prunable or priceable: no budget changes that
        return best
    chosen, fraction = (best, first) if ok else (None, None)
    lo, hi = first, 1.0
    for _ in range(0 if ok else STEPS):
        mid = (lo + hi) / 2
        result, ok = trial(mid)
        if ok:
            chosen, fraction, hi = result, mid, mid
        else:
            lo = mid
    metric = "top-1 points (--eval)" if opts.eval_data is not None else "points of output agreement"
    search = {"max_accuracy_drop": limit, "metric": metric, "trials": trials,
              "requested": first, "chosen": fraction}  # fmt: skip
    if chosen is None:
        reason = (f"no budget between {first:.3f} and 1.0 kept the accuracy within "
                  f"{limit:.1f} {metric}")  # fmt: skip
        report = {"options": opts.to_json(), "reason": reason, "accuracy_search": search}
        if shared.synthetic is not None and shared.synthetic[2]:
            report["synthetic_data"] = shared.synthetic[2]  # what the checks ran on
        return PruneResult(None, None, report, reason)
    if opts.measure:
        final = replace(base, measure=True, latency_budget=LatencyBudget(fraction=fraction))
        chosen = prune(model, final, **kwargs)
    chosen.report["accuracy_search"] = search
    return chosen


def guard_applies(opts: PruneOptions) -> bool:
    """The default job is guarded: latency planning to the *default* budget without
    ``--eval``. The default budget is a suggestion, so when it moves the outputs too far
    (cosine under :data:`GUARD_COSINE` on the calibration data, or on synthetic inputs)
    the budget is relaxed by bisection and the summary says so. An explicit
    ``--latency-budget`` is a requirement: it is met and warned about, never relaxed."""
    if opts.guard is not None:
        return opts.guard
    return opts.resolved_method() == "latency" and opts.latency_budget is None
