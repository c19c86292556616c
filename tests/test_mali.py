"""The analytic Mali-G72 MP12 model: stairs where TVM's tiles put them, "estimated"
provenance, replaced by a board's measurements from the profile database."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import onnx
import pytest

from onnx_hwprune.cost_models.mali import MALI_G72_MP12, TILE_N, MaliCostModel, layer_ms
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.mali_models import analytic_cost_model, mali_cost_model
from onnx_hwprune.runtime.profiler import build_cost_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_resnet.onnx"
CONV3 = LayerSignature("Conv", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), input_hw=(28, 28), bias=True)
CONV1 = LayerSignature("Conv", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), input_hw=(56, 56), bias=True)


def test_out_channels_step_at_tvm_matmul_tile():
    ms = {o: layer_ms(CONV3, 64, o) for o in range(1, 129)}
    # Flat inside a 32-channel tile, a jump at the next one (implicit GEMM, N padded to 32).
    for lo in range(0, 128, TILE_N):
        assert len({round(ms[o], 9) for o in range(lo + 1, lo + TILE_N + 1)}) == 1
    assert ms[33] > ms[32] * 1.2 and ms[128] > ms[96] > ms[64]


def test_pointwise_in_channels_step_every_eight():
    ms = {i: layer_ms(CONV1, i, 64) for i in range(57, 65)}
    assert len({round(v, 9) for v in ms.values()}) == 1  # K = in padded to 8: 57..64 equal
    assert layer_ms(CONV1, 56, 64) < ms[57]


def test_magnitude_is_plausible_for_the_hikey970():
    # 2*784*64*576 = 58 MFLOP; peak 12 cores * 12 FMA * 2 * 767 MHz = 221 GFLOP/s.
    peak = MALI_G72_MP12.shader_cores * MALI_G72_MP12.fma_lanes_per_core * 2 * 767e6
    ideal_ms = 2 * 784 * 64 * 576 / peak * 1e3
    assert ideal_ms < layer_ms(CONV3, 64, 64) < 20 * ideal_ms


def test_network_model_interface_and_provenance():
    cost = analytic_cost_model(EXAMPLE)
    assert isinstance(cost, MaliCostModel) and cost.target == "mali"
    assert cost.layers and all(hasattr(e, "node") for e in cost.layers)
    detail = cost.predict_detail({})
    assert detail["provenance"]["measured"] == 0 and detail["provenance"]["estimated"] > 0
    first = cost.layers[1]
    est = cost.layer_latency(first.node, first.in_channels, first.out_channels)
    assert est.provenance == "estimated" and est.ms > 0
    assert cost.predict() == pytest.approx(detail["total_ms"]) and cost.residual_ms >= 0
    assert "estimate" in cost.source
    assert cost.stair_edges(first.node, "out")[0][0] == first.out_channels


class FakeBoard(Backend):
    """A deterministic 'board': latency from the weight size, rounded up to 32 outputs."""

    name = "fake-mali-board"

    def fingerprint(self) -> dict:
        return {"board": "hikey970", "device": "Mali-G72"}

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        w = next((i for i in model.graph.initializer if i.name == "W"), None)
        if w is None:  # the whole network (calibration)
            ms = 5.0
        else:
            ms = 0.01 * -(-w.dims[0] // 32) * (w.dims[1] if len(w.dims) > 1 else 1)

        class Fixed(Runnable):
            def sample(self, number: int) -> float:
                return ms * 1e-3

        return Fixed()


def test_board_measurements_replace_the_estimate(tmp_path):
    with ProfileDB(tmp_path / "p.sqlite") as db:
        assert isinstance(mali_cost_model(EXAMPLE, db), MaliCostModel)
        from onnx_hwprune.frontends.onnx import with_static_inputs

        static = with_static_inputs(onnx.load(EXAMPLE))
        measured = build_cost_model(static, FakeBoard(), "mali", db)
        got = mali_cost_model(EXAMPLE, db)
    assert not isinstance(got, MaliCostModel)
    assert got.fingerprint_hash == measured.fingerprint_hash
    node = got.layers[1].node
    full = (got.layers[1].in_channels, got.layers[1].out_channels)
    assert got.layer_latency(node, *full).provenance == "measured"
    assert got.predict() == pytest.approx(measured.predict())


@pytest.mark.tvm
@pytest.mark.skipif(
    importlib.util.find_spec("tvm") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="needs apache-tvm and aarch64-linux-gnu-gcc",
)
def test_mali_end_to_end_without_a_board(tmp_path, monkeypatch):
    """Plan from the estimate (as the lead's _latency.cost_model will for mali), prune,
    emit the cross-compiled module; the report's predicted latencies say "estimated"."""
    from onnx_hwprune import _latency, prune
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    def estimate(opts, source, progress=None):
        return mali_cost_model(source, ProfileDB(tmp_path / "p.sqlite")), None

    monkeypatch.setattr(_latency, "cost_model", estimate)
    result = prune(onnx.load(EXAMPLE), target="mali", measure=False)
    layers = result.report["latency"]["predicted"]["layers"]
    assert layers and all(v["provenance"] == ["estimated", "estimated"] for v in layers.values())
    lib, _ = emit_tvm(result.model, tmp_path / "pruned.so", "mali")
    assert b"__kernel void" in lib.read_bytes()
