"""Data-free bias compensation from BatchNorm statistics (issue 11)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import session
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.bias_compensation import (
    apply_deltas,
    compensation_deltas,
    expected_activation,
)
from onnx_hwprune.passes.transform.remove_channels import kept_positions, remove_channels


def _model(act: str, consumer_bias: bool) -> onnx.ModelProto:
    """x -> Conv a (4->4, 1x1) -> BN -> act -> Conv b (4->3, 3x3, pad 0) -> y.

    BN channel 2 has scale 0: whatever x is, that channel is the constant act(0.7).
    """
    rng = np.random.default_rng(0)
    gamma = np.array([1.0, 0.5, 0.0, 2.0], np.float32)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "Wa"),
        numpy_helper.from_array(gamma, "g"),
        numpy_helper.from_array(np.array([0.1, -0.2, 0.7, 0.3], np.float32), "be"),
        numpy_helper.from_array(np.zeros(4, np.float32), "m"),
        numpy_helper.from_array(np.ones(4, np.float32), "v"),
        numpy_helper.from_array(rng.standard_normal((3, 4, 3, 3)).astype(np.float32), "Wb"),
        numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "Bb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "Wa"], ["a"], name="conv_a"),
        helper.make_node(
            "BatchNormalization", ["a", "g", "be", "m", "v"], ["bn"], name="bn", epsilon=0.0
        ),  # fmt: skip
        *_act(act),
        helper.make_node(
            "Conv", ["r", "Wb"] + (["Bb"] if consumer_bias else []), ["y"], name="conv_b"
        ),  # fmt: skip
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [i for i in inits if consumer_bias or i.name != "Bb"],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _act(act: str) -> list[onnx.NodeProto]:
    if act == "silu":
        return [
            helper.make_node("Sigmoid", ["bn"], ["s"]),
            helper.make_node("Mul", ["bn", "s"], ["r"]),
        ]
    return [helper.make_node(act, ["bn"], ["r"])]


def _prune_channel_2(model: onnx.ModelProto, compensate: bool) -> onnx.ModelProto:
    mod = ChannelGroupAnalysis()(Module(load_graph(model)), PassContext())
    group = next(g for g in mod.groups.prunable if any(m.node == "conv_a" for m in g.members))
    plan = Plan({group.name: GroupPlan(4, (0, 1, 3))}, method="test")
    graph = remove_channels(mod.graph, mod.groups, plan)
    if compensate:
        comp = compensation_deltas(mod.graph, mod.groups, plan)
        assert comp.channels == 1 and not comp.skipped
        assert apply_deltas(graph, comp, kept_positions(mod.groups, plan)) == 1
    return export_model(graph)


@pytest.mark.parametrize("act", ["Relu", "silu", "HardSwish", "Sigmoid"])
@pytest.mark.parametrize("consumer_bias", [True, False])
def test_removing_a_constant_channel_is_exact_with_compensation(act, consumer_bias):
    model = _model(act, consumer_bias)
    x = {"x": np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    (want,) = session(model).run(None, x)
    (got,) = session(_prune_channel_2(model, True)).run(None, x)
    (plain,) = session(_prune_channel_2(model, False)).run(None, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(plain - want).max() > 1e-2  # without it, the output moves


def test_expectations_match_sampling():
    rng = np.random.default_rng(0)
    mu, sigma = np.array([-1.0, 0.0, 0.8]), np.array([0.5, 1.0, 2.0])
    samples = mu[:, None] + sigma[:, None] * rng.standard_normal((3, 400_000))
    relu = expected_activation("relu", mu, sigma)
    np.testing.assert_allclose(relu, np.maximum(samples, 0).mean(axis=1), atol=5e-3)
    silu = expected_activation(lambda v: v / (1 + np.exp(-v)), mu, sigma)
    np.testing.assert_allclose(silu, (samples / (1 + np.exp(-samples))).mean(axis=1), atol=5e-3)


def test_the_pruning_job_imports_without_scipy():
    """scipy is no dependency of the base install: the Quickstart's fresh ``pip install
    -e .`` failed when the bias compensation imported it. Block it and import the job."""
    import subprocess
    import sys

    code = "import sys; sys.modules['scipy'] = None; import onnx_hwprune.api, onnx_hwprune.cli"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
