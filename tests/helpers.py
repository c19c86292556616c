"""Shared helpers for the tests: running models and zeroing channels of a group."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnx_hwprune.passes.analysis.groups import ChannelGroup, ChannelGroups

# Roles of constants that define a channel's value; zeroing them all makes the channel 0
# after every zero-preserving op (Relu, BN with zero scale and shift, Add of zero...).
PRODUCER_ROLES = ("weight_out", "bias", "bn_scale", "norm_param", "norm_scale", "const")
# Ops that turn a zero channel into a non-zero one; a group whose channels pass through
# one of them before reaching a consumer's weights cannot be removed exactly by zeroing.
NOT_ZERO_PRESERVING = frozenset({"Sigmoid", "HardSigmoid", "Exp", "Cos", "Softplus", "Elu_"})


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_inputs(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session(model).get_inputs():
        shape = [d if isinstance(d, int) else batch for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def zero_channels(
    model: onnx.ModelProto, group: ChannelGroup, indices: list[int]
) -> onnx.ModelProto:
    """A copy of ``model`` where group channels ``indices`` are zero in every producer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    consumers_div = {n.input[1] for n in out.graph.node if n.op_type == "Div"}
    for member in group.members:
        if not member.is_param or member.role not in PRODUCER_ROLES or member.tensor not in inits:
            continue
        values = numpy_helper.to_array(inits[member.tensor]).copy()
        index = [slice(None)] * values.ndim
        index[member.axis] = member.positions(indices)
        values[tuple(index)] = 1.0 if member.tensor in consumers_div else 0.0
        inits[member.tensor].CopyFrom(numpy_helper.from_array(values, member.tensor))
    return out


def zero_preserving(model: onnx.ModelProto, group: ChannelGroup) -> bool:
    """False when any activation of the group is computed by an op that maps 0 to non-0
    (then zeroed filters do not give zero channels, and removal is not exact)."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return not any(
        producers.get(m.tensor) in NOT_ZERO_PRESERVING for m in group.members if not m.is_param
    )


def group_of(groups: ChannelGroups, tensor: str, axis: int = 1) -> list[ChannelGroup]:
    """The groups that have a member on ``(tensor, axis)``."""
    return [g for g in groups if (tensor, axis) in g.spaces()]


def tiny_cnn(size: int) -> onnx.ModelProto:
    """conv(3->8)+Relu -> conv(8->8)+Relu -> GAP -> Flatten -> Gemm(8->4) on size x size."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    shapes = (("w0", (8, 3, 3, 3)), ("w1", (8, 8, 3, 3)), ("wf", (4, 8)))
    weights = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", **conv),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "tiny", [x], [y], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model
