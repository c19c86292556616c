"""TVM compile targets for ``tvm-llvm``, ``tvm-cuda`` and ``mali``, and their registry entries.

Each TVM-backed ``--target`` name maps to one TVM 0.27 target dict (JSON style) and to the
kind of device a module built for it runs on (``cpu``, ``cuda``, ``opencl``):

- ``tvm-llvm``: this host's CPU (``llvm``, ``-mcpu`` of this host), or a remote CPU when
  ``host_triple`` names another one (e.g. ``aarch64-linux-gnu``);
- ``tvm-cuda``: CUDA kernels (``nvcc`` compiles them; no GPU is needed to build) plus
  host code for this machine;
- ``mali``: TVM's generic OpenCL target with ``device=mali`` plus aarch64 host code. TVM's
  Relax era removed its Mali schedules and the Arm Compute Library integration, so this
  is the path that remains; the OpenCL kernels come from dlight's generic GPU rules.

:data:`EXTRA_TARGETS` holds the :class:`~onnx_hwprune.runtime.targets.Target` entries for
``tvm-cuda`` and ``mali``, to be merged into ``TARGETS``. Both are measured through TVM's
RPC tracker (a board, or an RPC server on a GPU host); ``mali`` without a board plans from
the analytic model in :mod:`onnx_hwprune.cost_models.mali`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime._target import Target
from onnx_hwprune.runtime.backend import Backend

__all__ = [
    "AARCH64_CC",
    "DEFAULT_CUDA_ARCH",
    "EXTRA_TARGETS",
    "TVM_TARGETS",
    "all_targets",
    "compile_target",
    "device_kind",
]

logger = logging.getLogger(__name__)

AARCH64_CC = "aarch64-linux-gnu-gcc"  # Debian's gcc-aarch64-linux-gnu
AARCH64_TRIPLE = "aarch64-linux-gnu"
# Used when no GPU is visible to ask for its compute capability; sm_80 (A100) code also
# runs on later GPUs through the driver's JIT of the embedded PTX.
DEFAULT_CUDA_ARCH = "sm_80"

TVM_TARGETS: dict[str, str] = {"tvm-llvm": "cpu", "tvm-cuda": "cuda", "mali": "opencl"}
"""TVM-backed target name -> the device kind its modules run on."""


def device_kind(target_name: str) -> str:
    """``cpu``, ``cuda`` or ``opencl`` for a TVM-backed target (UserError otherwise)."""
    if target_name not in TVM_TARGETS:
        raise UserError(
            f"target {target_name!r} is not a TVM target; TVM targets: {', '.join(TVM_TARGETS)}"
        )
    return TVM_TARGETS[target_name]


def compile_target(
    target_name: str, *, host_triple: str | None = None, cuda_arch: str | None = None
) -> dict:
    """The TVM target dict that ``target_name`` compiles with.

    Args:
        target_name: ``tvm-llvm``, ``tvm-cuda`` or ``mali``.
        host_triple: LLVM triple of the machine that runs the host code (``None``: this
            host for ``tvm-llvm``/``tvm-cuda``, aarch64 Linux for ``mali``).
        cuda_arch: ``sm_XY`` for ``tvm-cuda`` (``None``: the local GPU's, else sm_80).
    """
    kind = device_kind(target_name)
    if kind == "cpu":
        return _llvm(host_triple)
    if kind == "cuda":
        return {"kind": "cuda", "arch": cuda_arch or _local_cuda_arch(), "host": _llvm(host_triple)}
    return {"kind": "opencl", "device": "mali", "host": _llvm(host_triple or AARCH64_TRIPLE)}


def _llvm(triple: str | None) -> dict:
    if triple:
        return {"kind": "llvm", "mtriple": triple}
    import tvm

    # LLVM's name for this CPU (e.g. znver5) rather than "native": the emitted target
    # then says what it was built for, and LLVM 22 rejects "native" with a conda triple.
    get = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName", allow_missing=True)
    return {"kind": "llvm", "mcpu": str(get())} if get is not None else {"kind": "llvm"}


def _local_cuda_arch() -> str:
    import tvm

    dev = tvm.cuda(0)
    if dev.exist and dev.compute_version:
        return "sm_" + dev.compute_version.replace(".", "")
    return DEFAULT_CUDA_ARCH


def all_targets() -> dict[str, Target]:
    """Every registered target (``TARGETS`` includes :data:`EXTRA_TARGETS`)."""
    from onnx_hwprune.runtime.targets import TARGETS

    return dict(TARGETS)


def _rpc_backend(target_name: str):
    def make(threads: int | None = None, **options: object) -> Backend:
        if not options.get("tracker") or not options.get("key"):
            raise UserError(
                f"target {target_name!r} is measured on a board through TVM's RPC tracker: "
                "pass --rpc-tracker HOST:PORT --rpc-key KEY"
            )
        from onnx_hwprune.runtime.tvm_rpc import TvmRpcBackend

        return TvmRpcBackend(target_name=target_name, **options)  # type: ignore[arg-type]

    return make


def _cuda_available() -> tuple[bool, str]:
    if importlib.util.find_spec("tvm") is None:
        return False, "python package 'tvm' is not installed (pip install 'onnx-hwprune[tvm]')"
    # Measured through an RPC server even on a local GPU: one code path for every board.
    where = "this host's GPU" if Path("/dev/nvidiactl").exists() else "a GPU host"
    return False, f"measure with --rpc-tracker/--rpc-key (an RPC server on {where})"


def _mali_available() -> tuple[bool, str]:
    # Never here: a Mali GPU is on a board, reached through the tracker.
    return False, "Mali GPU is on a board: measure with --rpc-tracker/--rpc-key"


EXTRA_TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "tvm-cuda",
            "TVM Relax, CUDA kernels (dlight default GPU schedules) for an NVIDIA GPU",
            "measured with TVM on a CUDA GPU (this host or an RPC server)",
            _rpc_backend("tvm-cuda"),
            _cuda_available,
        ),
        Target(
            "mali",
            "TVM Relax, OpenCL kernels for an Arm Mali GPU + aarch64 host (via RPC)",
            "measured on the board over TVM's RPC tracker; without one, an analytic "
            "Mali-G72 MP12 estimate",
            _rpc_backend("mali"),
            _mali_available,
        ),
    )
}
