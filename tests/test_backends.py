"""Backends, targets, micro-benchmark models, in-context profiling, end to end on cpu."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import tiny_cnn

from onnx_hwprune.cli_commands import profile as profile_verb
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import Backend, cpu_info, physical_cores
from onnx_hwprune.runtime.microbench import build_layer_model, measure_points
from onnx_hwprune.runtime.node_profile import attribute_to_layers
from onnx_hwprune.runtime.ort_cpu import OrtCpuBackend
from onnx_hwprune.runtime.targets import TARGETS, build_targets, get_target, target_names
from onnx_hwprune.runtime.timing import TimingConfig

FAST = TimingConfig(warmup_s=0.005, min_repeat_s=0.002, rounds=3, max_remeasure=0)
CONV = dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), input_hw=(8, 8))
SIGS = {
    "dense": LayerSignature(op="Conv", bias=True, activation="Relu", **CONV),
    "depthwise": LayerSignature(op="Conv", group_kind="depthwise", multiplier=1,
                                activation="Clip", activation_params=(0.0, 6.0), **CONV),
    "grouped": LayerSignature(op="Conv", group_kind="grouped", in_per_group=4,
                              out_per_group=4, **CONV),
    "gemm": LayerSignature(op="Gemm", bias=True),
    "matmul": LayerSignature(op="MatMul", input_hw=(5,), bias=True, activation="Relu"),
    "convtranspose": LayerSignature(op="ConvTranspose", kernel=(2, 2), strides=(2, 2),
                                    pads=(0, 0, 0, 0), dilations=(1, 1), input_hw=(4, 4)),
}  # fmt: skip


def tiny_model() -> onnx.ModelProto:
    """conv(3->8)+Relu -> conv(8->8)+Relu -> GAP -> Flatten -> Gemm(8->4), 16x16 input."""
    return tiny_cnn(16)


EXPECTED_OUT = {"dense": (1, 12, 8, 8), "depthwise": (1, 8, 8, 8), "grouped": (1, 12, 8, 8),
                "gemm": (1, 12), "matmul": (1, 5, 12), "convtranspose": (1, 12, 8, 8)}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(SIGS))
def test_micro_benchmark_models_run_with_the_right_shape(kind):
    model = build_layer_model(SIGS[kind], 8, 12)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    (y,) = sess.run(None, {"x": np.ones(shape, np.float32)})
    assert y.shape == EXPECTED_OUT[kind]


def test_registry_refuses_duplicates_and_lists_targets(monkeypatch):
    from onnx_hwprune.runtime import targets as registry

    builtin = registry._builtin()
    monkeypatch.setattr(registry, "_builtin", lambda: (*builtin, builtin[0]))
    with pytest.raises(ValueError, match="duplicate target 'cpu'"):
        build_targets()
    assert {"cpu", "tvm-llvm"} <= set(target_names()) == set(TARGETS)
    with pytest.raises(UserError, match="unknown target"):
        get_target("no-such-device")


def test_fingerprint_names_cpu_isa_versions_threads():
    fp = OrtCpuBackend(threads=1).fingerprint()
    assert fp["threads"] == 1 and fp["onnxruntime"] == ort.__version__
    assert fp["cpu"] and isinstance(fp["isa"], list)
    assert OrtCpuBackend().threads == physical_cores()
    fake = "processor: 0\nmodel name: Fake CPU\nflags: fpu avx2 fma\nphysical id: 0\ncore id: 0\n"
    info = cpu_info(lambda: fake)
    assert info["cpu"] == "Fake CPU" and info["isa"] == ["avx2", "fma"]


def test_measure_points_caches_in_db(tmp_path):
    backend = OrtCpuBackend(threads=1)
    with ProfileDB(tmp_path / "p.sqlite") as db:
        new = []
        got = measure_points(backend, "cpu", SIGS["dense"], [(8, 8), (8, 16)], db=db,
                             config=FAST, on_measured=new.append)  # fmt: skip
        assert new == [2] and all(m.median_ms > 0 for m in got.values())
        again = measure_points(backend, "cpu", SIGS["dense"], [(8, 8), (8, 16)], db=db,
                               config=FAST, on_measured=new.append)  # fmt: skip
        assert new == [2] and again == got


def test_in_context_attribution_scales_to_total():
    model = tiny_model()
    node_ms = OrtCpuBackend(threads=1).node_times(model)
    assert node_ms, "the profiler reported no node"
    ctx = attribute_to_layers(model, node_ms, ["conv0", "conv1", "fc"], 10.0)
    attributed = sum(ctx.layer_ms.values()) + sum(ctx.follower_ms.values())
    assert attributed + ctx.residual_ms == pytest.approx(10.0)
    assert ctx.layer_ms["conv1"] > 0 and ctx.residual_ms >= 0


def test_nodes_carrying_a_layers_channels_follow_it_and_the_rest_is_residual():
    """conv c0 -> HardSwish -> Mul -> conv c1 -> Reshape -> Relu: the HardSwish and the
    Mul carry c0's channels (kernels named after a node or its output tensor); after the
    Reshape nothing is a layer's channels any more."""
    from onnx import TensorProto, helper, numpy_helper

    w = [numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w0"),
         numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w1"),
         numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="c0"),
             helper.make_node("HardSwish", ["t0"], ["t1"], name="hs"),
             helper.make_node("Mul", ["t1", "t1"], ["t2"], name="m"),
             helper.make_node("Conv", ["t2", "w1"], ["t3"], name="c1"),
             helper.make_node("Reshape", ["t3", "shape"], ["t4"], name="r"),
             helper.make_node("Relu", ["t4"], ["y"], name="rr")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])], w)  # fmt: skip
    model = helper.make_model(graph)
    node_ms = {"c0": 1.0, "hs": 2.0, "t2": 3.0, "c1": 4.0, "r": 5.0, "rr": 6.0}
    ctx = attribute_to_layers(model, node_ms, ["c0", "c1"], total_ms=42.0)  # 2x profiled
    assert ctx.layer_ms == pytest.approx({"c0": 2.0, "c1": 8.0})
    assert ctx.follower_ms == pytest.approx({"c0": 10.0})
    assert ctx.residual_ms == pytest.approx(22.0)


