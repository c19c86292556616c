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
from dataclasses import dataclass

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import Backend

__all__ = ["TARGETS", "Target", "get_target", "target_names"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A named deployment target.

    Attributes:
        name: the ``--target`` value.
        description: one line for ``--help``.
        source: where its numbers come from (printed in reports).
        make_backend: ``make_backend(threads=None, **options) -> Backend``.
        available: ``available() -> (True, "")`` or ``(False, reason)``.
    """

    name: str
    description: str
    source: str
    make_backend: Callable[..., Backend]
    available: Callable[[], tuple[bool, str]]


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
            return False, f"python package {module!r} is not installed"
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
