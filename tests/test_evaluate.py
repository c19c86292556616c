"""Tests for runtime/activations.py, runtime/evaluate.py and the ``eval`` CLI verb."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.cli_commands import eval as eval_cmd
from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.activations import (
    ChannelAPoZ,
    ChannelMeanAbs,
    collect_activations,
    make_session,
    with_extra_outputs,
)
from onnx_hwprune.runtime.evaluate import agreement, evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3, 1, 1)).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)


def _make(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _conv_net() -> onnx.ModelProto:
    """x[N,3,4,4] -> Conv1x1(4) -> Relu (``r``) -> GlobalAveragePool -> Flatten -> y[N,4]."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return _make(nodes, [x], [y], inits)


def _relu_ref(x: np.ndarray) -> np.ndarray:
    """numpy's version of the conv net's ``r`` tensor."""
    return np.maximum(np.einsum("oc,nchw->nohw", W[:, :, 0, 0], x) + B[:, None, None], 0)


def _scaled_net(scale: list[float]) -> onnx.ModelProto:
    """x[N,3] -> x * scale: its predictions are argmax(x * scale)."""
    k = numpy_helper.from_array(np.asarray(scale, np.float32), "k")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    return _make([helper.make_node("Mul", ["x", "k"], ["y"])], [x], [y], [k])


