"""Summary lines that keep the report honest (issue 11): where the predicted numbers come
from, whether the budget was met as measured, what the written file accepts, and how far
the pruned model's outputs moved. Each reads one section of the JSON report."""

from __future__ import annotations

from typing import Any

__all__ = ["provenance_lines", "budget_lines", "guard_lines", "recovery_lines", "MISS_TOLERANCE"]

MISS_TOLERANCE = 0.05  # a measured result more than 5% over the budget is called a miss
AGREEMENT_FLOOR = 0.9  # below this top-1 agreement (or cosine) the summary warns loudly


def provenance_lines(provenance: list[dict[str, int] | None] | None) -> list[str]:
    """``predicted from 9 layer points: 4 measured, 0 interpolated, 5 estimated``."""
    if not provenance or provenance[-1] is None:
        return []
    after = provenance[-1]
    total = sum(after.values())
    parts = ", ".join(f"{after.get(k, 0)} {k}" for k in ("measured", "interpolated", "estimated"))
    line = f"  predicted from {total} layer points after pruning: {parts}"
    if after.get("estimated", 0) and after.get("measured", 0) + after.get("interpolated", 0):
        line += " (estimated = not measured on the target)"
    return [line]


def measured_ratio(measured: dict[str, Any]) -> float:
    """pruned/original latency of a report's ``latency.measured``: the paired per-round
    ratio where both were timed in one run, else the ratio of their medians."""
    m0, m1 = measured["original"], measured["pruned"]
    return m1.get("ratio", m1["median_ms"] / m0["median_ms"])


def budget_lines(report: dict[str, Any]) -> list[str]:
    """Budget not reachable (predicted), or missed by more than 5% (measured)."""
    meta = report.get("plan", {}).get("meta", {})
    budget, predicted, full = meta.get("budget_ms"), meta.get("predicted_ms"), meta.get("full_ms")
    if budget is None:
        return []
    lines = []
    if predicted is not None and predicted > budget * (1 + 1e-6):
        lines.append(
            f"WARNING: budget {budget:.3f} ms not reachable within the per-group floor "
            f"(plan.max_group_ratio): best predicted {predicted:.3f} ms"
        )
    measured = report.get("latency", {}).get("measured")
    if measured and full:
        m0 = measured["original"]["median_ms"]
        m1 = m0 * measured_ratio(measured)
        target = budget / full * m0  # the budget as a share of the original, as measured
        if m1 > target * (1 + MISS_TOLERANCE):
            lines.append(
                f"WARNING: measured {m1:.3f} ms misses the budget ({budget / full:.2f} of the "
                f"measured original = {target:.3f} ms) by {100 * (m1 / target - 1):.0f}%"
            )
    return lines


def quantize_lines(report: dict[str, Any]) -> list[str]:
    """The quantization, and what it bought where the job timed it: the float original,
    the pruned float model and the pruned int8 model, paired per round."""
    quant = report.get("quantize")
    if not quant:
        return []
    lines = [f"quantized: {quant['scheme']} ({quant['tool']}, {quant['format']}, "
             f"weights {quant['weights']}, activations {quant['activations']})"]  # fmt: skip
    timed = quant.get("measured")
    if timed:
        orig, pf, q8 = (timed[k] for k in ("original", "pruned_float", "pruned_int8"))
        lines.append(
            f"measured here: float original {orig['median_ms']:.3f} ms, pruned float "
            f"{pf['median_ms']:.3f} ms ({1 / pf['ratio']:.2f}x), pruned int8 "
            f"{q8['median_ms']:.3f} ms ({1 / q8['ratio']:.2f}x; paired per round, spreads "
            f"{100 * pf['ratio_spread']:.0f}% and {100 * q8['ratio_spread']:.0f}%)"
        )
        if q8["ratio"] > pf["ratio"] * (1 + MISS_TOLERANCE):  # beyond timing noise
            lines.append(
                "WARNING: quantizing made the pruned model SLOWER on this host: onnxruntime "
                "keeps ops it has no int8 kernel for in float between a dequantize and a "
                "quantize; ship the pruned float model (drop --quantize)"
            )
    return lines


def guard_lines(report: dict[str, Any]) -> list[str]:
    return (
        quantize_lines(report)
        + _synthetic_lines(report)
        + _search_lines(report)
        + recovery_lines(report)
        + _fidelity_lines(report)
        + _compensation_lines(report)
        + _output_lines(report)
    )


