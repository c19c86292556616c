"""The union-find, the handler registry, and freezing of what is not understood."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
import pytest
from helpers import random_inputs, run
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune import prune
from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes.analysis._coupling import connected_components
from onnx_hwprune.passes.analysis._registry import DEFAULT_REGISTRY
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.handlers.elementwise import UnaryHandler


@pytest.mark.parametrize("seed", range(5))
def test_components_match_networkx(seed):
    rng = np.random.default_rng(seed)
    n = 500
    a, b = rng.integers(0, n, 400), rng.integers(0, n, 400)
    labels = connected_components(n, a, b)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(a.tolist(), b.tolist(), strict=True))
    components = list(nx.connected_components(graph))
    assert len(set(labels.tolist())) == len(components)
    for comp in components:
        assert len({labels[i] for i in comp}) == 1


def test_registry_refuses_duplicates():
    registry = DEFAULT_REGISTRY.copy()
    with pytest.raises(ValueError, match="duplicate handler for Relu"):
        registry.add(("Relu",), UnaryHandler())
    registry.add(("MyOp",), UnaryHandler(), since=1, until=10)
    registry.add(("MyOp",), UnaryHandler(), since=11)
    assert registry.lookup("MyOp", "", 12) is not None
    assert registry.lookup("Relu", "com.microsoft", 13) is None


def _chain(middle: onnx.NodeProto, domain_opsets=()) -> onnx.ModelProto:
    """conv1 -> middle -> conv2: the group between the convs depends on ``middle``."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        middle,
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w1, w2],
        value_info=[helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *domain_opsets])
    model.ir_version = 10
    return model


def test_elementwise_op_couples_the_convs():
    groups = analyze_channel_groups(
        load_graph(_chain(helper.make_node("Relu", ["a"], ["b"], name="mid")))
    )
    (group,) = groups.prunable
    assert {(m.node, m.role) for m in group.members} >= {
        ("conv1", "weight_out"),
        ("conv2", "weight_in"),
    }


def test_unknown_op_freezes_with_a_reason_and_the_model_still_prunes_nothing_wrong():
    custom = helper.make_node("Swizzle", ["a"], ["b"], name="mid", domain="my.ops")
    groups = analyze_channel_groups(load_graph(_chain(custom, [helper.make_opsetid("my.ops", 1)])))
    assert not groups.prunable
    assert any("no handler for op 'Swizzle'" in r for g in groups for r in g.frozen_reasons)


def test_lrn_freezes_and_the_rest_still_prunes():
    lrn = helper.make_node("LRN", ["a"], ["b"], name="mid", size=3)
    model = _chain(lrn)
    groups = analyze_channel_groups(load_graph(model))
    assert any("normalizes across channels" in r for g in groups for r in g.frozen_reasons)
    assert prune(model, ratio=0.5).model is None  # nothing else is prunable here


def test_gather_on_channels_is_not_guessed():
    idx = helper.make_node(
        "Constant", [], ["idx"], value=numpy_helper.from_array(np.arange(8, dtype=np.int64))
    )
    model = _chain(helper.make_node("Gather", ["a", "idx"], ["b"], name="mid", axis=1))
    model.graph.node.insert(0, idx)
    groups = analyze_channel_groups(load_graph(model))
    assert not groups.prunable
    feeds = random_inputs(model)
    assert run(model, feeds)[0].shape == (1, 4, 8, 8)
