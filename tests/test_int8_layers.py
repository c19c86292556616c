"""Int8 layer signatures and micro-benchmarks: QDQ layers get their own signature
(dtype int8) and their one-layer models run as onnxruntime's fused int8 kernels."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from helpers import random_inputs

from onnx_hwprune.cost_models.signature import LayerSignature, extract_layers
from onnx_hwprune.frontends.onnx import normalize_model
from onnx_hwprune.runtime.microbench import build_layer_model
from onnx_hwprune.runtime.quantize import quantize_int8
from onnx_hwprune.testing.families import FAMILIES

_CONV = dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), input_hw=(8, 8))
_INT8 = dict(dtype="int8", bias=True)


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]


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
