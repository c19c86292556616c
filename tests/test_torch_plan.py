"""A plan applied to the PyTorch model gives the pruned ONNX model's outputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from onnx import numpy_helper

from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.torch_plan import apply_plan_to_torch, load_onnx_weights

ROOT = Path(__file__).resolve().parent.parent
torch = pytest.importorskip("torch", reason="torch (a dev extra) is not installed")
pytestmark = pytest.mark.torch


def _digits_module():
    """``DigitsResNet`` from tools/train_digits.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "train_digits", ROOT / "tools" / "train_digits.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_digits", module)
    spec.loader.exec_module(module)
    return module.DigitsResNet()


def _forward(net, x: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_plan_on_torch_matches_pruned_onnx(ratio):
    model = normalize_model(str(ROOT / "examples" / "digits_resnet.onnx"))
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    plan = uniform_plan(groups, channel_importance(graph, groups, "l1"), ratio)
    pruned = export_model(remove_channels(graph, groups, plan))
    x = np.load(ROOT / "examples" / "digits_test.npz")["input"]

    net = _digits_module()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(load_onnx_weights(net, weights)) == len(weights)
    np.testing.assert_allclose(_forward(net, x), run(model, {"input": x})[0], atol=1e-4)

    apply_plan_to_torch(net, plan.to_json(), groups)
    assert net.stem[0].out_channels == net.stem[1].num_features == net.block1.conv1.in_channels
    assert net.block3.conv2.out_channels == net.fc.in_features < 64
    np.testing.assert_allclose(_forward(net, x), run(pruned, {"input": x})[0], atol=1e-4)
    for tensor in pruned.graph.initializer:  # same names, same shapes as the pruned ONNX
        assert tuple(dict(net.state_dict())[tensor.name].shape) == tuple(tensor.dims)
