"""--max-accuracy-drop: the fastest plan within P points, by bisecting the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_hwprune.api import prune
from onnx_hwprune.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_search_keeps_accuracy_within_the_drop():
    result = prune(EXAMPLES / "digits_resnet.onnx", target="mali", max_accuracy_drop=2.0,
                   eval_data=EXAMPLES / "digits_test.npz")  # fmt: skip
    trials = result.report["accuracy_search"]["trials"]
    assert result.model is not None
    before, after = result.report["accuracy"]["top1"]
    assert 100 * (before - after) <= 2.0
    assert len(trials) > 1 and not trials[0]["within"]  # the default 0.7 loses too much
    chosen = min(t["budget"] for t in trials if t["within"])
    assert result.report["plan"]["meta"]["budget_ms"] == pytest.approx(
        chosen * result.report["plan"]["meta"]["full_ms"]
    )
    assert all(t["budget"] < chosen for t in trials if not t["within"] and t["budget"] > 0.7)


def test_search_needs_eval_data():
    with pytest.raises(UserError, match="--eval"):
        prune(EXAMPLES / "digits_resnet.onnx", target="mali", max_accuracy_drop=2.0)
