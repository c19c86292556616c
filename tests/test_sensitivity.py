"""Measured sensitivity: the refit-error table and the planners that minimise it.

The constructed case (``_model``): ``x -> conv1 -> Relu -> conv2 -> Relu -> conv3``, all
1x1. conv1's filters are tiny (norm criterion: its group ``G1`` is the cheapest to cut)
but read a high-variance input, so each of its channels carries information the next
layer needs; one conv1 channel is dead (zero filter, negative bias). conv2's filters are
larger, but its channels 4..7 are 0.2x channels 0..3: after ReLU they are exact linear
copies, so removing them costs nothing once conv3 is refitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis._gram import centred_energy, prefix_residuals
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.analysis.sensitivity import SensitivityAnalysis, removal_order
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.exact import ExactPlannerPass
from onnx_hwprune.passes.plan.latency import LatencyPlannerPass
from onnx_hwprune.runtime.calib_stats import tensor_stream_provider

DEAD = 7  # the dead conv1 channel


def _conv(name, x, w, b, out):
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
             numpy_helper.from_array(b.astype(np.float32), f"{name}.b")]  # fmt: skip
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name), inits


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = 0.05 * rng.normal(size=(8, 4, 1, 1))
    b1 = np.zeros(8)
    w1[DEAD], b1[DEAD] = 0.0, -1.0
    w2 = rng.normal(size=(8, 8, 1, 1))
    b2 = 0.1 * rng.normal(size=8)
    w2[4:], b2[4:] = 0.2 * w2[:4], 0.2 * b2[:4]
    w3, b3 = rng.normal(size=(3, 8, 1, 1)), np.zeros(3)
    nodes, inits = [], []
    for node, init in (_conv("conv1", "x", w1, b1, "a1"), _conv("conv2", "r1", w2, b2, "a2"),
                       _conv("conv3", "r2", w3, b3, "y")):  # fmt: skip
        nodes.append(node)
        inits += init
    nodes.insert(1, helper.make_node("Relu", ["a1"], ["r1"], name="relu1"))
    nodes.insert(3, helper.make_node("Relu", ["a2"], ["r2"], name="relu2"))
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "sens", [value("x", onnx.TensorProto.FLOAT, [None, 4, 5, 5])],
        [value("y", onnx.TensorProto.FLOAT, [None, 3, 5, 5])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _batches():
    rng = np.random.default_rng(0)
    return [{"x": (20.0 * rng.normal(size=(32, 4, 5, 5))).astype(np.float32)} for _ in range(4)]


@dataclass(frozen=True)
class _Ms:
    ms: float


class _MacCost:
    """Latency = in x out per layer: every channel of either group saves the same."""

    residual_ms = 0.0

    def __init__(self, nodes):
        self.layers = [SimpleNamespace(node=n) for n in nodes]

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> _Ms:
        return _Ms(float(in_ch * out_ch))


@pytest.fixture(scope="module")
def analysed():
    mod = ChannelGroupAnalysis()(Module(load_graph(_model())))
    mod = ChannelImportance("l1")(mod)
    names = {g.name: g for g in mod.groups.prunable}
    by_producer = {
        node: next(n for n, g in names.items() if any(m.node == node and m.role == "weight_out"
                                                      for m in g.members))
        for node in ("conv1", "conv2")
    }  # fmt: skip
    # the criterion's order (l1), so the norm-vs-data tests see l1's choices
    ctx = PassContext(tensors=tensor_stream_provider(_batches, 256), seed=0,
                      config={"plan.sensitivity_order": "criterion"})  # fmt: skip
    return SensitivityAnalysis()(mod, ctx), by_producer["conv1"], by_producer["conv2"]


def test_prefix_residuals_equal_least_squares_refits():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 7))
    a[:, 2] = 0.0  # carries nothing
    a[:, 4] = 3.0  # constant: the intercept absorbs it
    w, b = rng.normal(size=(4, 7)), rng.normal(size=4)
    y = a @ w.T + b
    a1 = np.c_[a, np.ones(len(a))]
    blocks = [np.array([1, 2]), np.array([4]), np.array([3, 5]), np.array([6])]
    res, centred = prefix_residuals(a1.T @ a1, np.c_[w, b], np.array([0]), blocks)
    for c in range(len(blocks) + 1):
        cols = [7, 0, *[i for blk in blocks[:c] for i in blk]]
        fit = np.linalg.lstsq(a1[:, cols], y, rcond=None)[0]
        assert res[c] == pytest.approx(np.square(a1[:, cols] @ fit - y).sum(), rel=1e-6, abs=1e-6)
    assert centred == pytest.approx(np.square(y - y.mean(axis=0)).sum(), rel=1e-9)
    assert centred_energy(a1.T @ a1, np.c_[w, b]) == pytest.approx(centred, rel=1e-9)
    assert res[2] == pytest.approx(res[1], abs=1e-6 * centred)  # the constant column adds ~0


def test_norm_would_cut_the_informative_group(analysed):
    mod, g1, g2 = analysed
    assert mod.scores[g1][:DEAD].max() < mod.scores[g2].min()  # l1 calls G1 the weakest


def test_table_is_zero_for_channels_without_information(analysed):
    mod, g1, g2 = analysed
    table = mod.sensitivity
    assert set(table.measured) == {g1, g2} and not table.fallback
    assert removal_order(mod.scores[g1])[0] == DEAD
    assert set(removal_order(mod.scores[g2])[:4]) == {4, 5, 6, 7}
    assert table.costs[g1][1] == 0.0  # the dead channel: exactly nothing
    assert table.costs[g2][4] < 1e-7  # the four scaled copies: nothing after the refit
    assert table.costs[g2][5] > 1e-3
    assert table.costs[g1][2] > 1e-2  # an informative conv1 channel is expensive
    for cost in table.costs.values():
        assert cost[0] == 0.0 and np.all(np.diff(cost) >= 0)


@pytest.mark.parametrize("planner", [LatencyPlannerPass, ExactPlannerPass])
def test_planners_keep_what_the_data_says_is_expensive(analysed, planner):
    mod, g1, g2 = analysed
    ctx = PassContext(cost_model=_MacCost(["conv1", "conv2", "conv3"]),
                      config={"plan.max_group_ratio": 0.75})  # fmt: skip
    # full: 4*8 + 8*8 + 8*3 = 120; G1 at 7 (the dead one gone) and G2 at 4: 28 + 28 + 12
    budget = LatencyBudget(fraction=70 / 120)
    by_norm = planner(budget)(mod.replace(sensitivity=None), ctx).plan
    by_data = planner(budget)(mod, ctx).plan
    assert len(by_norm.groups[g1].keep) < DEAD  # the norm plan cuts informative channels
    assert set(by_data.groups[g1].keep) == set(range(DEAD))
    assert set(by_data.groups[g2].keep) == {0, 1, 2, 3}


def _inputs(tmp_path) -> None:
    """tiny_cnn, 24 calibration samples and a pinned profile (no timing) in ``tmp_path``."""
    from helpers import tiny_cnn
    from test_pinned import _exported_profile

    onnx.save(tiny_cnn(16), tmp_path / "in.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(24, 3, 16, 16)).astype(np.float32))
    _exported_profile(tmp_path, tiny_cnn(16))


def _cli_prune(tmp_path, name: str, *extra: str) -> int:
    from onnx_hwprune.cli import main

    source = tmp_path / "in.onnx"
    return main([
        "prune", str(source), str(tmp_path / f"{name}.onnx"), "--target", "cpu",
        "--profile", str(tmp_path / "profile.json"), "--latency-budget", "0.6",
        "--report", str(tmp_path / f"{name}.json"), "--quiet", "--recover", "none", *extra,
    ])  # fmt: skip


def test_cli_plans_on_measured_sensitivity_with_calib(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _inputs(tmp_path)
    calib = ["--calib", str(tmp_path / "calib.npz")]
    assert _cli_prune(tmp_path, "a", *calib) == 0
    assert _cli_prune(tmp_path, "b", *calib) == 0
    assert _cli_prune(tmp_path, "c", *calib, "--sensitivity", "off") == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["options"]["sensitivity"] is True
    assert a["sensitivity"]["groups_measured"] == 2 and a["sensitivity"]["samples"] == 24
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    c = json.loads((tmp_path / "c.json").read_text())
    assert "sensitivity" not in c and c["options"]["sensitivity"] is False


def test_sensitivity_on_without_calib_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _inputs(tmp_path)
    assert _cli_prune(tmp_path, "a", "--sensitivity", "on") == 2
    assert "--sensitivity on needs --calib" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def test_fallback_prices_a_group_by_its_removed_importance_share():
    from onnx_hwprune.passes.analysis.sensitivity import _fallback

    cost = _fallback(np.array([3.0, 1.0, 0.0, 4.0]))  # removed in the order 2, 1, 0, 3
    np.testing.assert_allclose(cost, [0.0, 0.0, 1 / 8, 4 / 8, 1.0])


def _two_branches(softmax: bool) -> onnx.ModelProto:
    """``y = 0.1 * convA(x) + convB(x)`` (then a Softmax over channels if asked): the two
    convs' outputs have about the same spread, but A's reaches the output 10x weaker."""
    rng = np.random.default_rng(4)
    nodes, inits = [], []
    for name, out in (("convA", "a"), ("convB", "b")):
        node, init = _conv(name, "x", rng.normal(size=(3, 4, 1, 1)), np.zeros(3), out)
        nodes.append(node)
        inits += init
    inits.append(numpy_helper.from_array(np.array(0.1, np.float32), "tenth"))
    nodes += [helper.make_node("Mul", ["a", "tenth"], ["a2"]),
              helper.make_node("Add", ["a2", "b"], ["z" if softmax else "y"])]  # fmt: skip
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=1))
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "branches", [value("x", onnx.TensorProto.FLOAT, [None, 4, 5, 5])],
        [value("y", onnx.TensorProto.FLOAT, [None, 3, 5, 5])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("softmax", [False, True])
def test_output_weights_follow_what_reaches_the_output(softmax):
    from onnx_hwprune.passes.analysis._output_weights import _targets, output_weights

    graph = load_graph(_two_branches(softmax))
    assert _targets(graph) == ({"z": 1} if softmax else {"y": None})
    provider = tensor_stream_provider(lambda: [{"x": b["x"] / 20} for b in _batches()], 256)
    stds = {}
    for values in provider([(graph, ["a", "b"])]):
        stds = {t: values[0][t].std(axis=(0, 2, 3)) for t in ("a", "b")}
        break
    layers = {"convA": ("a", stds["a"], 1), "convB": ("b", stds["b"], 1)}
    weights = output_weights(graph, layers, provider, noise=0.1, seed=0, samples=64)
    assert np.mean(list(weights.values())) == pytest.approx(1.0)
    assert weights["convA"] < 0.05 * weights["convB"], weights  # 0.1² of the energy
    assert output_weights(graph, layers, provider, noise=0.1, seed=0, samples=64) == weights


def test_output_stds_come_from_the_input_gram():
    from onnx_hwprune.passes.analysis._output_weights import output_stds

    rng = np.random.default_rng(2)
    a1 = np.c_[rng.normal(size=(500, 6)) * rng.uniform(0.5, 3, 6) + 1.0, np.ones(500)]
    w1 = rng.normal(size=(4, 7))
    np.testing.assert_allclose(output_stds(a1.T @ a1, w1), (a1 @ w1.T).std(axis=0), rtol=1e-9)


def test_sensitivity_table_carries_the_output_weights(analysed):
    mod, _, _ = analysed
    table = mod.sensitivity
    assert set(table.weights) == {"conv2", "conv3"}  # the groups' consumers
    assert all(w > 0 for w in table.weights.values())
    assert table.summary()["output_weights"] == {n: round(w, 4) for n, w in table.weights.items()}


def test_each_consumers_refit_error_is_scaled_by_its_weight(analysed):
    mod, g1, g2 = analysed
    ctx = PassContext(tensors=tensor_stream_provider(_batches, 256), seed=0,
                      config={"plan.sensitivity_noise": 0.0,
                              "plan.sensitivity_order": "criterion"})  # fmt: skip
    plain = SensitivityAnalysis()(mod.replace(sensitivity=None), ctx).sensitivity
    assert plain.weights == {}
    weighted = mod.sensitivity
    for group, consumer in ((g1, "conv2"), (g2, "conv3")):
        want = weighted.weights[consumer] * plain.costs[group]
        np.testing.assert_allclose(weighted.costs[group], want, rtol=1e-9, atol=1e-12)


def _correlated_gram(seed: int):
    """Gram and weight of a dense layer over 6 channels of 2 columns each: channel 4 is
    channel 1 plus a little noise, channel 5 is constant (the intercept absorbs it)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(500, 12))
    a[:, 8:10] = a[:, 2:4] + 0.05 * rng.normal(size=(500, 2))
    a[:, 10:12] = 2.0
    a1 = np.c_[a, np.ones(len(a))]
    weight = np.c_[rng.normal(size=(3, 12)), rng.normal(size=3)]
    blocks = [np.array([2 * c, 2 * c + 1]) for c in range(6)]
    return a1.T @ a1, weight, blocks