@pytest.mark.parametrize("shape", [(20, 5, 3, 3), (20, 7)])
def test_reducers_match_numpy_on_all_data(shape):
    data = np.maximum(RNG.normal(size=shape), 0).astype(np.float32)
    mean_abs, apoz = ChannelMeanAbs(), ChannelAPoZ()
    for chunk in np.array_split(data, [3, 4, 11]):
        mean_abs("t", chunk)
        apoz("t", chunk)
    axes = tuple(i for i in range(data.ndim) if i != 1)
    np.testing.assert_allclose(mean_abs.result("t"), np.abs(data).mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(apoz.result("t"), (data == 0).mean(axis=axes), rtol=1e-12)
    assert set(apoz.results()) == {"t"}


def test_reducer_rejects_rank_one_and_unknown_names():
    with pytest.raises(UserError, match="rank 1"):
        ChannelMeanAbs()("t", np.zeros(3, np.float32))
    with pytest.raises(KeyError):
        ChannelAPoZ().result("never-seen")


def test_collect_activations_of_intermediate_tensor():
    model = _conv_net()
    data = RNG.normal(size=(10, 3, 4, 4)).astype(np.float32)
    batches = [{"x": data[:4]}, {"x": data[4:]}]
    seen: list[tuple[str, tuple]] = []
    mean_abs, apoz = ChannelMeanAbs(), ChannelAPoZ()
    count = collect_activations(
        model, batches, ["r"], [mean_abs, apoz, lambda n, a: seen.append((n, a.shape))]
    )
    ref = _relu_ref(data)
    assert count == 10
    assert seen == [("r", (4, 4, 4, 4)), ("r", (6, 4, 4, 4))]
    np.testing.assert_allclose(mean_abs.result("r"), np.abs(ref).mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(apoz.result("r"), (ref == 0).mean(axis=(0, 2, 3)))
    assert len(model.graph.output) == 1, "the caller's model must not be modified"


def test_with_extra_outputs_types_and_fallback(monkeypatch):
    model = _conv_net()
    extra = with_extra_outputs(model, ["r", "y"])
    assert [o.name for o in extra.graph.output] == ["y", "r"]
    assert extra.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT

    def fail(_model):
        raise RuntimeError("inference unavailable")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    untyped = with_extra_outputs(model, ["c"])
    assert not untyped.graph.output[1].HasField("type")
    values = make_session(untyped).run(["c"], {"x": np.ones((1, 3, 4, 4), np.float32)})[0]
    assert values.shape == (1, 4, 4, 4)


def test_with_extra_outputs_unknown_tensor():
    with pytest.raises(UserError, match="'nope' is not produced"):
        with_extra_outputs(_conv_net(), ["nope"])


def test_make_session_rejects_invalid_model():
    broken = _conv_net()
    broken.graph.node[0].input[1] = "missing_weight"
    with pytest.raises(UserError, match="onnxruntime cannot load"):
        make_session(broken)


def _labelled(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x = RNG.normal(size=(50, 3)).astype(np.float32)
    labels = x.argmax(axis=1)
    labels[:7] = (labels[:7] + 1) % 3  # 7 of 50 wrong: accuracy 0.86
    path = tmp_path / "test.npz"
    np.savez(path, x=x, label=labels)
    return path, x, labels


def test_evaluate_accuracy_npz_and_dict(tmp_path):
    path, x, labels = _labelled(tmp_path)
    result = evaluate(_scaled_net([1, 1, 1]), path, batch_size=8)
    assert result.num_samples == 50
    assert result.top1 == pytest.approx(43 / 50)
    np.testing.assert_array_equal(result.predictions, x.argmax(axis=1))
    assert evaluate(_scaled_net([1, 1, 1]), {"x": x, "label": labels}).top1 == result.top1
    assert evaluate(_scaled_net([1, 1, 1]), x).top1 is None
    assert evaluate(_scaled_net([1, 1, 1]), path, limit=10).top1 == pytest.approx(3 / 10)


def test_agreement(tmp_path):
    path, x, _ = _labelled(tmp_path)
    scale = [1.0, 1.0, 3.0]
    expected = np.mean((x * scale).argmax(axis=1) == x.argmax(axis=1))
    assert 0 < expected < 1
    assert agreement(_scaled_net(scale), _scaled_net([1, 1, 1]), path) == pytest.approx(expected)
    assert agreement(_scaled_net(scale), _scaled_net(scale), [x[:5], x[5:]]) == 1.0
    with pytest.raises(UserError, match="read twice"):
        agreement(_scaled_net(scale), _scaled_net(scale), iter([x]))


def test_evaluate_bad_inputs(tmp_path):
    x = np.zeros((4, 3), np.float32)
    cases = [
        ({"x": x, "label": np.zeros(4, np.float32)}, "1-D integer"),
        ({"x": x, "label": np.zeros(2, np.int64)}, "2 entries for 4 samples"),
        ({"y": x}, "lacks input 'x'"),
    ]
    for data, message in cases:
        with pytest.raises(UserError, match=message):
            evaluate(_scaled_net([1, 1, 1]), data)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        evaluate(tmp_path / "bad.onnx", {"x": x})
    with pytest.raises(UserError, match="does not exist"):
        evaluate(tmp_path / "missing.onnx", {"x": x})
    images = {"x": np.zeros((2, 3, 4, 4), np.float32)}
    with pytest.raises(UserError, match="no output 'r'; it has y"):
        evaluate(_conv_net(), images, output_name="r")
    with pytest.raises(UserError, match="need \\[N, classes\\]"):
        evaluate(with_extra_outputs(_conv_net(), ["r"]), images, output_name="r")


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_eval_cli_text_and_json(tmp_path, capsys):
    path, _, _ = _labelled(tmp_path)
    onnx.save(_scaled_net([1, 1, 1]), tmp_path / "a.onnx")
    onnx.save(_scaled_net([1, 1, 3]), tmp_path / "ref.onnx")
    assert eval_cmd.run(_cli([str(tmp_path / "a.onnx"), "--data", str(path)])) == 0
    assert "top-1 accuracy: 0.8600" in capsys.readouterr().out
    argv = [
        str(tmp_path / "a.onnx"),
        "--data",
        str(path),
        "--reference",
        str(tmp_path / "ref.onnx"),
    ]
    assert eval_cmd.run(_cli([*argv, "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 50 and report["top1"] == pytest.approx(0.86)
    assert 0 < report["agreement"] < 1
    with pytest.raises(UserError, match="does not exist"):
        eval_cmd.run(_cli([str(tmp_path / "a.onnx"), "--data", str(tmp_path / "x.npz")]))


def test_shipped_example_reaches_97_percent():
    model, data = EXAMPLES / "digits_resnet.onnx", EXAMPLES / "digits_test.npz"
    assert model.exists(), "the example ships in examples/ (built by tools/train_digits.py)"
    result = evaluate(model, data, batch_size=128)
    assert result.num_samples == 450
    assert result.top1 >= 0.97
