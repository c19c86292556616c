"""RecoverPass as a pass: it rewrites the IR, never its inputs, and gets its numbers only
through ``PassContext.tensors``, batch by batch."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from test_recover import _data, _prune, _two_layer

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes._infra import Module, PassContext, PassError
from onnx_hwprune.passes.transform.recover import RecoverPass
from onnx_hwprune.recovery import recover
from onnx_hwprune.runtime.calib_stats import tensor_stream_provider


def _case(kind: str = "conv1x1_bn"):
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((8, 3, 3, 3)) / 5, rng.standard_normal(8)
    model = _two_layer(kind, w1, b1, relu=True, rng=rng)
    groups, plan, pruned = _prune(model, [1, 4, 6])
    return model, groups, plan, pruned, rng


def _weights(graph: gs.Graph) -> dict[str, np.ndarray]:
    return {
        t.name: np.array(t.values) for t in graph.tensors().values() if isinstance(t, gs.Constant)
    }


def test_pass_needs_the_tensor_provider():
    model, groups, plan, pruned, _ = _case()
    reference = Module(load_graph(model), groups, plan=plan)
    with pytest.raises(PassError, match="tensors"):
        RecoverPass(reference)(Module(gs.import_onnx(pruned)), PassContext())


def test_pass_leaves_its_inputs_alone_and_streams_batches():
    model, groups, plan, pruned, rng = _case()
    batches = [_data(rng, 16) for _ in range(5)]
    factory = calib_factory(batches, model)
    reference = Module(load_graph(model), groups, plan=plan)
    mod = Module(gs.import_onnx(pruned))
    before_ref, before_mod = _weights(reference.graph), _weights(mod.graph)
    provide = tensor_stream_provider(factory)
    seen: list[int] = []

    def counting(requests):  # every request gets one tuple per batch, one dict per graph
        for values in provide(requests):
            assert len(values) == len(requests)
            seen.append(len(next(iter(values[0].values()))))
            yield values

    out = RecoverPass(reference, "lsq")(mod, PassContext(tensors=counting))
    assert out.graph is not mod.graph
    for before, graph in ((before_ref, reference.graph), (before_mod, mod.graph)):
        after = _weights(graph)
        assert all(np.array_equal(before[k], after[k]) for k in before)
    # one consumer: a refit pass and a BatchNorm pass, each over all 5 batches of 16
    assert seen == [16] * 10
    changed = _weights(out.graph)
    assert not np.array_equal(changed["w2"], before_mod["w2"])
    assert not np.array_equal(changed["v"], before_mod["v"])  # the BN's running variance


def test_composed_recover_equals_the_pass():
    model, groups, plan, pruned, rng = _case("gemm")
    factory = calib_factory([_data(rng, 32)], model)
    via_api = recover(model, pruned, groups, plan, factory, method="lsq")
    reference = Module(load_graph(model), groups, plan=plan)
    ctx = PassContext(tensors=tensor_stream_provider(factory))
    via_pass = RecoverPass(reference, "lsq")(Module(gs.import_onnx(pruned)), ctx)
    api_weights, pass_weights = _weights(gs.import_onnx(via_api)), _weights(via_pass.graph)
    assert api_weights.keys() == pass_weights.keys()
    assert all(np.array_equal(api_weights[k], pass_weights[k]) for k in api_weights)