def _refit_error(gram, weight, blocks, removed) -> float:
    kept = [b for c, b in enumerate(blocks) if c not in removed]
    gone = [b for c, b in enumerate(blocks) if c in removed]
    res, centred = prefix_residuals(gram, weight, np.zeros(0, np.int64), kept + gone)
    return res[len(kept)] / centred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_removal_takes_the_cheapest_channel_given_the_others(seed):
    """Each step removes the channel whose refit error, given those already gone, is the
    smallest of all candidates (checked by refitting every candidate), so the constant
    and one of the near-duplicates go first."""
    from itertools import combinations

    from onnx_hwprune.passes.analysis._greedy_order import greedy_removal

    gram, weight, blocks = _correlated_gram(seed)
    centred = prefix_residuals(gram, weight, np.arange(12), [])[1]
    order = [int(c) for c in greedy_removal([(gram, weight, blocks, 1.0 / centred)], 6)]
    assert order[0] == 5 and order[1] in (1, 4)
    for step in range(1, 5):
        gone = order[:step]
        chosen = _refit_error(gram, weight, blocks, set(gone))
        for c in set(range(6)) - set(gone[:-1]):
            assert chosen <= _refit_error(gram, weight, blocks, {*gone[:-1], c}) + 1e-9
    best_pair = min(
        combinations(range(6), 2), key=lambda r: _refit_error(gram, weight, blocks, set(r))
    )
    assert _refit_error(gram, weight, blocks, set(order[:2])) == pytest.approx(
        _refit_error(gram, weight, blocks, set(best_pair)), abs=1e-9
    )


