"""The ONNX->torch converter runs LayerNorm as exported op by op (ReduceMean, Sub, Pow,
Sqrt, Div) and Squeeze/Unsqueeze, as PP-OCRv5's recognizer holds them (distill failed on
it with 'op Unsqueeze is not supported')."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.runtime.activations import make_session

torch = pytest.importorskip("torch", reason="the converter needs the torch extra")

from onnx_hwprune.runtime.torch_convert import OnnxModule  # noqa: E402


def _layernorm_model(opset: int) -> onnx.ModelProto:
    """x (N, C, W) -> Unsqueeze(2) -> Squeeze(2) -> LayerNorm over the last axis."""
    axes_inputs = opset >= 13
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]  # fmt: skip
    if axes_inputs:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        squeeze_in = {"inputs": ["u", "axes"]}
        unsqueeze = helper.make_node("Unsqueeze", ["x", "axes"], ["u"])
    else:
        squeeze_in = {"inputs": ["u"], "axes": [2]}
        unsqueeze = helper.make_node("Unsqueeze", ["x"], ["u"], axes=[2])
    squeeze = helper.make_node("Squeeze", squeeze_in.pop("inputs"), ["s"], **squeeze_in)
    nodes = [
        unsqueeze,
        squeeze,
        helper.make_node("ReduceMean", ["s"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["s", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 13])
def test_layernorm_and_squeeze_match_onnxruntime(opset):
    model = _layernorm_model(opset)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 6)).astype(np.float32)
    want = make_session(model).run(None, {"x": x})[0]
    with torch.no_grad():
        got = OnnxModule(model)(torch.from_numpy(x))[0].numpy()
    assert got.shape == want.shape == (2, 4, 6)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.mean(-1), 0.0, atol=1e-5)  # normalised: it is LayerNorm
