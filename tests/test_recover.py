"""Recovery without training: exact cases, the maths of each step, and the digits model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model, verify_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.recover import (
    LinearLayer,
    output_rows,
    patch_rows,
    refreshed_batchnorm,
)
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.recovery import recover
from onnx_hwprune.runtime.evaluate import evaluate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
C_IN, C_MID, HW = 3, 8, 6
KINDS = ["conv1x1", "conv3x3_pad0", "conv1x1_bn", "gemm", "matmul"]


def _model(nodes, inits, out_shape, in_shape=(None, C_IN, HW, HW)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return normalize_model(model)


def _consumer(kind: str, rng) -> tuple[list, dict, tuple]:
    """The layer reading the ``mid`` tensor: a conv (1x1, 3x3 pad 0, 1x1 + BN), Gemm, MatMul."""
    if kind == "conv1x1":
        w = rng.standard_normal((5, C_MID, 1, 1)) / np.sqrt(C_MID)
        return [helper.make_node("Conv", ["mid", "w2", "b2"], ["y"])], {"w2": w}, (5, HW, HW)
    if kind == "conv3x3_pad0":
        w = rng.standard_normal((5, C_MID, 3, 3)) / np.sqrt(9 * C_MID)
        node = helper.make_node("Conv", ["mid", "w2"], ["y"], pads=[0, 0, 0, 0])
        return [node], {"w2": w}, (5, HW - 2, HW - 2)
    if kind == "conv1x1_bn":  # the BatchNorm after the consumer gets refreshed
        w = rng.standard_normal((5, C_MID, 1, 1)) / np.sqrt(C_MID)
        bn = {"g": rng.uniform(0.5, 2, 5), "be": rng.standard_normal(5)}
        bn.update(m=rng.standard_normal(5), v=rng.uniform(0.5, 2, 5))
        nodes = [
            helper.make_node("Conv", ["mid", "w2"], ["c2"]),
            helper.make_node("BatchNormalization", ["c2", "g", "be", "m", "v"], ["y"]),
        ]
        return nodes, {"w2": w, **bn}, (5, HW, HW)
    w = rng.standard_normal((4, C_MID * HW * HW)) / np.sqrt(C_MID * HW * HW)
    layer = helper.make_node("Gemm", ["flat", "w2", "b2"], ["y"], transB=1)
    if kind == "matmul":  # no bias input: recovery inserts an Add
        w = w.T.copy()
        layer = helper.make_node("MatMul", ["flat", "w2"], ["y"])
    return [helper.make_node("Flatten", ["mid"], ["flat"]), layer], {"w2": w}, (4,)


def _two_layer(kind: str, w1: np.ndarray, b1: np.ndarray, relu: bool, rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["pre" if relu else "mid"], pads=[1] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", ["pre"], ["mid"]))
    tail, inits, out_shape = _consumer(kind, rng)
    inits.update(w1=w1, b1=b1)
    if any("b2" in n.input for n in tail):
        inits["b2"] = rng.standard_normal(inits["w2"].shape[0])
    return _model(nodes + tail, inits, out_shape)


def _prune(model: onnx.ModelProto, removed: list[int]):
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    name = next(g.name for g in groups.prunable if g.size == C_MID)
    keep = tuple(i for i in range(C_MID) if i not in removed)
    plan = Plan({name: GroupPlan(C_MID, keep)})
    return groups, plan, export_model(remove_channels(graph, groups, plan))


def _data(rng, n=64) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((n, C_IN, HW, HW)).astype(np.float32)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["bias", "lsq"])
def test_constant_channels_are_compensated_exactly(kind, method):
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((C_MID, C_IN, 3, 3)) / 5, rng.standard_normal(C_MID)
    removed = [2, 5]
    w1[removed] = 0.0  # zero filters + positive bias + ReLU: channels constant on any data
    b1[removed] = [0.7, 1.3]
    model = _two_layer(kind, w1, b1, relu=True, rng=rng)
    groups, plan, pruned = _prune(model, removed)
    data = _data(rng)
    factory = calib_factory(data, model, batch_size=16)
    repaired = recover(model, pruned, groups, plan, factory, method=method)
    verify_model(repaired)
    want = run(model, data)[0]
    assert np.abs(run(pruned, data)[0] - want).max() > 0.1  # plain removal is wrong...
    np.testing.assert_allclose(run(repaired, data)[0], want, atol=1e-5, rtol=0)  # ...fixed


@pytest.mark.parametrize("kind", KINDS)
def test_lsq_restores_channels_that_are_combinations_of_kept_ones(kind):
    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((C_MID, C_IN, 3, 3)) / 5, rng.standard_normal(C_MID)
    # No ReLU: channels 6 and 7 are exact linear combinations of channels 0..3 everywhere.
    w1[6], b1[6] = w1[0] + 2 * w1[1], b1[0] + 2 * b1[1]
    w1[7], b1[7] = 0.5 * w1[2] - w1[3], 0.5 * b1[2] - b1[3]
    model = _two_layer(kind, w1, b1, relu=False, rng=rng)
    groups, plan, pruned = _prune(model, [6, 7])
    data = _data(rng, n=128 if kind in ("gemm", "matmul") else 32)  # 288 columns need rows
    factory = calib_factory(data, model, batch_size=32)
    repaired = recover(model, pruned, groups, plan, factory, method="lsq", ridge=0.0)
    want = run(model, data)[0]
    scale = np.abs(want).max()
    assert np.abs(run(pruned, data)[0] - want).max() > 0.1 * scale
    np.testing.assert_allclose(run(repaired, data)[0], want, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize(
    "pads,strides,dilations", [((1, 1, 1, 1), (1, 1), (1, 1)), ((0, 1, 2, 0), (2, 1), (1, 2))]
)
def test_patch_rows_reproduce_the_conv(pads, strides, dilations):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, C_IN, 3, 3)).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], pads=list(pads), strides=list(strides), dilations=list(dilations)
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C_IN, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    x = rng.standard_normal((2, C_IN, 7, 7)).astype(np.float32)
    y = run(model, {"x": x})[0]
    keep = np.arange(4)
    layer = LinearLayer("Conv", w, np.zeros(4), np.arange(C_IN), keep, pads, strides, dilations)
    rows = patch_rows(layer, x)
    np.testing.assert_allclose(rows @ layer.flat_weight().T, output_rows(layer, y), atol=1e-4)


def test_batchnorm_refresh_matches_the_output_moments():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 4)) * [1, 2, 3, 1e-4] + [0, 1, -2, 5]
    x_pruned = x * [0.5, 1.1, 2.0, 1e-3] + [0.3, -1, 0, 0]
    rm, rv, gamma, eps = np.array([0.1, 0.9, -2, 5]), np.array([1.0, 3, 8, 1]), np.ones(4), 1e-3

    def bn(v, mean, var, g):
        return g * (v - mean) / np.sqrt(var + eps)

    moments = (x.mean(0), x.var(0)), (x_pruned.mean(0), x_pruned.var(0))
    new_rm, new_rv, new_gamma = refreshed_batchnorm(*moments, (rm, rv), gamma, eps)
    before, after = bn(x, rm, rv, gamma), bn(x_pruned, new_rm, new_rv, new_gamma)
    np.testing.assert_allclose(after.mean(0), before.mean(0), atol=1e-9)
    np.testing.assert_allclose(after.std(0), before.std(0), rtol=1e-9)
    assert (new_rv >= 0).all() and new_rv[3] == 0 and new_gamma[3] > 1  # clamped, gamma absorbs


# --- the digits model -------------------------------------------------------------------


def _ratio_for(graph, groups, target: float) -> float:
    """Smallest uniform ratio whose MACs reduction reaches ``target`` (bisection)."""
    base = model_stats(graph).macs
    zeros = {g.name: np.zeros(g.size) for g in groups.prunable}

    def reduction(r: float) -> float:
        return (
            1
            - model_stats(remove_channels(graph, groups, uniform_plan(groups, zeros, r))).macs
            / base
        )

    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reduction(mid) >= target else (mid, hi)
    assert reduction(hi) >= target
    return hi


@pytest.fixture(scope="module")
def digits():
    model = normalize_model(str(EXAMPLES / "digits_resnet.onnx"))
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    factory = calib_factory(str(EXAMPLES / "digits_calib.npz"), model, batch_size=64, limit=256)
    test = str(EXAMPLES / "digits_test.npz")
    return model, graph, groups, factory, test, evaluate(model, test).top1


def _check_recovery_at_half_flops(digits, criterion: str) -> None:
    from onnx_hwprune.recovery import data_importance

    model, graph, groups, factory, test, base = digits
    if criterion in ("l1", "l2", "bn"):
        scores = channel_importance(graph, groups, criterion)
    else:
        scores = data_importance(model, groups, criterion, factory)
    plan = uniform_plan(groups, scores, _ratio_for(graph, groups, 0.5))
    pruned = export_model(remove_channels(graph, groups, plan))
    repaired = recover(model, pruned, groups, plan, factory, method="lsq")
    plain, fixed = evaluate(pruned, test).top1, evaluate(repaired, test).top1
    assert fixed > plain, (criterion, plain, fixed)
    assert fixed >= base - 0.02, (criterion, base, fixed)


def test_lsq_recovery_on_digits_at_half_the_flops(digits):
    _check_recovery_at_half_flops(digits, "l1")


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["l2", "bn", "mean_abs", "apoz", "reconstruction"])
def test_lsq_recovery_on_digits_every_criterion(digits, criterion):
    _check_recovery_at_half_flops(digits, criterion)


# --- bad calibration input --------------------------------------------------------------


def _bad_sources(tmp_path: Path) -> dict[str, object]:
    good = np.zeros((4, 1, 8, 8), np.float32)
    np.savez(tmp_path / "shape.npz", input=np.zeros((4, 1, 7, 8), np.float32))
    np.savez(tmp_path / "dtype.npz", input=good.astype(np.float64))
    np.savez(tmp_path / "name.npz", image=good)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    names = ("shape.npz", "dtype.npz", "name.npz", "empty", "broken", "missing.npz")
    return {name: str(tmp_path / name) for name in names}


def test_bad_calibration_data_raises_user_error(tmp_path, digits):
    from onnx_hwprune.recovery import data_importance

    model, _, groups, _, _, _ = digits
    for name, source in _bad_sources(tmp_path).items():
        with pytest.raises(UserError) as err:
            factory = calib_factory(source, model)
            data_importance(model, groups, "mean_abs", factory)
        assert "\n" not in str(err.value), name


def test_bad_batches_surface_in_recover(digits):
    model, graph, groups, _, _, _ = digits
    plan = uniform_plan(groups, channel_importance(graph, groups, "l1"), 0.5)
    pruned = export_model(remove_channels(graph, groups, plan))
    wrong = [{"input": np.zeros((2, 1, 8, 8), np.float64)}]
    with pytest.raises(UserError, match="type") as err:  # unchecked batches: onnxruntime's word
        recover(model, pruned, groups, plan, lambda: iter(wrong))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="generator"):
        calib_factory((b for b in wrong), model)
    assert math.isfinite(model_stats(load_graph(pruned)).macs)


def _three_layers(rng) -> onnx.ModelProto:
    """conv1 (prunable) -> ReLU -> conv2 (the consumer) -> ReLU -> conv3, plus a branch
    conv0 -> y0 that reads the input only (nothing upstream of it changes)."""
    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "w1", "b1"], ["pre"], pads=[1] * 4), mk("Relu", ["pre"], ["mid"]),
        mk("Conv", ["mid", "w2", "b2"], ["h"], pads=[1] * 4), mk("Relu", ["h"], ["h2"]),
        mk("Conv", ["h2", "w3", "b3"], ["y3"]), mk("Conv", ["x", "w0"], ["y0"]),
        mk("Add", ["y3", "y0"], ["y"]),
    ]  # fmt: skip
    inits = {
        "w1": rng.standard_normal((C_MID, C_IN, 3, 3)) / 4, "b1": rng.standard_normal(C_MID) / 4,
        "w2": rng.standard_normal((6, C_MID, 3, 3)) / 8, "b2": rng.standard_normal(6) / 4,
        "w3": rng.standard_normal((5, 6, 1, 1)) / 2, "b3": rng.standard_normal(5),
        "w0": rng.standard_normal((5, C_IN, 1, 1)),
    }  # fmt: skip
    return _model(nodes, inits, (5, HW, HW))


def test_downstream_layers_are_refitted_too():
    """The consumer's refit cannot repair what the removed channels carried; with
    ``downstream`` the layer after it is refitted on the consumer's repaired output to
    the original's, and since it is the last layer (its least-squares fit *is* the
    output's), the network's output can only move less. Layers upstream and on branches
    that do not read a changed tensor are left alone."""
    from onnx_hwprune.passes.transform._recover_ir import consumer_layers
    from onnx_hwprune.passes.transform.remove_channels import kept_positions

    rng = np.random.default_rng(5)
    model = _three_layers(rng)
    groups, plan, pruned = _prune(model, [0, 2, 3, 6])
    kept = kept_positions(groups, plan)
    chained = [c.weight for c in consumer_layers(load_graph(model), kept, True)]
    assert chained == ["w2", "w3"]
    assert [c.weight for c in consumer_layers(load_graph(model), kept)] == ["w2"]
    data = _data(rng, 64)
    factory = calib_factory(data, model, batch_size=16)
    want = run(model, data)[0]

    def error(downstream):
        out = recover(model, pruned, groups, plan, factory, downstream=downstream)
        verify_model(out)
        return float(np.mean((run(out, data)[0] - want) ** 2))

    alone, chained = error(False), error(True)
    assert chained < 0.99 * alone, (alone, chained)
