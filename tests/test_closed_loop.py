"""The closed loop: a plan that misses the measured budget is corrected and re-planned."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from helpers import tiny_cnn

from onnx_hwprune.api import prune
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.targets import TARGETS
from onnx_hwprune.target import Target

MS_PER_WEIGHT = 0.01


class OverheadMachine(Backend):
    """Every weight costs MS_PER_WEIGHT ms in a one-layer benchmark and in the network;
    a whole network also pays ``overhead_ms`` that no layer benchmark sees. Calibrated
    proportionally, the model over-credits pruning: the true cost differs from it by a
    known amount."""

    name = "overhead-machine"

    def __init__(self, overhead_ms: float):
        self.overhead_ms = overhead_ms
        self.networks_timed = 0

    def fingerprint(self) -> dict:
        return {"machine": "overhead", "overhead_ms": self.overhead_ms}

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        weights = sum(int(np.prod(i.dims)) for i in model.graph.initializer if len(i.dims) >= 2)
        network = model.graph.name != "layer"
        self.networks_timed += network
        ms = MS_PER_WEIGHT * weights + (self.overhead_ms if network else 0.0)

        class Fixed(Runnable):
            def sample(self, number: int) -> float:
                return ms * 1e-3

        return Fixed()


@pytest.fixture
def fake_target(monkeypatch, tmp_path):
    def register(machine: Backend) -> PruneOptions:
        record = Target("fake", "a fake machine", "fake", lambda **_: machine, lambda: (True, ""))
        monkeypatch.setitem(TARGETS, "fake", record)
        return PruneOptions(target="fake", latency_budget="0.6",
                            profile_db=tmp_path / "p.sqlite")  # fmt: skip

    return register


def test_loop_corrects_the_model_and_meets_the_budget(fake_target):
    machine = OverheadMachine(overhead_ms=4.0)
    result = prune(tiny_cnn(16), fake_target(machine))
    rounds = result.report["latency"]["closed_loop"]
    assert 2 <= len(rounds) <= 4
    assert rounds[0]["miss"] > 0.03  # the proportional model over-credited pruning
    assert rounds[-1]["miss"] <= 0.03  # the corrected model's plan meets the budget
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    full = MS_PER_WEIGHT * (8 * 3 * 9 + 8 * 8 * 9 + 4 * 8) + 4.0  # tiny_cnn's true cost
    assert rounds[-1]["budget_ms"] == pytest.approx(0.6 * full)
    assert rounds[-1]["measured_ms"] <= 0.6 * full * 1.03


def test_loop_stops_after_one_round_when_the_model_is_right(fake_target):
    result = prune(tiny_cnn(16), fake_target(OverheadMachine(overhead_ms=0.0)))
    (only,) = result.report["latency"]["closed_loop"]
    assert only["miss"] <= 0.03 and only["predicted_ms"] == pytest.approx(only["measured_ms"])
    assert result.report["latency"]["predicted"]["anchored_to_ms"] == pytest.approx(
        only["original_ms"]
    )


def test_summary_reports_each_round_against_the_budget(fake_target):
    from onnx_hwprune.report import format_summary

    result = prune(tiny_cnn(16), fake_target(OverheadMachine(overhead_ms=4.0)))
    text = format_summary(result.report)
    rounds = result.report["latency"]["closed_loop"]
    lines = [line for line in text.splitlines() if line.startswith("closed loop round")]
    assert len(lines) == len(rounds) >= 2
    assert lines[0].endswith("missed") and ", met" in lines[-1]
    measured = result.report["latency"]["measured"]
    assert measured["pruned"]["median_ms"] == pytest.approx(rounds[-1]["measured_ms"])


def test_implausible_spread_is_said():
    from onnx_hwprune.report import _latency_lines

    latency = {
        "predicted": {"network_ms": [10.0, 8.0], "target": "cpu", "source": "here"},
        "measured": {
            "original": {"median_ms": 26.0, "spread": 1.12},
            "pruned": {"median_ms": 1.5, "spread": 13.29},
        },
    }
    lines = _latency_lines({"latency": latency})
    assert any("spread 1329%" in line for line in lines)
    latency["measured"]["pruned"]["spread"] = latency["measured"]["original"]["spread"] = 0.02
    # a clean measurement shows its spread on the measured line, but warns of nothing
    assert not any("WARNING" in line for line in _latency_lines({"latency": latency}))


def test_paired_ratio_is_the_speedup_and_its_spread_decides_the_warning():
    """Timings that spread 30% each, whose per-round ratio spread 2%: load that hit both
    alike. The summary gives the paired speedup and warns of nothing."""
    from onnx_hwprune.report import _latency_lines

    pruned = {"median_ms": 6.0, "spread": 0.3, "ratio": 0.5, "ratio_spread": 0.02}
    measured = {"original": {"median_ms": 10.0, "spread": 0.3}, "pruned": pruned}
    lines = _latency_lines({"latency": {"measured": measured}})
    assert any("(2.00x paired per round, spread 2%)" in line for line in lines)
    assert not any("WARNING" in line for line in lines)
    measured["pruned"]["ratio_spread"] = 0.25
    assert any("paired per-round ratio spread 25%" in line for line in _latency_lines(
        {"latency": {"measured": measured}}))  # fmt: skip


class NoisyOverhead(OverheadMachine):
    """The overhead machine, quiet while profiling and anchoring (the first two networks
    timed), then with whole-network samples cycling through 1, 1.5, 1, 0.6 times their
    time, each network out of phase with the one before: the medians hold, the per-round
    ratio of two networks timed together does not (noise that does not hit both alike)."""

    swing = (1.0, 1.5, 1.0, 0.6)

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        inner = super().prepare(model)
        state = [self.networks_timed]  # the phase
        network = model.graph.name != "layer" and self.networks_timed > 2
        swing = self.swing

        class Noisy(Runnable):
            def sample(self, number: int) -> float:
                state[0] += 1
                noise = swing[state[0] % 4] if network else 1.0
                return inner.sample(number) * noise

        return Noisy()


def test_loop_does_not_correct_on_noisy_timings(fake_target):
    result = prune(tiny_cnn(16), fake_target(NoisyOverhead(overhead_ms=4.0)))
    (only,) = result.report["latency"]["closed_loop"]
    assert abs(only["miss"]) > 0.03 and only["ratio_spread"] > 0.10  # a miss not corrected
    assert "too noisy to correct the model, twice (pooled)" in only["note"]
    assert only["timings"] == 2


def test_loop_corrects_a_miss_beyond_the_noise(fake_target):
    """Timings noisy enough to time twice (paired ratio spread over 10%), but a miss well
    beyond that spread: noise cannot explain it, so the model is corrected."""
    machine = NoisyOverhead(overhead_ms=4.0)
    machine.swing = (1.0, 1.1, 1.0, 0.9)
    rounds = prune(tiny_cnn(16), fake_target(machine)).report["latency"]["closed_loop"]
    first = rounds[0]
    assert first["ratio_spread"] > 0.10 and first["miss"] > first["ratio_spread"]
    assert "too noisy" not in first.get("note", "")
    assert len(rounds) >= 2 and rounds[-1]["miss"] <= 0.03


def test_unreachable_budget_keeps_the_measured_plan(fake_target):
    # 20 ms that no layer owns: 60% of the original is out of reach of any pruning.
    result = prune(tiny_cnn(16), fake_target(OverheadMachine(overhead_ms=20.0)))
    (only,) = result.report["latency"]["closed_loop"]
    assert only["miss"] > 0.03 and "cannot reach the budget" in only["note"]
    assert result.report["latency"]["measured"]["pruned"]["median_ms"] == pytest.approx(
        only["measured_ms"]
    )


def test_loop_prunes_less_after_an_undershoot(fake_target):
    """A network that runs faster than its layers' sum once pruned (a negative overhead:
    here 4 ms saved that no layer benchmark sees) makes the first plan land far under the
    budget, i.e. remove more than the budget needed. The loop refits and prunes less."""
    result = prune(tiny_cnn(16), fake_target(OverheadMachine(overhead_ms=-4.0)))
    rounds = result.report["latency"]["closed_loop"]
    assert rounds[0]["miss"] < -0.10
    (kept,) = [r for r in rounds if r.get("kept")]
    assert kept["miss"] <= 0.03 and kept["measured_ms"] > rounds[0]["measured_ms"]  # less
    # the refit line is exact here (4 ms saved is a negative residual, kept by corrected)
    assert kept["predicted_ms"] == pytest.approx(kept["measured_ms"])
    measured = result.report["latency"]["measured"]["pruned"]
    assert measured["median_ms"] == pytest.approx(kept["measured_ms"])


class QdqCounting(OverheadMachine):
    """Records whether each whole network it times is in int8 (QDQ) form."""

    def __init__(self):
        super().__init__(overhead_ms=0.0)
        self.network_forms: list[bool] = []

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        if model.graph.name != "layer":
            self.network_forms.append(any(n.op_type == "QuantizeLinear" for n in model.graph.node))
        return super().prepare(model)


def test_int8_plans_are_judged_in_int8_form(fake_target, tmp_path):
    """With --quantize int8 the plan is priced on int8 kernels; the loop must time the
    models as int8 too (timed as float, an int8 plan was judged against float speed)."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype("float32"))
    machine = QdqCounting()
    opts = replace(fake_target(machine), quantize="int8", calib=str(calib), recover="none")
    result = prune(tiny_cnn(16), opts)
    assert result.report["latency"]["closed_loop"]
    # The loop's original and pruned, then the report's float original, pruned float and
    # pruned int8 (what quantizing bought, against float).
    assert machine.network_forms[-5:] == [True, True, False, False, True]


