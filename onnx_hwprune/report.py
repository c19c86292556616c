"""The pruning report: JSON for machines, a short table for people. Deterministic (no
timestamps, no absolute paths beyond what the user passed)."""

from __future__ import annotations

from typing import Any

from onnx_hwprune._summary import budget_lines, guard_lines, measured_ratio, provenance_lines
from onnx_hwprune._version import __version__
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.analysis.stats import ModelStats
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["build_report", "format_summary", "REPORT_SCHEMA"]

REPORT_SCHEMA = "onnx-hwprune.report/1"


def _layers(before: ModelStats, after: ModelStats) -> list[dict[str, Any]]:
    after_by_node = after.by_node()
    rows = []
    for layer in before.layers:
        new = after_by_node.get(layer.node, layer)
        rows.append(
            {
                "node": layer.node,
                "op": layer.op,
                "in_channels": [layer.in_channels, new.in_channels],
                "out_channels": [layer.out_channels, new.out_channels],
                "params": [layer.params, new.params],
                "macs": [layer.macs, new.macs],
            }
        )
    return rows


def build_report(
    groups: ChannelGroups,
    plan: Plan,
    before: ModelStats,
    after: ModelStats,
    options: dict[str, Any],
) -> dict[str, Any]:
    pruned = plan.pruned_groups()
    return {
        "schema": REPORT_SCHEMA,
        "tool": f"onnx-hwprune {__version__}",
        "options": options,
        "network": {
            "params": [before.params, after.params],
            "macs": [before.macs, after.macs],
            "flops": [before.flops, after.flops],
        },
        "groups": {
            "total": len(groups),
            "prunable": len(groups.prunable),
            "pruned": len(pruned),
            "frozen": [
                {"name": g.name, "size": g.size, "reasons": list(g.frozen_reasons)}
                for g in groups
                if g.frozen
            ],
        },
        "layers": _layers(before, after),
        "plan": plan.to_json(),
    }


def _ratio(pair: list[int]) -> str:
    before, after = pair
    return (
        f"{before:,} -> {after:,} ({100.0 * (1 - after / before):.1f}% less)" if before else "n/a"
    )


_SLOWER_WARNING = (
    "WARNING: the pruned model measured SLOWER than the original on this host; re-profile "
    "on a quiet machine (--threads 1) or use --snap"
)


def _latency_lines(report: dict[str, Any]) -> list[str]:
    latency = report.get("latency")
    if not latency:
        return []
    lines = [latency["note"]] if "note" in latency else []
    if "predicted" in latency:
        before, after = latency["predicted"]["network_ms"]
        target, source = latency["predicted"]["target"], latency["predicted"]["source"]
        lines += [f"latency on {target}, predicted: {before:.3f} ms -> {after:.3f} ms "
                  f"({before / after:.2f}x; {source})"]  # fmt: skip
        lines += provenance_lines(latency["predicted"].get("provenance"))
    measured = latency.get("measured")
    if measured:
        m0, m1 = measured["original"], measured["pruned"]
        ratio = measured_ratio(measured)
        lines.append(
            f"latency measured here:  {m0['median_ms']:.3f} ms{_spread(m0)}"
            f" -> {m1['median_ms']:.3f} ms{_spread(m1)} ({1 / ratio:.2f}x{_paired(m1)})"
        )
        if ratio > 1:
            # The one outcome this tool exists to prevent: say it, never hide it.
            lines.append(_SLOWER_WARNING)
        lines += _spread_warning(measured)
    lines += _loop_lines(latency.get("closed_loop") or [])
    return lines + budget_lines(report)


def _spread(timing: dict[str, Any]) -> str:
    spread = timing.get("spread")
    return "" if spread is None else f" (spread {100 * spread:.0f}%)"


def _paired(timing: dict[str, Any]) -> str:
    spread = timing.get("ratio_spread")
    return "" if spread is None else f" paired per round, spread {100 * spread:.0f}%"


