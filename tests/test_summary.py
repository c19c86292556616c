"""The summary's honesty lines (issue 11), on constructed report sections."""

from __future__ import annotations

from onnx_hwprune._summary import budget_lines, guard_lines, provenance_lines


def _report(predicted: float, m0: float, m1: float) -> dict:
    return {
        "plan": {"meta": {"budget_ms": 7.0, "predicted_ms": predicted, "full_ms": 10.0}},
        "latency": {"measured": {"original": {"median_ms": m0}, "pruned": {"median_ms": m1}}},
    }


def test_measured_miss_over_five_percent_warns():
    # budget 0.7 of the original; measured original 20 ms -> target 14 ms
    assert budget_lines(_report(7.0, 20.0, 14.6)) == []  # 4% over: within tolerance
    (line,) = budget_lines(_report(7.0, 20.0, 15.0))
    assert line.startswith("WARNING: measured 15.000 ms misses the budget") and "by 7%" in line


def test_unreachable_budget_warns():
    lines = budget_lines(_report(8.0, 20.0, 14.0))
    assert any("not reachable" in line and "8.000" in line for line in lines)


def test_provenance_counts_are_named():
    (line,) = provenance_lines([None, {"measured": 4, "interpolated": 0, "estimated": 5}])
    assert "9 layer points" in line and "4 measured" in line and "5 estimated" in line
    assert "not measured" in line


def test_fidelity_warning_and_output_shapes_are_shown():
    report = {
        "fidelity": {"data": "x", "cosine": 0.5, "top1_agreement": 0.3, "warning": "moved"},
        "output": {"input_shapes": {"x": ["batch", 3, "H", "W"]}, "dims": "kept"},
    }
    lines = guard_lines(report)
    assert "WARNING: moved" in lines
    assert "OUT accepts: x [batch, 3, H, W] (kept)" in lines


def test_recovery_is_summarised_with_what_it_bought_and_what_it_discarded():
    from onnx_hwprune._summary import recovery_lines

    distill = {"method": "distill", "seconds": 403.4, "steps": 300, "lsq_seconds": 136.0,
               "agreement_on_calibration": [0.5244, 0.9824]}  # fmt: skip
    (line,) = recovery_lines({"recovery": distill})
    assert line.startswith("recovery: distill in 403 s (300 steps after lsq's 136 s)")
    assert line.endswith("52.4% -> 98.2%")
    distill["discarded"] = "held-back agreement 0.9000 below lsq's 0.9500"
    assert "discarded, the lsq model kept: held-back" in recovery_lines({"recovery": distill})[1]
    auto = {"method": "lsq", "held_samples": 52, "tried": [
        {"method": "bias", "agreement": 0.69}, {"method": "lsq", "agreement": 0.98}]}  # fmt: skip
    (line,) = recovery_lines({"recovery": auto})
    assert line == ("recovery: auto chose lsq (agreement on 52 held-back samples: "
                    "bias 69.0%, lsq 98.0%)")  # fmt: skip
    assert recovery_lines({}) == []


def _quantized(pruned_float_ratio: float, int8_ratio: float) -> dict:
    from onnx_hwprune.runtime.quantize import quantization_summary

    def timed(ratio: float) -> dict:
        return {"median_ms": 10.0 * ratio, "spread": 0.02, "ratio": ratio, "ratio_spread": 0.03}

    measured = {
        "original": {"median_ms": 10.0, "spread": 0.02},
        "pruned_float": timed(pruned_float_ratio),
        "pruned_int8": timed(int8_ratio),
    }
    return {"quantize": {**quantization_summary("int8"), "measured": measured}}


def test_quantization_that_slows_the_model_down_is_said():
    """The closed loop compares int8 forms only; the summary says what int8 bought
    against the float models (PP-OCRv5 cls ran 1.8x slower in int8)."""
    good = guard_lines(_quantized(0.8, 0.4))
    assert any("pruned float 8.000 ms (1.25x), pruned int8 4.000 ms (2.50x" in x for x in good)
    assert not any("SLOWER" in line for line in good)
    assert not any("SLOWER" in line for line in guard_lines(_quantized(0.8, 0.82)))  # noise
    slow = guard_lines(_quantized(0.8, 1.4))
    assert any(line.startswith("WARNING: quantizing made the pruned model SLOWER") for line in slow)
    assert guard_lines({}) == []
