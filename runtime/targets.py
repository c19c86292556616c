"""Targets: what a user names with ``--target``, mapped to a backend and a device.

A :class:`Target` says how to make its backend, whether it can be measured on this host
(and if not, why), and where its numbers come from. ``cpu`` and ``tvm-llvm`` are
measured here. Later targets plug in by adding a :class:`Target` to :data:`TARGETS`:
``cudnn`` (PyTorch/cuDNN on a GPU), ``ort-cuda`` (onnxruntime's CUDA provider),
``tvm-cuda``, ``mali`` (TVM OpenCL on an Arm board over TVM's RPC tracker: its
``available`` check would look for the tracker, its backend's runnables time on the board).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime._target import Target
from onnx_hwprune.runtime.backend import Backend

__all__ = ["TARGETS", "Target", "get_target", "target_names"]

logger = logging.getLogger(__name__)


def _ort_cpu(threads: int | None = None, **_: object) -> Backend:
    from onnx_hwprune.runtime.ort_cpu import OrtCpuBackend

    return OrtCpuBackend(threads=threads)


def _tvm_llvm(threads: int | None = None, **options: object) -> Backend:
    from onnx_hwprune.runtime.tvm_llvm import TvmLlvmBackend

    return TvmLlvmBackend(threads=threads, **options)


def _has(module: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        # find_spec does not import: TVM's import time is only paid by TVM features.
        if importlib.util.find_spec(module) is None:
            hint = " (pip install 'onnx-hwprune[tvm]')" if module == "tvm" else ""
            return False, f"python package {module!r} is not installed{hint}"
        return True, ""

    return check


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "cpu",
            "onnxruntime CPU provider, all graph optimizations (NCHWc), this host",
            "measured on this host with onnxruntime's CPUExecutionProvider",
            _ort_cpu,
            _has("onnxruntime"),
            # MLAS runs a chain of convs in its NCHWc layout only while in-channels are
            # multiples of 4; one count that breaks the chain adds layout reorders around
            # the layer, which the isolated micro-benchmark pays at every count. Measured
            # here: a pruned digits ResNet with 29 and 62 channels ran 1.5x slower.
            channel_multiple=4,
        ),
        Target(
            "tvm-llvm",
            "TVM Relax, compiled for this host's CPU with LLVM (default schedules)",
            "measured on this host with TVM (Relax ONNX frontend, llvm -mcpu=native)",
            _tvm_llvm,
            _has("tvm"),
        ),
    )
}


def _register_extra_targets() -> None:
    """Targets defined beside their backends: TVM over RPC (tvm-cuda, mali) and GPUs
    (cudnn, cudnn-benchmark, ort-cuda, and one per profile shipped in the package).
    Imported here, after ``Target`` exists, so that those modules can build entries."""
    from onnx_hwprune.runtime.gpu_targets import gpu_targets
    from onnx_hwprune.runtime.tvm_targets import EXTRA_TARGETS

    for extra in (EXTRA_TARGETS, gpu_targets()):
        for name, target in extra.items():
            if name in TARGETS:
                raise ValueError(f"duplicate target {name!r}")
            TARGETS[name] = target


_register_extra_targets()


def target_names() -> list[str]:
    """Known target names (for CLI choices)."""
    return sorted(TARGETS)


def get_target(name: str) -> Target:
    """The target called ``name``; :class:`UserError` if unknown or not measurable here."""
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; known: {', '.join(target_names())}")
    target = TARGETS[name]
    ok, why = target.available()
    if not ok:
        raise UserError(f"target {name!r} cannot be measured on this host: {why}")
    return target