def test_replanning_aims_between_two_plans_that_bracket_the_budget():
    from test_cost_model import _network

    from onnx_hwprune.closed_loop import _next_model
    from onnx_hwprune.cost_models.anchor import corrected, layer_sum

    cost = _network()
    deep, shallow = {"conv1": (16, 4), "conv2": (16, 4)}, {"conv1": (16, 4)}
    l0, l_u, l_o = layer_sum(cost), layer_sum(cost, deep), layer_sum(cost, shallow)
    assert l_u < l_o < l0
    orig, budget = 10.0, 7.0
    # deep measured 50% of the original (under), shallow 80% (over): 70% lies 2/3 of the way
    bracketed = _next_model(cost, [(deep, 0.5), (shallow, 0.8)], orig, budget)
    aim = l_u + (0.7 - 0.5) / (0.8 - 0.5) * (l_o - l_u)
    assert bracketed.predict() == pytest.approx(orig)  # still anchored to the original
    under, over = bracketed.predict(deep) - budget, bracketed.predict(shallow) - budget
    assert under < 0 < over and under / over == pytest.approx((l_u - aim) / (l_o - aim))
    # one side only, or a bracket that runs backwards (noise): through the latest plan
    for history in ([(shallow, 0.9), (deep, 0.8)], [(deep, 0.9), (shallow, 0.5)]):
        latest, ratio = history[-1]
        want = corrected(cost, latest, orig, ratio * orig)
        assert _next_model(cost, history, orig, budget).predict(latest) == pytest.approx(
            want.predict(latest)
        )