def _affine_bn_model(size: int = 4) -> onnx.ModelProto:
    """conv c0 -> BN -> Mul(const) -> Add(const) -> Relu -> conv c1 -> Mul(const): the zoo
    DenseNet's way of writing a BatchNorm."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, shape, value=1.0):
        return numpy_helper.from_array(np.full(shape, value, np.float32), name)

    w = [const("w0", (16, 3, 3, 3), 0.1), const("w1", (16, 16, 1, 1), 0.1),
         *(const(n, (16,)) for n in ("g", "b", "m", "v")), const("s", (16, 1, 1), 2.0),
         const("o", (16, 1, 1), 0.5), const("s2", (16, 1, 1), 3.0)]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["t0", "g", "b", "m", "v"], ["t1"], name="bn"),
             helper.make_node("Mul", ["t1", "s"], ["t2"], name="mul"),
             helper.make_node("Add", ["t2", "o"], ["t3"], name="add"),
             helper.make_node("Relu", ["t3"], ["t4"], name="relu"),
             helper.make_node("Conv", ["t4", "w1"], ["t5"], name="c1"),
             helper.make_node("Mul", ["s2", "t5"], ["y"], name="affine")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, size, size])
    graph = helper.make_graph(nodes, "g", [x], [y], w)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_a_mul_by_a_constant_fused_into_the_conv_belongs_to_its_chain():
    """onnxruntime folds Conv+BN+Mul+Add+Relu into one kernel named after the Relu's
    output; the chain must reach it through the constant Mul, or the layer has no time
    and its own kernel counts as a follower. A constant Mul that runs a kernel of its
    own (``affine``: PP-OCRv5's affine blocks) stays a follower."""
    model = _affine_bn_model()
    node_ms = {"t4": 3.0, "c1": 2.0, "affine": 1.0}
    ctx = attribute_to_layers(model, node_ms, ["c0", "c1"], total_ms=6.0)
    assert ctx.layer_ms == pytest.approx({"c0": 3.0, "c1": 2.0})
    assert ctx.follower_ms == pytest.approx({"c1": 1.0})
    assert ctx.residual_ms == pytest.approx(0.0)


def test_every_layer_of_a_real_profile_has_in_context_time_with_affine_batchnorms():
    """On a real profile: both layers get time of their own, and the affine Mul (which the
    layout transform runs as ``<output>_mul``) follows ``c1``: nothing is residual."""
    model = _affine_bn_model(size=32)
    node_ms = OrtCpuBackend(threads=1).node_times(model)
    ctx = attribute_to_layers(model, node_ms, ["c0", "c1"], 10.0)
    assert ctx.layer_ms["c0"] > 0 and ctx.layer_ms["c1"] > 0, sorted(node_ms)
    assert set(ctx.follower_ms) <= {"c1"}, sorted(node_ms)
    assert ctx.residual_ms == pytest.approx(0.0, abs=1e-9), sorted(node_ms)


def test_nodes_after_a_concatenation_follow_its_layers_by_channel_share():
    """cat(c0: 8 ch, c1: 24 ch, x: 3 ch) -> Relu: the concat and the Relu carry 8/35 of
    c0's channels, 24/35 of c1's and 3/35 that are no layer's (residual)."""
    from onnx import TensorProto, helper, numpy_helper

    w = [numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w0"),
         numpy_helper.from_array(np.ones((24, 3, 1, 1), np.float32), "w1")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="c0"),
             helper.make_node("Conv", ["x", "w1"], ["t1"], name="c1"),
             helper.make_node("Concat", ["t0", "t1", "x"], ["t2"], name="cat", axis=1),
             helper.make_node("Relu", ["t2"], ["y"], name="relu")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 35, 4, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], w))
    node_ms = {"c0": 1.0, "c1": 2.0, "cat": 14.0, "y": 21.0}
    ctx = attribute_to_layers(model, node_ms, ["c0", "c1"], total_ms=38.0)
    assert ctx.layer_ms == pytest.approx({"c0": 1.0, "c1": 2.0})
    assert ctx.follower_ms == pytest.approx({"c0": 35.0 * 8 / 35, "c1": 35.0 * 24 / 35})
    assert ctx.residual_ms == pytest.approx(35.0 * 3 / 35)


