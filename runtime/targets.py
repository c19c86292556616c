"""Targets: every ``--target`` defined and registered here, once.

A :class:`~onnx_hwprune.target.Target` says how to make its backend, whether it can be
measured on this host (and if not, why), where its numbers come from, and how its models
are emitted. ``cpu`` and ``tvm-llvm`` are measured here; ``tvm-cuda`` and ``mali`` through
TVM's RPC tracker (``mali`` without a board plans from the analytic model of
``cost_models/mali.py``); ``cudnn``, ``cudnn-benchmark`` and ``ort-cuda`` on this host's
GPU; one more target per GPU profile shipped in the package (``cudnn-h100``).

Adding a target: write its backend (``runtime/my_backend.py``) and add one
``Target(...)`` to :func:`_builtin` below. Nothing else matches target names.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import Backend
from onnx_hwprune.target import Target

__all__ = ["TARGETS", "Target", "build_targets", "get_target", "target_names"]

logger = logging.getLogger(__name__)

AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CC = "aarch64-linux-gnu-gcc"  # Debian's gcc-aarch64-linux-gnu


def _ort_cpu(threads: int | None = None, **_: object) -> Backend:
    from onnx_hwprune.runtime.ort_cpu import OrtCpuBackend

    return OrtCpuBackend(threads=threads)


def _tvm_llvm(threads: int | None = None, **options: object) -> Backend:
    from onnx_hwprune.runtime.tvm_llvm import TvmLlvmBackend

    return TvmLlvmBackend(threads=threads, **options)


def _rpc_backend(target_name: str) -> Callable[..., Backend]:
    def make(threads: int | None = None, **options: object) -> Backend:
        if not options.get("tracker") or not options.get("key"):
            raise UserError(
                f"target {target_name!r} is measured on a board through TVM's RPC tracker: "
                "pass --rpc-tracker HOST:PORT --rpc-key KEY"
            )
        from onnx_hwprune.runtime.tvm_rpc import TvmRpcBackend

        return TvmRpcBackend(target_name=target_name, **options)  # type: ignore[arg-type]

    return make


def _cudnn_backend(benchmark: bool) -> Callable[..., Backend]:
    def make(threads: int | None = None, **options: object) -> Backend:
        from onnx_hwprune.runtime.cudnn import CudnnBackend

        return CudnnBackend(benchmark=benchmark, **options)

    return make


def _ort_cuda(threads: int | None = None, **options: object) -> Backend:
    from onnx_hwprune.runtime.ort_cuda import OrtCudaBackend

    return OrtCudaBackend(**options)


def _has(module: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        # find_spec does not import: TVM's import time is only paid by TVM features.
        if importlib.util.find_spec(module) is None:
            hint = " (pip install 'onnx-hwprune[tvm]')" if module == "tvm" else ""
            return False, f"python package {module!r} is not installed{hint}"
        return True, ""

    return check


def _cuda_via_rpc() -> tuple[bool, str]:
    if importlib.util.find_spec("tvm") is None:
        return False, "python package 'tvm' is not installed (pip install 'onnx-hwprune[tvm]')"
    # Measured through an RPC server even on a local GPU: one code path for every board.
    where = "this host's GPU" if Path("/dev/nvidiactl").exists() else "a GPU host"
    return False, f"measure with --rpc-tracker/--rpc-key (an RPC server on {where})"


def _on_a_board() -> tuple[bool, str]:
    # Never here: a Mali GPU is on a board, reached through the tracker.
    return False, "Mali GPU is on a board: measure with --rpc-tracker/--rpc-key"


def _torch_cuda() -> tuple[bool, str]:
    from onnx_hwprune.runtime.cudnn import cuda_available

    return cuda_available()


def _ort_cuda_available() -> tuple[bool, str]:
    from onnx_hwprune.runtime.ort_cuda import available

    return available()


def _mali_note() -> str:
    cc = shutil.which(AARCH64_CC)
    emit = "cross compiler found" if cc else f"no {AARCH64_CC}: --emit tvm needs one"
    return f"without a board: analytic Mali-G72 MP12 estimate; {emit}"


def _nvcc_note() -> str:
    return "--emit tvm needs nvcc" + ("" if shutil.which("nvcc") else " (not found)")


def _builtin() -> tuple[Target, ...]:
    return (
        Target(
            "cpu",
            "onnxruntime CPU provider, all graph optimizations (NCHWc), this host",
            "measured on this host with onnxruntime's CPUExecutionProvider",
            _ort_cpu,
            _has("onnxruntime"),
            backend="ort-cpu (onnxruntime CPUExecutionProvider)",
            # MLAS leaves its NCHWc layout when in-channels are not multiples of 4 (a
            # pruned digits ResNet with 29 and 62 channels ran 1.5x slower), which an
            # isolated micro-benchmark cannot see. Whole pruned networks timed per node
            # now measure that penalty in context (runtime/context_profile.py) and price
            # it, but at load ~10 the isolated points' noise still outweighed it end to
            # end (README, In-context costs). An A/B with and without the rule
            # (tools/bench_budget_cells.py --channel-multiples 4 1) planned the same on
            # ResNet-18/50, MobileNetV2 and the digits example, but PP-OCRv5 cls at 0.6
            # chose 7 unaligned groups and kept 38% of its MACs against 44% with the
            # rule at the same measured latency: the rule stays.
            channel_multiple=4,
        ),
        Target(
            "tvm-llvm",
            "TVM Relax, compiled for this host's CPU with LLVM (default schedules)",
            "measured on this host with TVM (Relax ONNX frontend, llvm -mcpu=native)",
            _tvm_llvm,
            _has("tvm"),
            backend="tvm-llvm (TVM Relax, LLVM; --rpc-tracker: tvm-rpc)",
            emit_tvm=True,
        ),
        Target(
            "tvm-cuda",
            "TVM Relax, CUDA kernels (dlight default GPU schedules) for an NVIDIA GPU",
            "measured with TVM on a CUDA GPU (this host or an RPC server)",
            _rpc_backend("tvm-cuda"),
            _cuda_via_rpc,
            backend="tvm-rpc (TVM Relax, CUDA kernels via nvcc)",
            device="cuda",
            emit_tvm=True,
            note=_nvcc_note,
        ),
        Target(
            "mali",
            "TVM Relax, OpenCL kernels for an Arm Mali GPU + aarch64 host (via RPC)",
            "measured on the board over TVM's RPC tracker; without one, an analytic "
            "Mali-G72 MP12 estimate",
            _rpc_backend("mali"),
            _on_a_board,
            backend="tvm-rpc (TVM Relax, OpenCL 'mali' + aarch64 host)",
            device="opencl",
            cost_source="analytic",
            emit_tvm=True,
            host_triple=AARCH64_TRIPLE,
            note=_mali_note,
        ),
        Target(
            "cudnn",
            "PyTorch/cuDNN on this host's CUDA GPU, cudnn.benchmark off (heuristics)",
            "measured on this host's GPU with PyTorch (cuDNN heuristics, CUDA events)",
            _cudnn_backend(False),
            _torch_cuda,
            backend="cudnn (PyTorch on a CUDA GPU, cudnn.benchmark off)",
            device="cuda",
        ),
        Target(
            "cudnn-benchmark",
            "PyTorch/cuDNN on this host's CUDA GPU, cudnn.benchmark on (autotuned)",
            "measured on this host's GPU with PyTorch (cuDNN autotuned, CUDA events)",
            _cudnn_backend(True),
            _torch_cuda,
            backend="cudnn (PyTorch on a CUDA GPU, cudnn.benchmark on: autotuned)",
            device="cuda",
        ),
        Target(
            "ort-cuda",
            "onnxruntime CUDA provider (onnxruntime-gpu) on this host's GPU",
            "measured on this host's GPU with onnxruntime's CUDAExecutionProvider",
            _ort_cuda,
            _ort_cuda_available,
            backend="ort-cuda (onnxruntime-gpu CUDAExecutionProvider)",
            device="cuda",
        ),
    )


def _shipped(name: str, directory: Path | None) -> Target:
    def make(threads: int | None = None, **_: object) -> Backend:
        from onnx_hwprune.runtime.gpu_targets import shipped_backend

        return shipped_backend(name, directory)

    return Target(
        name,
        f"plan for a GPU from the shipped profile {name}.json (no GPU needed; not measurable)",
        f"shipped profile {name} (measured on that GPU; see the report for the date)",
        make,
        lambda: (True, ""),
        backend="none: a profile shipped in the package (planning only, nothing measured)",
        device="cuda",
        cost_source="shipped",
    )


def build_targets(profile_directory: Path | None = None) -> dict[str, Target]:
    """The built-in targets plus one per shipped GPU profile in ``profile_directory``
    (default: the package's); a duplicate name is an error."""
    from onnx_hwprune.runtime.gpu_targets import shipped_profiles

    shipped = (_shipped(n, profile_directory) for n in shipped_profiles(profile_directory))
    return _register((*_builtin(), *shipped))


def _register(targets: Iterable[Target]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for target in targets:
        if target.name in out:
            raise ValueError(f"duplicate target {target.name!r}")
        out[target.name] = target
    return out


TARGETS: dict[str, Target] = build_targets()


def target_names() -> list[str]:
    """Known target names (for CLI choices)."""
    return sorted(TARGETS)


def get_target(name: str | Target, *, measurable: bool = True) -> Target:
    """The target called ``name``; :class:`UserError` if unknown, or (with
    ``measurable``) if it cannot be measured on this host."""
    if isinstance(name, Target):
        target = name
    elif name in TARGETS:
        target = TARGETS[name]
    else:
        raise UserError(f"unknown target {name!r}; known: {', '.join(target_names())}")
    ok, why = target.available() if measurable else (True, "")
    if not ok:
        raise UserError(f"target {target.name!r} cannot be measured on this host: {why}")
    return target
