"""``--emit tvm``: the host module equals onnxruntime; the Mali one is aarch64 + OpenCL."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_hwprune.errors import UserError

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed"),
]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_resnet.onnx"
_EM_AARCH64 = 183  # ELF e_machine of AArch64


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _tvm(lib: Path, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    meta = json.loads(lib.with_suffix(".json").read_text())
    dev = tvm.device(meta["device"], 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
    return vm[meta["entry"]](tvm.runtime.tensor(x, dev)).numpy()


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
def test_host_module_matches_onnxruntime(tmp_path, pruned):
    from onnx_hwprune import prune
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    model = onnx.load(EXAMPLE)
    if pruned:
        model = prune(model, ratio=0.3).model
    lib, meta = emit_tvm(model, tmp_path / "digits.so", "tvm-llvm")
    assert lib.is_file() and meta.is_file()
    info = json.loads(meta.read_text())
    assert info["inputs"][0]["shape"] == [1, 1, 8, 8] and info["device"] == "cpu"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_tvm(lib, x), _ort(model, x), rtol=1e-4, atol=1e-5)
    # no staging directory left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json", "digits.so"]


def test_emit_is_byte_identical(tmp_path):
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    model = onnx.load(EXAMPLE)
    first = emit_tvm(model, tmp_path / "a", "tvm-llvm")
    second = emit_tvm(model, tmp_path / "b", "tvm-llvm")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 gcc")
def test_mali_module_is_aarch64_with_opencl_kernels(tmp_path):
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    lib, meta = emit_tvm(onnx.load(EXAMPLE), tmp_path / "out", "mali")
    data = lib.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit ELF
    assert int.from_bytes(data[18:20], "little") == _EM_AARCH64
    assert b"__kernel void" in data  # OpenCL C source embedded for the device
    info = json.loads(meta.read_text())
    assert info["tvm_target"]["kind"] == "opencl" and info["device"] == "opencl"
    assert info["tvm_target"]["host"]["mtriple"] == "aarch64-linux-gnu"


def test_missing_cross_compiler_writes_nothing(tmp_path):
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    with pytest.raises(UserError, match="cross compiler"):
        emit_tvm(onnx.load(EXAMPLE), tmp_path / "m.so", "mali", cross_compiler="no-such-gcc")
    assert list(tmp_path.iterdir()) == []


def test_non_tvm_target_is_a_user_error(tmp_path):
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    with pytest.raises(UserError, match="not a TVM target"):
        emit_tvm(onnx.load(EXAMPLE), tmp_path / "m.so", "cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_module_builds_without_a_gpu(tmp_path):
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    lib, meta = emit_tvm(onnx.load(EXAMPLE), tmp_path / "m.so", "tvm-cuda", cuda_arch="sm_80")
    assert lib.stat().st_size > 0
    assert json.loads(meta.read_text())["tvm_target"]["arch"] == "sm_80"
