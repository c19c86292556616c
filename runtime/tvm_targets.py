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

Which targets are TVM-backed, their device kind and their host triple are fields of their
:class:`~onnx_hwprune.target.Target` records (``runtime/targets.py``).
"""

from __future__ import annotations

import logging

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.targets import AARCH64_CC, get_target, target_names
from onnx_hwprune.target import Target

__all__ = [
    "AARCH64_CC",
    "DEFAULT_CUDA_ARCH",
    "compile_target",
    "device_kind",
    "tvm_target",
]

logger = logging.getLogger(__name__)

# Used when no GPU is visible to ask for its compute capability; sm_80 (A100) code also
# runs on later GPUs through the driver's JIT of the embedded PTX.
DEFAULT_CUDA_ARCH = "sm_80"


def tvm_target(target_name: str | Target) -> Target:
    """The record of a TVM-backed target (UserError for any other)."""
    target = get_target(target_name, measurable=False)
    if not target.emit_tvm:
        tvm_names = [n for n in target_names() if get_target(n, measurable=False).emit_tvm]
        raise UserError(
            f"target {target.name!r} is not a TVM target; TVM targets: {', '.join(tvm_names)}"
        )
    return target


def device_kind(target_name: str | Target) -> str:
    """``cpu``, ``cuda`` or ``opencl`` for a TVM-backed target (UserError otherwise)."""
    return tvm_target(target_name).device


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
    target = tvm_target(target_name)
    host = _llvm(host_triple or target.host_triple)
    if target.device == "cpu":
        return host
    if target.device == "cuda":
        return {"kind": "cuda", "arch": cuda_arch or _local_cuda_arch(), "host": host}
    return {"kind": "opencl", "device": "mali", "host": host}


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
