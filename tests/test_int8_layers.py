"""Int8 layer signatures and micro-benchmarks: QDQ layers get their own signature
(dtype int8) and their one-layer models run as onnxruntime's fused int8 kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from helpers import random_inputs

from onnx_hwprune.cost_models.signature import LayerSignature, extract_layers
from onnx_hwprune.frontends.onnx import normalize_model
from onnx_hwprune.runtime.microbench import build_layer_model
from onnx_hwprune.runtime.node_profile import attribute_to_layers, profile_nodes
from onnx_hwprune.runtime.ort_cpu import random_feeds
from onnx_hwprune.runtime.quantize import quantize_int8
from onnx_hwprune.testing.families import FAMILIES

_CONV = dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), input_hw=(8, 8))
_INT8 = dict(dtype="int8", bias=True)


def _optimized(model: onnx.ModelProto, tmp_path) -> onnx.GraphProto:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return onnx.load(tmp_path / "opt.onnx").graph


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    return [n.op_type for n in _optimized(model, tmp_path).node]


def _kernels(graph: onnx.GraphProto) -> list[tuple]:
    """(op, channels_last, group) of each int8 conv kernel in an optimized graph."""
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in graph.node if n.op_type == "QLinearConv"]  # fmt: skip
    return [("QLinearConv", a.get("channels_last", 0), a.get("group", 1)) for a in attrs]


@pytest.fixture(scope="module")
def qdq_model():
    model = normalize_model(FAMILIES["mobilenetv2"]())
    batches = [random_inputs(model, batch=1, seed=s) for s in range(2)]
    return model, normalize_model(quantize_int8(model, lambda: iter(batches)))


@pytest.mark.parametrize(
    "sig, kernel",
    [
        (LayerSignature(op="Conv", activation="Relu", **_INT8, **_CONV), "QLinearConv"),
        (LayerSignature(op="Conv", group_kind="depthwise", **_INT8, **_CONV), "QLinearConv"),
        (LayerSignature(op="Gemm", **_INT8), "QGemm"),
    ],
    ids=["conv_relu", "depthwise", "gemm"],
)  # fmt: skip
def test_int8_layer_runs_as_the_fused_int8_kernel(sig, kernel, tmp_path):
    model = build_layer_model(sig, 16, 24)
    onnx.checker.check_model(model, full_check=True)
    ops = _optimized_ops(model, tmp_path)
    assert kernel in ops, ops
    assert not {"Conv", "FusedConv", "Gemm", "FusedGemm"} & set(ops), ops  # no float kernel
    float_model = build_layer_model(LayerSignature(**{**sig.__dict__, "dtype": "float32"}), 16, 24)
    assert model.graph.output[0].type == float_model.graph.output[0].type


def test_qdq_model_layers_have_int8_signatures():
    model = normalize_model(FAMILIES["resnet_basic"]())
    batches = [random_inputs(model, batch=1, seed=s) for s in range(2)]
    qdq = normalize_model(quantize_int8(model, lambda: iter(batches)))
    float_layers = {layer.node: layer for layer in extract_layers(gs.import_onnx(model))}
    int8_layers = {layer.node: layer for layer in extract_layers(gs.import_onnx(qdq))}
    assert set(int8_layers) == set(float_layers)
    for name, layer in int8_layers.items():
        f = float_layers[name]
        assert layer.signature.dtype == "int8" and f.signature.dtype == "float32"
        assert (layer.in_channels, layer.out_channels) == (f.in_channels, f.out_channels)
        assert layer.signature.key() != f.signature.key()  # stored apart in the profile DB


def test_int8_conv_is_timed_as_the_kernel_the_network_runs(qdq_model, tmp_path):
    """An int8 conv's micro-benchmark is the bare channels-last QLinearConv that
    onnxruntime leaves of it in the network: no quantize, transposes or dequantize, which
    the network pays once at its boundary (measured: up to 65% of a lone depthwise's)."""
    _, qdq = qdq_model
    layers = extract_layers(gs.import_onnx(qdq))
    convs = [layer for layer in layers if layer.signature.op == "Conv"]
    assert convs and all(layer.signature.layout == "nhwc" for layer in convs)
    in_network = _kernels(_optimized(qdq, tmp_path))
    for layer in convs:
        model = build_layer_model(layer.signature, layer.in_channels, layer.out_channels)
        (alone,) = _kernels(_optimized(model, tmp_path))
        assert alone in in_network, (alone, in_network)
        assert len(model.graph.node) == 1  # nothing else is timed
        feeds = random_feeds(model)
        (x,) = feeds.values()
        assert x.dtype == np.uint8 and len(np.unique(x)) > 200  # every code, not casts
        (y,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
        assert y.dtype == np.uint8 and y.shape[-1] == layer.out_channels  # NHWC


def test_int8_signatures_are_stored_apart_from_the_old_qdq_timings(qdq_model):
    _, qdq = qdq_model
    for layer in extract_layers(gs.import_onnx(qdq)):
        old = LayerSignature(**{**layer.signature.__dict__, "layout": ""})
        assert (layer.signature.key() != old.key()) == (layer.signature.op == "Conv")
        assert '"layout"' not in old.key()  # the keys of earlier profiles are unchanged


def test_int8_model_layers_get_their_in_context_time(qdq_model):
    """onnxruntime names the QLinearConv it fused of a QDQ conv "<conv>_token_<n>"."""
    _, qdq = qdq_model
    layers = [layer.node for layer in extract_layers(gs.import_onnx(qdq))]
    node_ms = profile_nodes(qdq, threads=1, runs=2)
    assert any("_token_" in name for name in node_ms)
    ctx = attribute_to_layers(qdq, node_ms, layers, total_ms=1.0)
    convs = [n.name for n in qdq.graph.node if n.op_type == "Conv"]
    assert all(ctx.layer_ms[name] > 0 for name in convs), ctx.layer_ms
    assert ctx.residual_ms < 1.0