def test_greedy_order_prices_and_plans_in_its_own_order(analysed):
    """With ``plan.sensitivity_order = greedy`` the table carries the order it priced:
    conv2's copies are removed one per pair, at no cost, and the dead channel first."""
    mod, g1, g2 = analysed
    ctx = PassContext(tensors=tensor_stream_provider(_batches, 256), seed=0,
                      config={"plan.sensitivity_order": "greedy"})  # fmt: skip
    greedy = SensitivityAnalysis()(mod.replace(sensitivity=None), ctx)
    table = greedy.sensitivity
    assert table.order == "greedy" and table.summary()["channel_order"] == "greedy"
    assert set(table.scores) == {g1, g2}
    first = removal_order(greedy.scores[g2])[:4]
    assert sorted(int(c) % 4 for c in first) == [0, 1, 2, 3]  # one of each scaled pair
    assert table.costs[g2][4] < 1e-7 and table.costs[g2][5] > 1e-3
    assert removal_order(greedy.scores[g1])[0] == DEAD and table.costs[g1][1] == 0.0
    for cost in table.costs.values():
        assert cost[0] == 0.0 and np.all(np.diff(cost) >= 0)
    bad = PassContext(tensors=ctx.tensors, config={"plan.sensitivity_order": "random"})
    with pytest.raises(Exception, match="sensitivity_order"):
        SensitivityAnalysis()(mod, bad)


def test_cli_plans_in_the_greedy_order_by_default(tmp_path, monkeypatch):
    """The job hands the planner the order the table priced: by default the greedy
    order's survivors; the criterion's when the context asks for it."""
    import json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _inputs(tmp_path)
    calib = ["--calib", str(tmp_path / "calib.npz")]
    assert _cli_prune(tmp_path, "g", *calib, "--save-plan", str(tmp_path / "g.plan")) == 0
    with PassContext(config={"plan.sensitivity_order": "criterion"}):
        assert _cli_prune(tmp_path, "c", *calib, "--save-plan", str(tmp_path / "c.plan")) == 0
    g, c = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "gc")
    assert g["sensitivity"]["channel_order"] == "greedy"
    assert c["sensitivity"]["channel_order"] == "criterion"
    plans = [json.loads((tmp_path / f"{n}.plan").read_text())["groups"] for n in "gc"]
    assert plans[0] != plans[1]  # other channels kept (the l1 order is not the greedy one)
