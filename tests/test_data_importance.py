"""Data-driven criteria: each against a numpy reference, streaming, and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import load_graph, normalize_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.data_importance import (
    DATA_CRITERIA,
    observed_members,
    required_statistics,
)
from onnx_hwprune.recovery import data_importance
from onnx_hwprune.runtime.activations import with_extra_outputs
from onnx_hwprune.runtime.calib_stats import REDUCERS
from onnx_hwprune.testing.families import FAMILIES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _conv_relu_conv(rng) -> onnx.ModelProto:
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["pre"], name="c1", pads=[1] * 4),
            helper.make_node("Relu", ["pre"], ["mid"], name="r"),
            helper.make_node("Conv", ["mid", "w2"], ["y"], name="c2", pads=[1] * 4),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in (("w1", w1), ("b1", b1), ("w2", w2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return normalize_model(model)


def _reference(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    mid = run(with_extra_outputs(model, ["mid"]), {"x": x})[1].astype(np.float64)
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    axes = (0, 2, 3)
    return {
        "mean_abs": np.abs(mid).mean(axis=axes),
        "apoz": 1.0 - (mid == 0).mean(axis=axes),
        "reconstruction": (mid**2).mean(axis=axes) * (w2.astype(np.float64) ** 2).sum((0, 2, 3)),
    }


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    model = _conv_relu_conv(rng)
    groups = analyze_channel_groups(load_graph(model))
    x = rng.standard_normal((50, 3, 6, 6)).astype(np.float32)
    return model, groups, x


@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
@pytest.mark.parametrize("batch_size", [7, 64])
def test_criteria_match_a_numpy_reference(small, criterion, batch_size):
    model, groups, x = small
    scores = data_importance(model, groups, criterion, calib_factory(x, model, batch_size))
    (name,) = [g.name for g in groups.prunable]
    np.testing.assert_allclose(scores[name], _reference(model, x)[criterion], rtol=1e-6)


def test_observed_tensors_are_the_consumer_inputs(small):
    model, groups, _ = small
    (group,) = groups.prunable
    assert [m.tensor for m in observed_members(group)] == ["mid"]
    for name, spec in DATA_CRITERIA.items():
        assert spec.reducer in REDUCERS, name
        assert required_statistics(groups, name) == {spec.reducer: ["mid"]}


def test_residual_group_averages_its_consumer_inputs():
    model = normalize_model(str(EXAMPLES / "digits_resnet.onnx"))
    groups = analyze_channel_groups(load_graph(model))
    group = groups["/stem/stem.0/Conv_output_0"]
    tensors = [m.tensor for m in observed_members(group)]
    assert tensors == ["/stem/stem.2/Relu_output_0", "/block1/relu_1/Relu_output_0"]
    data = np.load(EXAMPLES / "digits_calib.npz")["input"][:40]
    scores = data_importance(model, groups, "mean_abs", calib_factory(data, model, 16))
    values = run(with_extra_outputs(model, tensors), {"input": data})[1:]
    want = np.mean([np.abs(v.astype(np.float64)).mean(axis=(0, 2, 3)) for v in values], axis=0)
    np.testing.assert_allclose(scores[group.name], want, rtol=1e-6)
    assert set(scores) == {g.name for g in groups.prunable}


def test_unknown_criterion_is_refused(small):
    model, groups, x = small
    with pytest.raises(ValueError, match="unknown data criterion"):
        data_importance(model, groups, "l7", calib_factory(x, model))


def test_data_importance_pass_reads_the_context_provider():
    """The pass asks the context's provider for exactly the statistics it needs."""
    from onnx_hwprune.passes._infra import Module, PassContext, PassError
    from onnx_hwprune.passes.analysis.data_importance import DataImportance, required_statistics

    graph = load_graph(FAMILIES["vgg"]())
    groups = analyze_channel_groups(graph)
    asked = []

    def provider(g, requests):
        asked.append(requests)
        return {
            kind: {t: np.ones(_channels(g, t)) for t in names} for kind, names in requests.items()
        }

    mod = Module(graph, groups)
    with pytest.raises(PassError, match="activations"):
        DataImportance("mean_abs")(mod, PassContext())
    scores = DataImportance("mean_abs")(mod, PassContext(activations=provider)).scores
    assert asked == [required_statistics(groups, "mean_abs")]
    assert set(scores) == {g.name for g in groups.prunable}
    assert all(np.allclose(s, s[0]) for s in scores.values())  # equal statistics, equal scores


def _channels(graph, tensor: str) -> int:
    return int(graph.tensors()[tensor].shape[1])
