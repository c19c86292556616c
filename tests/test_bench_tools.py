"""The benchmark tools' own helpers: the under-load benchmark's burner must provably stop."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _tool("bench_under_load")
CORE = min(os.sched_getaffinity(0))


def _gone(pid: int, within_s: float) -> bool:
    """True once ``pid`` no longer runs (exited, or a zombie nobody reaped yet)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_burner_stops_by_its_deadline_pinned_and_busy():
    with bench.Burner(CORE, seconds=1.0) as burner:
        pid = burner.proc.pid
        time.sleep(0.3)
        assert os.sched_getaffinity(pid) == {CORE}
        assert _gone(pid, within_s=4.0), "the burner ran past its deadline"
    assert not burner.outlived_use  # it had stopped by itself before the block ended
    assert burner.cpu_s > 0.1  # it burned: at least some of its second on a shared core


def test_burner_is_killed_when_the_block_fails():
    with pytest.raises(RuntimeError), bench.Burner(CORE, seconds=60.0) as burner:
        pid = burner.proc.pid
        raise RuntimeError("the job failed")
    assert burner.outlived_use
    assert _gone(pid, within_s=3.0)


def test_burner_stops_when_its_parent_dies():
    """A benchmark killed outright (no finally) leaves no burner behind: the burner sees
    it was re-parented and stops, long before its 60 s deadline."""
    parent = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'tools' / 'bench_under_load.py')!r})\n"  # noqa: E501
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
        f"burner = b.Burner({CORE}, 60.0).__enter__()\n"
        "print(burner.proc.pid, flush=True)\n"
        "import os; os._exit(0)\n"  # dies without stopping it
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    pid = int(out.stdout.split()[0])
    assert _gone(pid, within_s=3.0), "the burner outlived its parent"


def test_burner_refuses_a_bad_duty():
    with pytest.raises(ValueError):
        bench.Burner(CORE, 1.0, duty=0.0)


def test_int8_glue_counts_float_work_between_dequantize_and_quantize():
    """The float ops an int8 form keeps: none on a conv network whose every op has an
    int8 kernel; the activations onnxruntime has no int8 kernel for, and no layer."""
    from helpers import random_inputs

    from onnx_hwprune.runtime.quantize import quantize_int8
    from onnx_hwprune.testing.families import FAMILIES

    glue = _tool("bench_int8_vs_float").float_glue

    def int8(model):
        batches = [random_inputs(model, batch=1, seed=s) for s in range(2)]
        return quantize_int8(model, lambda: iter(batches))

    assert not glue(int8(FAMILIES["resnet_basic"]()))
    counts = glue(int8(FAMILIES["se"]()))  # HardSwish, SiLU, PRelu: no int8 kernels
    assert counts and not {"Conv", "Gemm", "MatMul", "QLinearConv"} & set(counts), counts
    assert "PRelu" in counts, counts


def test_whole_network_variants_cut_coupled_groups_and_record_true_counts():
    """The latency benchmark's pruned variants come from the project's group analysis:
    residual-coupled channels are cut too (a conv -> conv chain finder never reaches the
    stem of a ResNet), each variant runs, and the counts it records for the cost model are
    the ones its weights really have."""
    import random

    import numpy as np
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    bench_model = _tool("bench_latency_model")
    model = bench_model._load("resnet18", 32)
    variants = bench_model._variants(model, 3, random.Random(0))
    assert set(variants) == {"full", "aligned160", "unaligned1", "mixed2"}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    stems = set()
    for name, (pruned, channels) in list(variants.items())[1:]:
        assert channels, name
        weights = {n.name: _out_in(n) for n in gs.import_onnx(pruned).nodes
                   if n.op in ("Conv", "Gemm")}  # fmt: skip
        for node, (cin, cout) in channels.items():
            assert weights[node] == (cout, cin), (name, node)
        stems.add(channels.get("conv1", (3, 64))[1])
        sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
        assert y.shape[0] == 1 and np.isfinite(y).all()
    assert stems - {64}, "the residual-coupled stem was never cut"


def _out_in(node) -> tuple[int, int]:
    shape = node.inputs[1].values.shape
    if node.op == "Gemm" and not node.attrs.get("transB", 0):
        return shape[1], shape[0]
    return shape[0], shape[1]
