"""The human summary: latency and accuracy lines, and the warning when pruning made the
model slower, which must never pass silently."""

from __future__ import annotations

from onnx_hwprune.report import format_summary


def _report(original_ms: float, pruned_ms: float) -> dict:
    return {
        "network": {"params": [100, 50], "macs": [1000, 400]},
        "groups": {"total": 3, "prunable": 2, "pruned": 2, "frozen": []},
        "layers": [],
        "latency": {
            "predicted": {"target": "cpu", "source": "test", "network_ms": [2.0, 1.0]},
            "measured": {
                "original": {"median_ms": original_ms},
                "pruned": {"median_ms": pruned_ms},
            },
        },
        "accuracy": {"samples": 10, "top1": [0.9, 0.8], "agreement": 0.85},
    }


def test_summary_shows_latency_and_accuracy():
    text = format_summary(_report(2.0, 1.0))
    assert "2.000 ms -> 1.000 ms (2.00x)" in text
    assert "90.00% -> 80.00%" in text and "agreement with the original: 85.00%" in text
    assert "SLOWER" not in text


def test_summary_warns_when_the_result_is_slower():
    assert "measured SLOWER than the original" in format_summary(_report(1.0, 1.2))