def _spread_warning(measured: dict[str, Any]) -> list[str]:
    """An implausible measurement is said, not passed on silently. The speedup is the
    paired per-round ratio where there is one: its spread is what makes it uncertain."""
    worst, what = measured["pruned"].get("ratio_spread"), "the paired per-round ratio"
    if worst is None:
        worst, what = max(m.get("spread", 0.0) for m in measured.values()), "timings"
    if worst <= 0.10:
        return []
    return [
        f"WARNING: {what} spread {100 * worst:.0f}% of the median (IQR): the machine was "
        "noisy, the measured ratio is uncertain; re-measure on a quieter machine"
    ]


def _loop_lines(rounds: list[dict[str, Any]]) -> list[str]:
    """One line per closed-loop round: measured against the budget."""
    from onnx_hwprune.closed_loop import TOLERANCE, UNDERSHOOT

    lines = []
    for r in rounds:
        verdict = "missed" if r["miss"] > TOLERANCE else "met"
        if r["miss"] < -UNDERSHOOT:
            verdict = "met, but pruned more than the budget needed"
        if r.get("kept") and len(rounds) > 1:
            verdict += "; this plan is kept"
        lines.append(
            f"closed loop round {r['round']}: measured {r['measured_ms']:.3f} ms "
            f"(predicted {r['predicted_ms']:.3f}) vs budget {r['budget_ms']:.3f} ms: "
            f"{100 * r['miss']:+.1f}%, {verdict}" + (f" ({r['note']})" if r.get("note") else "")
        )
    return lines


def _accuracy_lines(report: dict[str, Any]) -> list[str]:
    accuracy = report.get("accuracy")
    if not accuracy:
        return []
    lines = []
    if "top1" in accuracy:
        top0, top1 = accuracy["top1"]
        lines.append(
            f"top-1 on {accuracy['samples']} samples: {100 * top0:.2f}% -> {100 * top1:.2f}%"
        )
    lines.append(f"agreement with the original: {100 * accuracy['agreement']:.2f}%")
    return lines


def _planner_lines(report: dict[str, Any]) -> list[str]:
    """The exact planner's outcome: solver status and gap, and the greedy's loss beside it."""
    meta = report.get("plan", {}).get("meta", {})
    if meta.get("planner") != "exact":
        return []
    gap = meta.get("gap")
    gap_text = f", gap {gap:.2%}" if isinstance(gap, float) and gap == gap else ""
    lost = "measured refit error" if "sensitivity" in report else "importance lost"
    return [
        f"planner: exact, {meta.get('status')}{gap_text}; {lost} "
        f"{meta.get('importance_loss', float('nan')):.2f} (greedy: {meta['greedy_loss']:.2f})"
    ]


def _sensitivity_lines(report: dict[str, Any]) -> list[str]:
    s = report.get("sensitivity")
    if not s:
        return []
    return [
        f"sensitivity: refit error measured for {s['groups_measured']} groups on "
        f"{s['samples']} samples ({len(s['groups_fallback'])} priced by importance), "
        f"{s['seconds']:.1f} s"
    ]


def format_summary(report: dict[str, Any], max_rows: int = 12) -> str:
    net, groups = report["network"], report["groups"]
    lines = [
        f"groups: {groups['total']} ({groups['prunable']} prunable, {groups['pruned']} pruned, "
        f"{len(groups['frozen'])} frozen)",
        f"params: {_ratio(net['params'])}",
        f"MACs:   {_ratio(net['macs'])}",
        *_latency_lines(report),
        *_planner_lines(report),
        *_sensitivity_lines(report),
        *_accuracy_lines(report),
        *guard_lines(report),
        "",
        f"{'layer':40s} {'op':8s} {'in':>11s} {'out':>11s}",
    ]
    changed = [
        r
        for r in report["layers"]
        if r["in_channels"][0] != r["in_channels"][1]
        or r["out_channels"][0] != r["out_channels"][1]
    ]
    for row in changed[:max_rows]:
        lines.append(
            f"{row['node'][:40]:40s} {row['op']:8s} "
            f"{row['in_channels'][0]:>5d}->{row['in_channels'][1]:<5d}"
            f"{row['out_channels'][0]:>5d}->{row['out_channels'][1]:<5d}"
        )
    if len(changed) > max_rows:
        lines.append(f"... {len(changed) - max_rows} more layers changed (see --report)")
    return "\n".join(lines)
