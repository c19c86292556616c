"""Layer extraction, signature sharing, and the network cost model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.cost_models.network import LayerEntry, NetworkCostModel, prediction_report
from onnx_hwprune.cost_models.signature import LayerSignature, extract_layers
from onnx_hwprune.cost_models.staircase import AxisProfile, StaircaseModel


def _init(name, shape, rng):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def tiny_model() -> onnx.ModelProto:
    """conv(3->16)+BN+Relu, conv(16->16)+Relu twice (same signature), depthwise, Gemm."""
    rng = np.random.default_rng(0)
    inits = [_init("w0", (16, 3, 3, 3), rng), _init("w1", (16, 16, 3, 3), rng),
             _init("w2", (16, 16, 3, 3), rng), _init("wd", (16, 1, 3, 3), rng),
             _init("wf", (10, 16), rng), _init("bf", (10,), rng)]  # fmt: skip
    inits += [_init(n, (16,), rng) for n in ("s", "b", "m")]
    inits.append(numpy_helper.from_array(np.ones(16, np.float32), "v"))
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", **conv),
        helper.make_node("BatchNormalization", ["c0", "s", "b", "m", "v"], ["n0"], name="bn0"),
        helper.make_node("Relu", ["n0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "wd"], ["d"], name="dw", group=16, **conv),
        helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _graph(model):
    return gs.import_onnx(onnx.shape_inference.infer_shapes(model))


def test_extract_layers_signatures_and_sharing():
    layers = {layer.node: layer for layer in extract_layers(_graph(tiny_model()))}
    assert set(layers) == {"conv0", "conv1", "conv2", "dw", "fc"}
    c0 = layers["conv0"]
    assert (c0.in_channels, c0.out_channels) == (3, 16)
    assert c0.signature.bias and c0.signature.activation == "Relu"
    assert not c0.in_prunable and c0.out_prunable  # its input is the graph input
    assert layers["conv1"].signature == layers["conv2"].signature
    assert layers["dw"].signature.group_kind == "depthwise"
    assert layers["dw"].signature.axes() == ("ch",)
    fc = layers["fc"]
    assert (fc.in_channels, fc.out_channels) == (16, 10) and not fc.out_prunable


def test_signature_json_round_trip_and_key():
    sig = extract_layers(_graph(tiny_model()))[0].signature
    again = LayerSignature.from_dict(sig.to_dict())
    assert again == sig and hash(again) == hash(sig) and again.key() == sig.key()


def _flat_axis(full: int, ms: float) -> AxisProfile:
    return AxisProfile(full, full // 4, 1, ((full // 4, ms / 4, 0.0), (full, ms, 0.0)))


def _network() -> NetworkCostModel:
    model = StaircaseModel("k", "dense", 16, 16, 2.0, (("in", _flat_axis(16, 2.0)),
                                                       ("out", _flat_axis(16, 2.0))))  # fmt: skip
    entries = (LayerEntry("conv1", 16, 16, model, scale=1.5), LayerEntry("conv2", 16, 16, model))
    return NetworkCostModel("cpu", "fp", entries, residual_ms=1.0, measured_full_ms=8.0)


def test_network_prediction_sums_calibrated_layers_and_residual():
    net = _network()
    assert net.predict() == pytest.approx(2.0 * 1.5 + 2.0 + 1.0)
    detail = net.predict_detail({"conv1": (16, 4)})
    assert detail["layers"]["conv1"].ms == pytest.approx(0.5 * 1.5)
    assert detail["provenance"]["measured"] == 2
    assert net.layer_latency("conv2", 16, 10).provenance == "interpolated"
    assert net.stair_edges("conv1", "out")[0] == (16, 3.0)
    with pytest.raises(KeyError, match="nope"):
        net.layer("nope")


def test_network_model_round_trip():
    net = _network()
    assert NetworkCostModel.from_dict(net.to_dict()) == net
    followed = NetworkCostModel("cpu", "fp", (replace(net.layers[0], follower_ms=0.7),), 1.0)
    assert NetworkCostModel.from_dict(followed.to_dict()) == followed


def test_followers_scale_with_the_kept_out_channels_and_the_residual_does_not():
    """A layer's followers (activations, pooling on its output) cost in proportion to
    the out-channels kept; held in the residual instead, pruning would save nothing of
    them (PP-OCRv5: pruned variants 20-30% faster than such a model predicted)."""
    net = _network()
    followed = replace(net, layers=(replace(net.layers[0], follower_ms=2.0), net.layers[1]))
    assert followed.predict() == pytest.approx(net.predict() + 2.0)
    cut = {"conv1": (16, 4)}  # a quarter of the out-channels
    assert followed.predict(cut) == pytest.approx(net.predict(cut) + 2.0 * 4 / 16)
    assert followed.layer_latency("conv1", 16, 8).ms == pytest.approx(
        net.layer_latency("conv1", 16, 8).ms + 1.0
    )
    assert followed.stair_edges("conv1", "out")[0] == (16, 3.0 + 2.0)


def test_prediction_report():
    rep = prediction_report([("a", 11.0, 10.0), ("b", 9.0, 10.0)])
    assert rep["mape"] == pytest.approx(0.1)
    assert rep["rows"][0]["error"] == pytest.approx(0.1)


def test_grouped_conv_keeps_its_group_count_at_any_pruned_count():
    """Pruning narrows every group of a grouped conv and keeps the count (the analysis
    couples position b of every group): AlexNet's group=2 conv at 96 -> 2 channels."""
    from onnx_hwprune.cost_models.signature import LayerSignature, layer_shapes

    sig = LayerSignature(op="Conv", kernel=(3, 3), group_kind="grouped", in_per_group=48,
                         out_per_group=128, groups=2, input_hw=(13, 13))  # fmt: skip
    assert layer_shapes(sig, 96, 256) == ((1, 96, 13, 13), (256, 48, 3, 3), 2)
    assert layer_shapes(sig, 2, 6) == ((1, 2, 13, 13), (6, 1, 3, 3), 2)
    # a count the analysis never produces still gives a valid layer, never a division by 0
    assert layer_shapes(sig, 3, 6)[2] == 1
    assert "groups" not in LayerSignature(op="Conv").to_dict()  # old profile keys unchanged
