"""One Target record answers every question about a target; nothing matches names."""

from __future__ import annotations

import pytest

from onnx_hwprune.cli_commands.targets import rows
from onnx_hwprune.errors import UserError
from onnx_hwprune.passes._infra import PassContext
from onnx_hwprune.runtime.targets import TARGETS, Target, get_target, target_names
from onnx_hwprune.runtime.tvm_targets import compile_target, device_kind


def test_context_carries_the_target_and_its_constraints():
    cpu = TARGETS["cpu"]
    assert PassContext(target=cpu).get("plan.channel_multiple") == cpu.channel_multiple == 4
    assert PassContext().get("plan.channel_multiple") == 1
    explicit = PassContext(target=cpu, config={"plan.channel_multiple": 8})
    assert explicit.get("plan.channel_multiple") == 8
    with pytest.raises(TypeError, match="Target record"):
        PassContext(target="cpu")


def test_a_new_target_is_one_record(monkeypatch):
    """Registered once, it is listed, offered, and routed by its fields alone."""
    fake = Target(
        "npu-x",
        "an imaginary NPU",
        "measured on the NPU",
        lambda **_: None,
        lambda: (False, "no NPU here"),
        backend="npu-rt (vendor runtime)",
        device="opencl",
        emit_tvm=True,
        host_triple="aarch64-linux-gnu",
        channel_multiple=16,
        note=lambda: "vendor driver 1.2 needed",
    )
    monkeypatch.setitem(TARGETS, "npu-x", fake)
    assert "npu-x" in target_names()
    (row,) = [r for r in rows() if r["name"] == "npu-x"]
    assert row["backend"] == "npu-rt (vendor runtime)" and row["emit_tvm"] is True
    assert row["note"] == "vendor driver 1.2 needed" and row["why_not"] == "no NPU here"
    assert device_kind("npu-x") == "opencl"
    assert compile_target("npu-x")["host"] == {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    with pytest.raises(UserError, match="cannot be measured on this host: no NPU here"):
        get_target("npu-x")
    assert get_target("npu-x", measurable=False) is fake


def test_routes_follow_the_records():
    assert {n for n, t in TARGETS.items() if t.emit_tvm} == {"tvm-llvm", "tvm-cuda", "mali"}
    assert TARGETS["mali"].cost_source == "analytic"
    assert {t.cost_source for n, t in TARGETS.items() if n != "mali"} <= {"measured", "shipped"}
    with pytest.raises(UserError, match="not a TVM target"):
        device_kind("cpu")
    with pytest.raises(ValueError, match="unknown cost source"):
        Target("x", "", "", lambda: None, lambda: (True, ""), cost_source="guess")  # type: ignore[arg-type]
