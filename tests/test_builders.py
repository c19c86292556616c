"""Tests of the ONNX model builders: validity, numbers, determinism, symbolic batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_hwprune.testing import IR_VERSION, GraphBuilder
from onnx_hwprune.testing.families import FAMILIES, INPUT_SHAPE, output_shape
from onnx_hwprune.testing.networks import NETWORKS, NUM_CLASSES
from onnx_hwprune.testing.zoo import LIGHT_ZOO, light_zoo_path, load_light_zoo

# Models over ~300 MB take seconds to build, check and run.
_SLOW_NETWORKS = {"vgg16"}
_SLOW_ZOO = {"vgg19"}


def _params(names, slow):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _image(batch: int, channels: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(123)
    return rng.standard_normal((batch, channels, size, size), dtype=np.float32)


def _assert_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _assert_output(y: np.ndarray, shape: tuple[int, ...]) -> None:
    assert y.shape == shape
    assert np.isfinite(y).all()
    assert np.ptp(y) > 0, "all outputs are equal"


def _assert_builder_conventions(model: onnx.ModelProto) -> None:
    graph = model.graph
    assert model.ir_version == IR_VERSION
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    names = [n.name for n in graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert all(
        t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for t in graph.initializer
    )


# ------------------------------------------------------------------------ families
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_valid_and_runs(name: str) -> None:
    model = FAMILIES[name]()
    _assert_valid(model)
    _assert_builder_conventions(model)
    assert model.opset_import[0].version == 17
    y = _run(model, _image(1, *INPUT_SHAPE[:1], INPUT_SHAPE[1]))
    _assert_output(y, output_shape(name, 1))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_deterministic(name: str) -> None:
    first = FAMILIES[name](seed=3).SerializeToString(deterministic=True)
    assert first == FAMILIES[name](seed=3).SerializeToString(deterministic=True)
    assert first != FAMILIES[name](seed=4).SerializeToString(deterministic=True)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_symbolic_batch(name: str) -> None:
    model = FAMILIES[name](batch="N")
    _assert_valid(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = _image(2, *INPUT_SHAPE[:1], INPUT_SHAPE[1])
    y = _run(model, x)
    _assert_output(y, output_shape(name, 2))
    # A symbolic batch changes constants only, not the weights: same numbers per sample.
    np.testing.assert_allclose(y[:1], _run(FAMILIES[name](), x[:1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [14, 18])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_other_opsets(name: str, opset: int) -> None:
    model = FAMILIES[name](opset=opset)
    _assert_valid(model)
    assert model.opset_import[0].version == opset
    _assert_output(_run(model, _image(1, 3, 32)), output_shape(name, 1))


_EXPECTED_OPS = {
    "vgg": {"Flatten", "Gemm", "MaxPool", "BatchNormalization"},
    "vgg_reshape": {"Reshape", "Gemm"},
    "resnet_basic": {"Add", "GlobalAveragePool"},
    "resnet_bottleneck": {"Add"},
    "resnext": {"Add"},
    "mobilenetv2": {"Clip", "Add"},
    "se": {"HardSwish", "Sigmoid", "Mul", "PRelu", "GlobalAveragePool"},
    "shufflenet": {"Split", "Concat", "Reshape", "Transpose"},
    "squeezenet": {"Concat"},
    "densenet": {"Concat", "AveragePool"},
    "inception": {"Concat", "MaxPool"},
    "unet": {"ConvTranspose", "Resize", "Concat"},
    "split": {"Split", "Slice", "Concat"},
    "per_channel_affine": {
        "Mul", "Add", "Sub", "Div", "LeakyRelu", "Tanh", "HardSigmoid", "Dropout", "Identity",
        "Pad", "MaxPool", "AveragePool", "ReduceMean", "InstanceNormalization", "MatMul",
    },
}  # fmt: skip


def test_every_family_has_expected_ops() -> None:
    assert set(_EXPECTED_OPS) == set(FAMILIES)
    for name, ops in _EXPECTED_OPS.items():
        present = {n.op_type for n in FAMILIES[name]().graph.node}
        assert ops <= present, f"{name} lacks {ops - present}"


def _conv_attrs(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...]]]:
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out[node.name] = (group, inits[node.input[1]])
    return out


def test_grouped_and_depthwise_convs() -> None:
    mbv2 = _conv_attrs(FAMILIES["mobilenetv2"]())
    assert mbv2["multiplier.conv"] == (24, (48, 1, 3, 3))
    assert mbv2["block3.dw.conv"] == (64, (64, 1, 3, 3))
    resnext = _conv_attrs(FAMILIES["resnext"]())
    assert resnext["stage1.block0.conv2"] == (4, (32, 8, 3, 3))


def test_constants_are_hard_coded() -> None:
    inits = {
        t.name: onnx.numpy_helper.to_array(t) for t in FAMILIES["vgg_reshape"]().graph.initializer
    }
    assert inits["classifier.reshape.shape"].tolist() == [1, 64 * 4 * 4]
    sym = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in FAMILIES["vgg_reshape"](batch="N").graph.initializer
    }
    assert sym["classifier.reshape.shape"].tolist() == [0, 64 * 4 * 4]
    split = {t.name: onnx.numpy_helper.to_array(t) for t in FAMILIES["split"]().graph.initializer}
    assert split["split.sizes"].tolist() == [8, 10, 6]
    shuffle = {
        t.name: onnx.numpy_helper.to_array(t) for t in FAMILIES["shufflenet"]().graph.initializer
    }
    assert shuffle["unit1.shuffle.reshape1.shape"].tolist() == [1, 2, 12, 32, 32]


def test_batchnorm_is_not_identity() -> None:
    inits = {
        t.name: onnx.numpy_helper.to_array(t) for t in FAMILIES["resnet_basic"]().graph.initializer
    }
    assert (inits["stem.bn.var"] > 0).all()
    assert np.ptp(inits["stem.bn.mean"]) > 0 and np.ptp(inits["stem.bn.scale"]) > 0


def test_docstrings_state_channel_groups() -> None:
    for name, build in FAMILIES.items():
        assert "Channel groups" in (build.__doc__ or "") or "Couplings" in (build.__doc__ or ""), (
            name
        )


def test_graph_builder_rejects_bad_groups() -> None:
    g = GraphBuilder("bad")
    x = g.input(6, 8, 8)
    with pytest.raises(ValueError, match="groups"):
        g.conv(x, 8, 3, groups=4)


# ------------------------------------------------------------------------ networks
_NETWORK_CONVS = {"resnet18": 20, "resnet50": 53, "mobilenet_v2": 52, "vgg16": 13}


@pytest.mark.parametrize("name", _params(sorted(NETWORKS), _SLOW_NETWORKS))
def test_network_valid_and_runs(name: str) -> None:
    model = NETWORKS[name](batch="N")
    _assert_valid(model)
    _assert_builder_conventions(model)
    assert Counter(n.op_type for n in model.graph.node)["Conv"] == _NETWORK_CONVS[name]
    _assert_output(_run(model, _image(2, 3, 224)), (2, NUM_CLASSES))


@pytest.mark.parametrize("name", _params(sorted(NETWORKS), _SLOW_NETWORKS))
def test_network_deterministic(name: str) -> None:
    first = NETWORKS[name]().SerializeToString(deterministic=True)
    assert first == NETWORKS[name]().SerializeToString(deterministic=True)


def test_network_image_size() -> None:
    model = NETWORKS["resnet18"](image_size=64)
    _assert_valid(model)
    _assert_output(_run(model, _image(1, 3, 64)), (1, NUM_CLASSES))


# ------------------------------------------------------------------------ light zoo
@pytest.mark.parametrize("name", _params(LIGHT_ZOO, _SLOW_ZOO))
def test_light_zoo_valid_and_runs(name: str) -> None:
    model = load_light_zoo(name)
    _assert_valid(model)
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    assert "ConstantOfShape" not in ops
    init_names = {t.name for t in graph.initializer}
    assert not any(name.endswith("__SHAPE") for name in init_names)
    assert len(graph.input) == 1 and graph.input[0].name not in init_names
    assert model.opset_import[0].version == 9
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    y = _run(model, _image(dims[0], dims[1], dims[2]))
    assert y.shape[:2] == (1, 1000)
    _assert_output(y, y.shape)


@pytest.mark.parametrize("name", _params(LIGHT_ZOO, _SLOW_ZOO))
def test_light_zoo_deterministic(name: str) -> None:
    first = load_light_zoo(name, seed=1).SerializeToString(deterministic=True)
    assert first == load_light_zoo(name, seed=1).SerializeToString(deterministic=True)


def test_light_zoo_path() -> None:
    assert light_zoo_path("resnet50").name == "light_resnet50.onnx"
    with pytest.raises(KeyError, match="known"):
        light_zoo_path("alexnet")