def test_a_gemm_fused_with_its_activation_keeps_its_time():
    """onnxruntime names a Gemm+Relu kernel "fused <gemm>": it is still the Gemm's."""
    from onnx import TensorProto, helper, numpy_helper

    w = [numpy_helper.from_array(np.ones((256, 512), np.float32), "w1"),
         numpy_helper.from_array(np.ones((10, 256), np.float32), "w2")]  # fmt: skip
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["t0"], name="fc1", transB=1),
             helper.make_node("Relu", ["t0"], ["t1"], name="relu"),
             helper.make_node("Gemm", ["t1", "w2"], ["y"], name="fc2", transB=1)]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], w))
    model.ir_version = 8
    node_ms = OrtCpuBackend(threads=1).node_times(model)
    ctx = attribute_to_layers(model, node_ms, ["fc1", "fc2"], 10.0)
    assert ctx.layer_ms["fc1"] > 0 and ctx.layer_ms["fc2"] > 0, sorted(node_ms)
    assert ctx.residual_ms == pytest.approx(0.0, abs=1e-9), sorted(node_ms)


def test_profiled_hardswish_keeps_its_name_and_follows_its_layer():
    """onnxruntime inlines HardSwish as nodes it names ``HardSigmoid_<n>``/``Mul_<n>``;
    the profiler writes it out under the node's own name, so a real profile attributes
    its time to the conv whose channels it carries (it was residual before)."""
    from onnx import TensorProto, helper, numpy_helper

    w = [numpy_helper.from_array(np.ones((16, 3, 1, 1), np.float32), "w0"),
         numpy_helper.from_array(np.ones((8, 16, 1, 1), np.float32), "w1")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="c0"),
             helper.make_node("HardSwish", ["t0"], ["t1"], name="hs"),
             helper.make_node("Add", ["t1", "t0"], ["t2"], name="skip"),
             helper.make_node("Conv", ["t2", "w1"], ["y"], name="c1")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], w)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    node_ms = OrtCpuBackend(threads=1).node_times(model)
    assert {"hs", "hs/hardswish_gate"} <= set(node_ms), sorted(node_ms)
    assert not any(n.startswith(("HardSigmoid_", "Mul_")) for n in node_ms)
    ctx = attribute_to_layers(model, node_ms, ["c0", "c1"], 10.0)
    hs = (node_ms["hs"] + node_ms["hs/hardswish_gate"]) * 10.0 / sum(node_ms.values())
    assert ctx.follower_ms["c0"] >= hs * (1 - 1e-9)


def _cli(*argv):
    parser = argparse.ArgumentParser()
    profile_verb.add_arguments(parser)
    return profile_verb.run(parser.parse_args([str(a) for a in argv]))


def test_end_to_end_real_cpu_measurement_is_resumable(tmp_path, capsys):
    path, db = tmp_path / "tiny.onnx", tmp_path / "p.sqlite"
    onnx.save(tiny_model(), path)
    start = time.monotonic()
    plotting = importlib.util.find_spec("matplotlib") is not None  # the [plot] extra
    plot = ["--plot", tmp_path / "plots"] if plotting else []
    assert _cli(path, "--threads", "1", "--profile-db", db, *plot) == 0
    assert time.monotonic() - start < 30
    out = capsys.readouterr().out
    assert "conv1" in out and "whole model measured" in out
    assert not plotting or sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    with ProfileDB(db) as handle:
        first = handle.count()
        counts = handle.quality_counts()
    assert first > 10
    assert _cli(path, "--threads", "1", "--profile-db", db) == 0
    # Resumed: the points flagged noisy/drifted (never final) are measured again, and
    # only the points their new values lead the stair search to are new.
    untrusted = counts["noisy"] + counts["drifted"]
    again = int(re.search(r"(\d+) new measurements", capsys.readouterr().out).group(1))
    assert (again > 0) == (untrusted > 0) and again <= first


