"""``onnx-hwprune front``: the exact planner's front, its baselines and re-applicable plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "onnx_hwprune", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _weight_bytes(path: Path) -> int:
    model = onnx.load(path)
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    out = tmp_path_factory.mktemp("front") / "f"
    proc = _cli("front", str(EXAMPLES / "digits_resnet.onnx"), "--target", "mali",
                "--out", str(out), "--budgets", "0.9,0.7,0.5", "--ratios", "0.3,0.5",
                "--eval", str(EXAMPLES / "digits_test.npz"), "--memory-budgets", "0.5")  # fmt: skip
    return proc, out


def test_front_writes_json_png_and_plans(front):
    proc, out = front
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "front.json").read_text())
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [p["kind"] for p in data["points"]]
    assert kinds.count("exact") == 6  # 3 budgets, without and with the memory budget
    assert {"uniform", "global", "snap"} <= set(kinds)
    for point in data["points"]:
        assert (out / point["plan"]).is_file()
        assert 0.0 <= point["agreement"] <= 1.0 and 0.0 <= point["top1"] <= 1.0
    full = data["original"]
    exact = [p for p in data["points"] if p["kind"] == "exact"]
    for point, fraction in zip(exact, [0.9, 0.7, 0.5] * 2, strict=True):
        if point["status"] != "unreachable":
            assert point["predicted_ms"] <= full["predicted_ms"] * fraction * (1 + 1e-9)
    plain = [p["importance_loss"] for p in exact[:3]]
    assert plain == sorted(plain)  # tighter budgets never lose less
    for with_memory in exact[3:]:
        assert with_memory["weight_bytes"] <= 0.5 * full["weight_bytes"]
    assert any(p["pareto"] for p in exact)


def test_a_point_is_reapplied_with_plan(front, tmp_path):
    _, out = front
    data = json.loads((out / "front.json").read_text())
    point = next(p for p in data["points"] if p["kind"] == "exact" and "memory" in p["setting"])
    model = tmp_path / "m.onnx"
    # --no-bias-compensation, --synthetic-data off: the front's points are plain removals;
    # compensation or recovery on synthesised data may add a bias tensor to a conv that had
    # none (more weight bytes than the point records)
    proc = _cli(str(EXAMPLES / "digits_resnet.onnx"), str(model), "--plan",
                str(out / point["plan"]), "--quiet", "--no-bias-compensation",
                "--synthetic-data", "off")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _weight_bytes(model) == point["weight_bytes"]


def test_front_bad_input(tmp_path):
    proc = _cli("front", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "f"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = _cli("front", str(EXAMPLES / "digits_resnet.onnx"), "--out", str(tmp_path / "f"),
                "--budgets", "0.5,1.5")  # fmt: skip
    assert proc.returncode == 2 and "(0, 1]" in proc.stderr
    assert not (tmp_path / "f").exists()
