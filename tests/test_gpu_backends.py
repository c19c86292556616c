"""GPU backends without a GPU: guards, the ONNX->torch converter, shipped-profile planning.

Every profile here is SYNTHETIC: built in the test from an analytic staircase by a fake
backend, written under tmp_path, never shipped. Tests marked ``gpu`` run only where torch
sees a CUDA GPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import random_inputs, run

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx import export_model, load_graph, with_static_inputs
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.gpu_targets import (
    GPU_PROFILE_OPTIONS,
    gpu_slug,
    load_shipped_profile,
    shipped_cost_model,
    shipped_profiles,
    validate_gpu_profile,
)
from onnx_hwprune.runtime.microbench import build_layer_model
from onnx_hwprune.runtime.profiler import build_cost_model
from onnx_hwprune.runtime.targets import build_targets
from onnx_hwprune.testing.families import FAMILIES
from onnx_hwprune.testing.networks import NETWORKS

REPO = Path(__file__).resolve().parents[1]


def _cuda() -> tuple[bool, str]:
    from onnx_hwprune.runtime.cudnn import cuda_available

    return cuda_available()


# -- guards ---------------------------------------------------------------------------
def test_cudnn_backend_refuses_without_cuda_with_the_reason():
    ok, why = _cuda()
    if ok:
        pytest.skip("a CUDA GPU is present")
    from onnx_hwprune.runtime.cudnn import CudnnBackend

    assert why
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        CudnnBackend().fingerprint()


def test_ort_cuda_reports_why_it_is_unavailable():
    from onnx_hwprune.runtime.ort_cuda import OrtCudaBackend, available

    ok, why = available()
    if ok:
        pytest.skip("onnxruntime-gpu is installed")
    assert "CUDAExecutionProvider" in why
    with pytest.raises(UserError, match="ort-cuda"):
        OrtCudaBackend().prepare(FAMILIES["vgg"]())


def test_gpu_targets_say_whether_they_can_be_measured(tmp_path):
    targets = build_targets(tmp_path)
    assert {"cudnn", "cudnn-benchmark", "ort-cuda"} <= set(targets)
    for name in ("cudnn", "cudnn-benchmark", "ort-cuda"):
        ok, why = targets[name].available()
        assert ok or why, name


def test_the_gpu_path_does_not_import_tvm():
    code = (
        "import sys; sys.modules['tvm'] = None\n"  # any `import tvm` now raises
        "import importlib.util\n"
        "import onnx_hwprune.runtime.cudnn, onnx_hwprune.runtime.ort_cuda\n"
        "import onnx_hwprune.runtime.gpu_targets\n"
        # the converter is the torch path itself: checked where torch is installed
        "if importlib.util.find_spec('torch'): import onnx_hwprune.runtime.torch_convert\n"
        f"path = {str(REPO / 'tools/bench_gpu.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('bench_gpu', path)\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert sys.modules['tvm'] is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bench_gpu_exits_cleanly_without_a_gpu(tmp_path):
    if _cuda()[0]:
        pytest.skip("a CUDA GPU is present")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/bench_gpu.py"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


@pytest.mark.gpu
def test_cudnn_backend_times_a_layer_on_the_gpu():
    ok, why = _cuda()
    if not ok:
        pytest.skip(why)
    from onnx_hwprune.runtime.cudnn import CudnnBackend

    sig = LayerSignature(
        "Conv",
        (3, 3),
        (1, 1),
        (1, 1, 1, 1),
        (1, 1),
        input_hw=(28, 28),
        bias=True,
        activation="Relu",
    )
    backend = CudnnBackend(benchmark=True)
    runnable = backend.prepare(build_layer_model(sig, 64, 64))
    assert 0 < runnable.sample(10) < 0.1
    fp = backend.fingerprint()
    assert fp["cudnn_benchmark"] is True and fp["gpu"] and fp["cudnn"]


# -- the ONNX -> torch converter on CPU torch -------------------------------------------
def _torch_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    from onnx_hwprune.runtime.torch_convert import OnnxModule

    module = OnnxModule(model).eval()
    with torch.inference_mode():
        outs = module(*(torch.from_numpy(feeds[n]) for n in module.input_names))
    return [o.numpy() for o in outs]


def _assert_close(model: onnx.ModelProto, batch: int = 2) -> None:
    feeds = random_inputs(model, batch=batch)
    for ref, got in zip(run(model, feeds), _torch_outputs(model, feeds), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_converter_matches_onnxruntime_on_every_family(name):
    _assert_close(FAMILIES[name](seed=0, batch="N"))


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_converter_matches_onnxruntime_on_the_networks(name):
    _assert_close(NETWORKS[name](seed=0, image_size=64), batch=1)


@pytest.mark.torch
def test_converter_matches_onnxruntime_on_a_variadic_broadcasting_sum():
    """``Sum`` (the light zoo's ResNet-50 adds its residuals with it)."""
    from onnx import TensorProto, helper

    shapes = {"a": ["N", 3, 4, 4], "b": ["N", 3, 4, 4], "c": [3, 1, 1]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Sum", ["a", "b", "c"], ["y"])
    graph = helper.make_graph([node], "g", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    _assert_close(model)


_CONV = {"op": "Conv", "dilations": (1, 1), "strides": (1, 1)}
_MICRO = [
    LayerSignature(**{**_CONV, "strides": (2, 2)}, kernel=(3, 3), pads=(1, 1, 1, 1),
                   input_hw=(15, 15), bias=True, activation="Clip", activation_params=(0.0, 6.0)),
    LayerSignature(**_CONV, kernel=(3, 3), pads=(0, 1, 2, 1), input_hw=(9, 9)),
    LayerSignature(**_CONV, kernel=(3, 3), pads=(1, 1, 1, 1), group_kind="depthwise",
                   input_hw=(8, 8), bias=True),
    LayerSignature(**_CONV, kernel=(1, 1), pads=(0, 0, 0, 0), group_kind="grouped",
                   in_per_group=4, out_per_group=4, input_hw=(8, 8)),
    LayerSignature("ConvTranspose", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), input_hw=(6, 6),
                   bias=True),
    LayerSignature("Gemm", bias=True, activation="Relu"),
    LayerSignature("MatMul", input_hw=(5,), bias=True),
]  # fmt: skip


@pytest.mark.torch
@pytest.mark.parametrize("sig", _MICRO, ids=lambda s: s.describe())
def test_converter_matches_onnxruntime_on_micro_benchmarks(sig):
    _assert_close(build_layer_model(sig, 16, 24), batch=1)


@pytest.mark.torch
def test_converter_refuses_unknown_ops_by_name():
    pytest.importorskip("torch")
    from onnx_hwprune.runtime.torch_convert import OnnxModule, UnsupportedOpError

    model = FAMILIES["vgg"]()
    model.graph.node[1].op_type = "Erf"
    with pytest.raises(UnsupportedOpError, match="Erf is not supported"):
        OnnxModule(model)


# -- shipped profiles (SYNTHETIC) -------------------------------------------------------
_SYNTHETIC_FP = {
    "backend": "cudnn", "gpu": "SYNTHETIC TEST GPU Z999", "compute_capability": "0.0",
    "driver": "0.0", "cuda": "0.0", "cudnn": "0", "torch": "0.0", "cudnn_benchmark": False,
    "synthetic": "built by tests/test_gpu_backends.py, not a measurement",
}  # fmt: skip


class _StairRunnable(Runnable):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def sample(self, number: int) -> float:
        return self.seconds


class _SyntheticGpu(Backend):
    """Analytic staircase: latency ~ ceil(in/8) * ceil(out/32) * kernel area * pixels."""

    name = "synthetic-gpu"

    def __init__(self):
        self.prepared = 0

    def fingerprint(self) -> dict:
        return dict(_SYNTHETIC_FP)

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        self.prepared += 1
        if len(model.graph.node) > 3:  # a whole network: a constant
            return _StairRunnable(5e-3)
        w = next(i for i in model.graph.initializer if i.name == "W").dims
        x = model.graph.input[0].type.tensor_type.shape.dim
        cin, cout = (w[1], w[0]) if model.graph.node[0].op_type != "MatMul" else (w[0], w[1])
        pixels = math.prod(d.dim_value for d in x[2:]) if len(x) > 2 else 1
        area = math.prod(w[2:]) if len(w) > 2 else 1
        return _StairRunnable(1e-7 * math.ceil(cin / 8) * math.ceil(cout / 32) * area * pixels)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(profile folder, model, graph, cost model measured by the fake backend)."""
    folder = tmp_path_factory.mktemp("profiles")
    graph = load_graph(FAMILIES["vgg"](seed=0))
    model = with_static_inputs(export_model(graph))
    with ProfileDB(folder.parent / "synthetic.sqlite") as db:
        cost = build_cost_model(model, _SyntheticGpu(), "cudnn", db, GPU_PROFILE_OPTIONS)
        doc = db.export_json()
    doc["measured"] = {"date": "2000-01-01", "tool": "tests/test_gpu_backends.py (SYNTHETIC)"}
    (folder / "cudnn-z999.json").write_text(json.dumps(doc))
    return folder, model, graph, cost


def test_synthetic_gpu_slug():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug(_SYNTHETIC_FP["gpu"]) == "z999"


def test_shipped_profile_loads_validates_and_becomes_a_target(synthetic):
    folder = synthetic[0]
    assert list(shipped_profiles(folder)) == ["cudnn-z999"]
    doc = load_shipped_profile("cudnn-z999", folder)
    assert doc["devices"][0]["fingerprint"]["gpu"] == _SYNTHETIC_FP["gpu"]
    target = build_targets(folder)["cudnn-z999"]
    assert target.available() == (True, "")
    with pytest.raises(UserError, match="cudnn-z999 plans from a shipped profile"):
        target.make_backend().prepare(synthetic[1])  # a shipped profile cannot measure


def test_shipped_profile_drives_a_plan_without_measuring(synthetic, monkeypatch):
    from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
    from onnx_hwprune.passes.analysis.importance import channel_importance
    from onnx_hwprune.passes.plan.latency import LatencyPlanner

    folder, model, graph, measured = synthetic
    monkeypatch.setattr(_SyntheticGpu, "prepare", lambda *a: pytest.fail("measured"))
    cost = shipped_cost_model("cudnn-z999", model, directory=folder)
    assert cost.predict({}) == pytest.approx(measured.predict({}))
    assert cost.residual_ms == pytest.approx(measured.residual_ms)  # calibration shipped too
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    planner = LatencyPlanner(graph, groups, scores, cost, [e.node for e in cost.layers])
    plan = planner.plan_to_budget(0.7 * cost.predict({}))
    removed = {n: gp.size - len(gp.keep) for n, gp in plan.groups.items()}
    assert sum(removed.values()) > 0
    assert planner.predict(removed) <= 0.7 * cost.predict({}) + 1e-9


def test_a_layer_missing_from_the_shipped_profile_is_a_clear_error(synthetic):
    folder = synthetic[0]
    other = with_static_inputs(FAMILIES["resnet_basic"](seed=0))
    with pytest.raises(
        UserError, match=r"shipped cudnn-z999 profile has no measurements for layer"
    ):
        shipped_cost_model("cudnn-z999", other, directory=folder)


def _broken(doc: dict, what: str) -> dict:
    doc = json.loads(json.dumps(doc))
    if what == "date":
        del doc["measured"]["date"]
    elif what == "fingerprint":
        del doc["devices"][0]["fingerprint"]["cudnn"]
    elif what == "median":
        doc["measurements"][0]["median_ms"] = -1.0
    elif what == "signature":
        doc["measurements"][0]["signature"] = {"nonsense": 1}
    elif what == "version":
        doc["version"] = 99
    return doc


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("date", "ISO 'date'"),
        ("fingerprint", "lacks 'cudnn'"),
        ("median", "median_ms must be a finite positive"),
        ("signature", "bad signature"),
        ("version", "format/version"),
    ],
)
def test_schema_violations_are_user_errors(synthetic, what, message):
    doc = json.loads((synthetic[0] / "cudnn-z999.json").read_text())
    validate_gpu_profile(doc, name="cudnn-z999")
    with pytest.raises(UserError, match=message):
        validate_gpu_profile(_broken(doc, what), name="cudnn-z999")


def test_a_misnamed_profile_file_is_refused(synthetic, tmp_path):
    (tmp_path / "cudnn-h100.json").write_text((synthetic[0] / "cudnn-z999.json").read_text())
    with pytest.raises(UserError, match="should be 'cudnn-z999'"):
        load_shipped_profile("cudnn-h100", tmp_path)


def _bench_gpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "tools/bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_exports_one_device_per_file(synthetic):
    doc = json.loads((synthetic[0] / "cudnn-z999.json").read_text())
    other = json.loads(json.dumps(doc))
    for entry in (*other["devices"], *other["measurements"], *other["calibrations"]):
        entry["target"] = "cudnn-benchmark"
    merged = {k: doc[k] + other[k] for k in ("devices", "measurements", "calibrations")}
    merged.update(format=doc["format"], version=doc["version"])
    fp_hash = doc["devices"][0]["fingerprint_hash"]
    one = _bench_gpu()._one_device(merged, "cudnn", fp_hash)
    assert one["devices"] == doc["devices"] and one["measurements"] == doc["measurements"]
    validate_gpu_profile({**one, "measured": doc["measured"]}, name="cudnn-z999")


def test_bench_gpu_replots_from_its_json_without_a_gpu(tmp_path):
    pytest.importorskip("matplotlib")
    curve = {"network": "n", "node": "a.b", "axis": "out", "gpu": "SYNTHETIC", "signature": "s"}
    curves = [{**curve, "target": t, "counts": [8, 16], "ms": [1.0, 2.0]} for t in ("x", "y")]
    (tmp_path / "staircases.json").write_text(json.dumps(curves))
    assert _bench_gpu().main(["--out", str(tmp_path), "--replot"]) == 0
    assert (tmp_path / "staircase_n_a_b.png").stat().st_size > 0
