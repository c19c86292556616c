"""Label-free distillation and ``--recover auto``: seeded small cases."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from helpers import run
from test_recover import _data, _prune, _two_layer

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.recovery import recover
from onnx_hwprune.runtime.recover_auto import choose_recovery, fidelity, split_factory

torch = pytest.importorskip("torch", reason="distillation needs the torch extra")

from onnx_hwprune.runtime.distill import distill, require_torch  # noqa: E402
from onnx_hwprune.runtime.torch_convert import OnnxModule  # noqa: E402


def _case(kind="gemm", seed=0):
    """A 2-layer model (conv+ReLU -> Gemm) with 3 of 8 informative channels removed."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((8, 3, 3, 3)) / 5, rng.standard_normal(8) * 0.1
    model = _two_layer(kind, w1, b1, relu=True, rng=rng)
    groups, plan, pruned = _prune(model, [1, 4, 6])
    return model, groups, plan, pruned, rng


def _mse(a, b, data) -> float:
    return float(np.mean((run(a, data)[0] - run(b, data)[0]) ** 2))


def test_distillation_lowers_held_back_mismatch_and_writes_back_exactly():
    model, _, _, pruned, rng = _case()
    train, held = _data(rng, 128), _data(rng, 64)
    factory = calib_factory(train, model, batch_size=32)
    out, info = distill(model, pruned, factory, steps=120, lr=1e-2, seed=3)
    before, after = _mse(model, pruned, held), _mse(model, out, held)
    assert after < 0.5 * before, (before, after)
    assert info.steps == 120 and info.samples == 120 * 32
    assert info.write_back_error <= 1e-4
    # The written-back ONNX graph computes what a torch module with its weights computes.
    module = OnnxModule(out, fold_bn=False)
    with torch.no_grad():
        (want,) = module(torch.from_numpy(held["x"]))
    np.testing.assert_allclose(run(out, held)[0], want.numpy(), atol=1e-4)


def test_distillation_is_deterministic_under_a_seed():
    model, _, _, pruned, rng = _case(seed=1)
    factory = calib_factory(_data(rng, 64), model, batch_size=32)
    a, _ = distill(model, pruned, factory, steps=20, lr=1e-2, seed=7)
    b, _ = distill(model, pruned, factory, steps=20, lr=1e-2, seed=7)
    c, _ = distill(model, pruned, factory, steps=20, lr=1e-2, seed=8)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()  # the seed drives augmentation


def test_a_wrong_write_back_is_caught(monkeypatch):
    """The check compares the trained module with the written-back graph: a weight written
    to the wrong place (here: the first trained tensor reversed) must not pass."""
    from onnx_hwprune.runtime import distill as distill_module

    model, _, _, pruned, rng = _case(seed=4)
    factory = calib_factory(_data(rng, 64), model, batch_size=32)
    real = distill_module._write_back

    def scrambled(graph, trained):
        name = next(iter(trained))
        return real(graph, {**trained, name: trained[name][::-1].copy()})

    monkeypatch.setattr(distill_module, "_write_back", scrambled)
    with pytest.raises(distill_module.WriteBackMismatch):
        distill(model, pruned, factory, steps=5, lr=1e-2)


def test_distillation_stops_at_the_time_bound():
    model, _, _, pruned, rng = _case(seed=2)
    factory = calib_factory(_data(rng, 64), model, batch_size=32)
    _, info = distill(model, pruned, factory, steps=10_000, time_limit=0.5)
    assert 0 < info.steps < 10_000


def test_without_torch_distill_says_which_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(UserError) as err:
        require_torch()
    message = str(err.value)
    assert "\n" not in message and "onnx-hwprune[torch]" in message


def test_auto_runs_the_cheapest_method_meeting_the_target():
    # Removed channels constant on any data: bias compensation alone is exact.
    rng = np.random.default_rng(5)
    w1, b1 = rng.standard_normal((8, 3, 3, 3)) / 5, rng.standard_normal(8)
    w1[[2, 5]], b1[[2, 5]] = 0.0, [0.7, 1.3]
    model = _two_layer("gemm", w1, b1, relu=True, rng=rng)
    groups, plan, pruned = _prune(model, [2, 5])
    factory = calib_factory(_data(rng, 100), model, batch_size=25)

    def method(name):
        return lambda start, f: (recover(model, start, groups, plan, f, method=name), {})

    methods = {"bias": method("bias"), "lsq": method("lsq")}
    out, report = choose_recovery(model, pruned, methods, factory, max_drop=0.0)
    assert report.chosen == "bias" and report.met
    assert [t["method"] for t in report.tried] == ["bias"]  # lsq never ran
    assert report.held_samples == 20
    assert fidelity(model, out, factory) == 1.0