def recovery_lines(report: dict[str, Any]) -> list[str]:
    """Which recovery ran, what it cost and bought, and what it threw away."""
    rec = report.get("recovery")
    if not rec:
        return []
    if "tried" in rec:  # --recover auto
        tried = ", ".join(f"{t['method']} {100 * t['agreement']:.1f}%" for t in rec["tried"])
        return [f"recovery: auto chose {rec['method']} (agreement on {rec['held_samples']} "
                f"held-back samples: {tried})"]  # fmt: skip
    line = f"recovery: {rec['method']} in {rec.get('seconds', 0):.0f} s"
    if rec["method"] == "distill" and "steps" in rec:
        line += f" ({rec['steps']} steps after lsq's {rec.get('lsq_seconds', 0):.0f} s)"
    before, after = rec.get("agreement_on_calibration", [None, None])
    if before is not None:
        line += f", agreement on the calibration data {100 * before:.1f}% -> {100 * after:.1f}%"
    lines = [line]
    if "discarded" in rec:
        lines.append(f"  distillation discarded, the lsq model kept: {rec['discarded']}")
    return lines


def _synthetic_lines(report: dict[str, Any]) -> list[str]:
    synth = report.get("synthetic_data")
    if not synth:
        return []
    if not synth.get("used"):
        return [f"no data given; inputs not synthesised ({synth['reason']}): checks use noise"]
    took = "from the cache" if synth.get("cached") else f"{synth['seconds']:.1f} s"
    return [
        f"no data given: {synth['samples']} inputs synthesised from the model's BatchNorm "
        f"statistics ({took}): "
        f"{synth['samples'] - synth['held_back']} served as calibration data (sensitivity, "
        f"recovery), {synth['held_back']} held back for the checks"
    ]


def _search_lines(report: dict[str, Any]) -> list[str]:
    search = report.get("accuracy_search")
    if not search or search.get("chosen") is None:
        return []
    asked, chosen = search["requested"], search["chosen"]
    limit, metric = search["max_accuracy_drop"], search["metric"]
    if chosen == asked:
        return [f"accuracy check: budget {asked:.3f} kept within {limit:.1f} {metric}"]
    return [
        f"WARNING: budget relaxed from {asked:.3f} to {chosen:.3f} of the original's latency: "
        f"tighter plans lost more than {limit:.1f} {metric} ({len(search['trials'])} trials; "
        "give --latency-budget to insist, --calib DATA to recover accuracy)"
    ]


def _fidelity_lines(report: dict[str, Any]) -> list[str]:
    fid = report.get("fidelity")
    if not fid:
        return []
    parts = []
    if fid.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {100 * fid['top1_agreement']:.1f}%")
    if fid.get("content_agreement") is not None:
        parts.append(
            f"agreement on {fid['content_positions']} non-blank positions "
            f"{100 * fid['content_agreement']:.1f}%"
        )
    parts.append(f"output cosine {fid['cosine']:.3f}")
    lines = [f"outputs vs the original on {fid['data']}: {', '.join(parts)}"]
    if fid.get("warning"):
        lines.append("WARNING: " + fid["warning"])
    elif "synthetic" in fid["data"] and "accuracy" not in report:
        lines.append(SYNTHETIC_NOTE)
    elif "synthesised" in fid["data"] and "accuracy" not in report:
        lines.append(SYNTHESISED_NOTE)
    return lines


# Random inputs cannot show what a classifier lost: measured on PP-OCRv5's direction
# classifier (cosine 0.986 on them, accuracy 99.0% -> 52.5% on real text lines).
SYNTHETIC_NOTE = (
    "NOTE: checked on random inputs only, which can agree while real accuracy is lost; "
    "check with --eval DATA, or prune with --calib DATA"
)


# Synthesised inputs see much more than noise (runtime/synthesize.py) but are not real data.
SYNTHESISED_NOTE = (
    "NOTE: checked on synthesised inputs, not real data; check with --eval DATA, "
    "or prune with --calib DATA"
)


def _compensation_lines(report: dict[str, Any]) -> list[str]:
    comp = report.get("bias_compensation")
    if not comp:
        return []
    skipped = len(comp["uncompensated_consumers"])
    return [
        f"bias compensation (data-free, BatchNorm statistics): "
        f"{comp['removed_channels_compensated']} removed channel inputs folded into "
        f"{comp['compensated_consumers']} consumers' biases"
        + (f"; {skipped} consumers without statistics upstream" if skipped else "")
    ]


def _output_lines(report: dict[str, Any]) -> list[str]:
    out = report.get("output")
    if not out:
        return []
    shapes = "; ".join(
        f"{name} [{', '.join(str(d) for d in dims)}]" for name, dims in out["input_shapes"].items()
    )
    return [f"OUT accepts: {shapes} ({out['dims']})"]