def test_cli_rejects_missing_model(tmp_path):
    with pytest.raises(UserError, match="not found"):
        _cli(tmp_path / "nope.onnx", "--profile-db", tmp_path / "p.sqlite")


def test_importing_the_package_does_not_import_tvm():
    code = ("import sys, onnx_hwprune.runtime.targets, onnx_hwprune.runtime.profiler, "
            "onnx_hwprune.cli_commands.profile; print('tvm' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _tvm_or_skip():
    try:
        import tvm  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"apache-tvm not importable: {exc}")


@pytest.mark.tvm
def test_tvm_llvm_backend_compiles_and_times_a_conv():
    _tvm_or_skip()
    backend = get_target("tvm-llvm").make_backend(threads=1)
    assert backend.fingerprint()["target"]["kind"] == "llvm"
    got = measure_points(backend, "tvm-llvm", SIGS["dense"], [(8, 8), (8, 16)], config=FAST)
    assert all(m.median_ms > 0 for m in got.values())


def test_time_budget_stops_and_a_rerun_resumes(tmp_path, capsys):
    path, db = tmp_path / "tiny.onnx", tmp_path / "p.sqlite"
    onnx.save(tiny_model(), path)
    assert _cli(path, "--threads", "1", "--profile-db", db, "--time-budget", "0.5") == 3
    assert "rerun to resume" in capsys.readouterr().out
    with ProfileDB(db) as handle:
        partial = handle.count()
    assert _cli(path, "--threads", "1", "--profile-db", db) == 0
    with ProfileDB(db) as handle:
        assert handle.count() > partial


def test_calibration_without_node_profiler_uses_one_global_scale():
    import onnx_graphsurgeon as gs

    from onnx_hwprune.cost_models.signature import extract_layers
    from onnx_hwprune.cost_models.staircase import StaircaseModel
    from onnx_hwprune.runtime.profiler import calibrate

    class NoProfiler(Backend):
        name = "fake-no-profiler"

        def fingerprint(self):
            return {"fake": True}

        def prepare(self, model):
            raise AssertionError("total_ms is given: nothing to run")

    model = tiny_model()
    layers = extract_layers(gs.import_onnx(onnx.shape_inference.infer_shapes(model)))
    models = {
        (x.signature.key(), x.in_channels, x.out_channels): StaircaseModel(
            x.signature.key(), "dense", x.in_channels, x.out_channels, 1.0, ()
        )
        for x in layers
    }
    total, residual, scales, followers = calibrate(
        model, NoProfiler(), layers, models, total_ms=6.0
    )
    assert (total, residual, followers) == (6.0, 0.0, {})
    assert all(s == pytest.approx(6.0 / len(layers)) for s in scales.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread CPU clock: Linux")
def test_one_thread_samples_read_the_calling_threads_cpu_clock(monkeypatch):
    """At one intra-op thread the work is on the calling thread, so its CPU clock sees all
    of it (a share of the process's CPU time that load cannot change: time the OS gave
    to other processes is in neither); at two threads the wall clock is used."""
    import time

    from onnx_hwprune.runtime.ort_cpu import OrtCpuBackend

    runnable = OrtCpuBackend(threads=1).prepare(tiny_cnn(64))
    assert runnable._clock is time.thread_time
    runnable.sample(20)  # warm
    thread_s = runnable.sample(50)
    runnable._clock = time.process_time  # every thread of this process
    process_s = runnable.sample(50)
    assert thread_s > 0.8 * process_s > 0, (thread_s, process_s)
    assert OrtCpuBackend(threads=2).prepare(tiny_cnn(8))._clock is time.perf_counter


def test_layout_reorders_go_to_their_neighbours_one_sum_per_run(tmp_path):
    """An input reorder belongs to the node after it, an output reorder to the node before
    it; several on one node add up within a run, and every run keeps its own sum."""
    import json

    from onnx_hwprune.runtime.node_profile import _kernel_times

    order = [("ReorderInput_token_1", 1.0), ("conv_nchwc", 10.0),
             ("ReorderOutput_token_2", 2.0), ("ReorderOutput_token_3", 3.0),
             ("ReorderInput_token_4", 4.0), ("add", 5.0)]  # fmt: skip
    events, ts = [], 0
    for run in range(2):
        for name, ms in order:
            ts += 1
            events.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts,
                           "dur": 1000 * ms * (run + 1)})  # fmt: skip
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events[::-1]))  # the file's order is not the run order
    assert _kernel_times(str(path)) == {
        "conv": [10.0, 20.0], "conv/reorder": [6.0, 12.0],
        "add": [5.0, 10.0], "add/reorder": [4.0, 8.0],
    }  # fmt: skip