def test_auto_falls_through_to_lsq_when_bias_is_not_enough():
    model, groups, plan, pruned, rng = _case(seed=6)
    factory = calib_factory(_data(rng, 200), model, batch_size=50)

    def method(name):
        return lambda start, f: (recover(model, start, groups, plan, f, method=name), {})

    methods = {"bias": method("bias"), "lsq": method("lsq")}
    _, report = choose_recovery(model, pruned, methods, factory, max_drop=0.0)
    scores = {t["method"]: t["agreement"] for t in report.tried}
    assert list(scores) == ["bias", "lsq"][: len(scores)]
    assert report.chosen in scores and scores[report.chosen] == max(scores.values())


def test_split_factory_holds_back_every_fifth_sample():
    x = np.arange(23, dtype=np.float32).reshape(23, 1)
    batches = [{"x": x[i : i + 10]} for i in range(0, 23, 10)]
    fit, held = split_factory(lambda: iter(batches), 5)
    held_ids = np.concatenate([b["x"][:, 0] for b in held()])
    fit_ids = np.concatenate([b["x"][:, 0] for b in fit()])
    assert held_ids.tolist() == [0, 5, 10, 15, 20]
    assert sorted(fit_ids.tolist() + held_ids.tolist()) == list(range(23))


def test_exported_softmax_wrappers_and_shape_chains_are_handled():
    """Paddle-style head: Shape(logits) -> Flatten -> Softmax -> Reshape(shape). The logits
    are matched, and the Shape chain is folded so the converter can run the graph."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_hwprune.runtime.distill import distill_targets, fold_static_shapes

    mk = helper.make_node
    nodes = [
        mk("Gemm", ["x", "w"], ["logits"], transB=1),
        mk("Shape", ["logits"], ["shape"]),
        mk("Flatten", ["logits"], ["flat"]),
        mk("Softmax", ["flat"], ["prob"]),
        mk("Reshape", ["prob", "shape"], ["y"]),
    ]
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    assert distill_targets(model) == ["flat"]
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    folded = fold_static_shapes(model, {"x": x})
    assert "Shape" not in [n.op_type for n in folded.graph.node]
    with torch.no_grad():
        (got,) = OnnxModule(folded, fold_bn=False)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), run(model, {"x": x})[0], atol=1e-6)


def test_shape_chains_with_constant_nodes_fold():
    """PP-OCRv5's direction classifier: Shape -> Cast -> Slice (bounds from Constant
    nodes, not initializers) -> Cast -> Concat -> Reshape. Unfolded, the Casts reached the
    converter and distillation of that model failed with 'op Cast is not supported'."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_hwprune.runtime.distill import fold_static_shapes

    mk = helper.make_node

    def const(name, values):
        return mk("Constant", [], [name], value=numpy_helper.from_array(np.array(values), name))

    nodes = [
        const("lo", [0]), const("hi", [1]), const("tail", np.array([-1], np.int64)),
        mk("Shape", ["x"], ["s"]),
        mk("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        mk("Slice", ["s32", "lo", "hi"], ["n32"]),
        mk("Cast", ["n32"], ["n"], to=TensorProto.INT64),
        mk("Concat", ["n", "tail"], ["shape"], axis=0),
        mk("Reshape", ["x", "shape"], ["y"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    folded = fold_static_shapes(model, {"x": x})
    assert [n.op_type for n in folded.graph.node] == ["Reshape"]
    with torch.no_grad():
        (got,) = OnnxModule(folded, fold_bn=False)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), x.reshape(4, 6))


def _with_softmax(model):
    """``model`` with a Softmax over the classes after its ``[N, classes]`` output."""
    from onnx import helper

    out = model.graph.output[0]
    logits = out.name + "_logits"
    for node in model.graph.node:
        node.output[:] = [logits if o == out.name else o for o in node.output]
    model.graph.node.append(helper.make_node("Softmax", [logits], [out.name], axis=-1))
    return model


def _gradients(model, pruned, batch, chunk, softmax_loss="mse"):
    from onnx_hwprune.runtime import distill as d

    step, params = d._make_step(torch, model, pruned, batch, None, threads=1, chunk=chunk,
                                softmax_loss=softmax_loss)  # fmt: skip
    loss = step(batch)
    return loss, {name: p.grad.numpy().copy() for name, p in params}


@pytest.mark.parametrize("softmax", [False, True])
def test_a_step_in_chunks_is_the_step_on_the_whole_batch(softmax):
    model, _, _, pruned, rng = _case(seed=2)
    loss_kind = "mse"
    if softmax:  # the KL loss's mean over positions must split like the MSE's
        model, pruned, loss_kind = _with_softmax(model), _with_softmax(pruned), "kl"
    batch = _data(rng, 32)
    loss, whole = _gradients(model, pruned, batch, chunk=32, softmax_loss=loss_kind)
    # passes of 10 + 10 + 10 + 2
    loss_in_parts, parts = _gradients(model, pruned, batch, chunk=10, softmax_loss=loss_kind)
    assert loss_in_parts == pytest.approx(loss, rel=1e-5)
    assert whole and whole.keys() == parts.keys()
    for name, grad in whole.items():
        assert np.abs(grad).max() > 0, name
        np.testing.assert_allclose(parts[name], grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())


def test_micro_batch_divides_the_batch_and_keeps_rows_together():
    from onnx_hwprune.runtime.distill import MICRO_BATCH, _micro_batch

    def chunk(size, wanted_shape=None):
        batch = {"x": np.zeros((size, 3, 8, 8), np.float32)}
        return _micro_batch(batch, [np.zeros(wanted_shape or (size, 10), np.float32)])

    assert chunk(64) == chunk(37) == MICRO_BATCH and chunk(5) == 5
    assert chunk(64, (10, 64, 5)) == 64  # sequence-first output: rows are not samples


def test_softmax_logits_are_matched_by_their_distributions():
    """KL from the teacher's Softmax to the student's over the Softmax's axis; opset < 13
    normalises every axis from ``axis`` on as one distribution."""
    from onnx import TensorProto, helper

    from onnx_hwprune.runtime.distill import _soft_target_loss, softmax_axes

    def head(opset, axis):
        node = helper.make_node("Softmax", ["logits"], ["y"], axis=axis)
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["logits"]), node], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    assert softmax_axes(head(17, 2)) == {"logits": (2, False)}
    assert softmax_axes(head(11, 1)) == {"logits": (1, True)}
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))

    def kl(s, t, axis):
        p = np.exp(t) / np.exp(t).sum(axis, keepdims=True)
        q = np.exp(s) / np.exp(s).sum(axis, keepdims=True)
        return float(np.mean(np.sum(p * np.log(p / q), axis=axis)))

    def loss(s, t, axis, flat):
        return float(_soft_target_loss(torch, torch.tensor(s), torch.tensor(t), axis, flat))

    assert loss(s, t, -1, False) == pytest.approx(kl(s, t, -1), rel=1e-6)
    assert loss(s, t, 1, True) == pytest.approx(kl(s.reshape(2, 60), t.reshape(2, 60), 1))
    assert loss(t, t, 2, False) == pytest.approx(0.0, abs=1e-12)


def test_distillation_through_a_softmax_lowers_held_back_disagreement():
    model, _, _, pruned, rng = _case(seed=4)
    model, pruned = _with_softmax(model), _with_softmax(pruned)
    train, held = _data(rng, 128), _data(rng, 64)
    factory = calib_factory(train, model, batch_size=32)
    out, info = distill(model, pruned, factory, steps=120, lr=1e-2, seed=3, softmax_loss="kl")
    assert info.write_back_error <= 1e-4

    def kl(student):
        p, q = run(model, held)[0].astype(np.float64), run(student, held)[0]
        return float(np.mean(np.sum(p * np.log(p / q), axis=1)))

    assert kl(out) < 0.5 * kl(pruned), (kl(pruned), kl(out))
