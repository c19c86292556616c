"""The real model zoo shipped inside the onnx package: every model analyses and prunes
at ratio 0.3 into a valid model that runs (weights made random first: the zoo's own
are ConstantOfShape placeholders)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import random_inputs, run

from onnx_hwprune import prune
from onnx_hwprune.testing.zoo import LIGHT_ZOO, load_light_zoo

# The three large ones (VGG-19, AlexNet, ZFNet: 0.2-0.5 GB of FC weights) take ~10-30 s each.
_LARGE = {"vgg19", "bvlc_alexnet", "zfnet512"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _LARGE else n for n in LIGHT_ZOO]
)
def test_light_zoo_model_prunes_and_runs(name):
    model = load_light_zoo(name, seed=0)
    result = prune(model, ratio=0.3)
    assert result.model is not None, result.reason
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert report["groups"]["pruned"] > 0
    macs_before, macs_after = report["network"]["macs"]
    assert macs_after < macs_before
    feeds = random_inputs(result.model, batch=1)
    out = run(result.model, feeds)[0]
    expected = run(model, feeds)[0]
    assert out.shape == expected.shape and np.isfinite(out).all()


def test_benchmark_networks_load_by_name():
    """The latency benchmarks' five networks, at the size asked (DenseNet-121: the zoo's)."""
    from onnx_hwprune.testing.zoo import BENCHMARK_NETWORKS, benchmark_network

    def side(model):
        return model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value

    for name in BENCHMARK_NETWORKS:
        model = benchmark_network(name, image_size=64)
        onnx.checker.check_model(model)
        assert side(model) == (224 if name == "densenet121" else 64), name
