"""onnx-hwprune: hardware-aware channel pruning for ONNX CNNs.

Public API:
    prune(model, ratio=..., method=..., criterion=...) -> PruneResult
    Module, Pass, Sequential, PassContext: the pass manager
    Plan: plans as data

The names are imported on first use (PEP 562): ``import onnx_hwprune.cost_models.x`` or
``onnx-hwprune --version`` must not pay for onnx, onnxruntime and the whole API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnx_hwprune._version import __version__

if TYPE_CHECKING:
    from onnx_hwprune.api import PruneResult, prune
    from onnx_hwprune.errors import UserError
    from onnx_hwprune.passes._infra import (
        Module,
        Pass,
        PassContext,
        Sequential,
        TimingInstrument,
    )
    from onnx_hwprune.passes.plan.plan import Plan

# Public name -> the module that defines it.
_LAZY = {
    "PruneResult": "onnx_hwprune.api",
    "prune": "onnx_hwprune.api",
    "UserError": "onnx_hwprune.errors",
    "Module": "onnx_hwprune.passes._infra",
    "Pass": "onnx_hwprune.passes._infra",
    "PassContext": "onnx_hwprune.passes._infra",
    "Sequential": "onnx_hwprune.passes._infra",
    "TimingInstrument": "onnx_hwprune.passes._infra",
    "Plan": "onnx_hwprune.passes.plan.plan",
}

__all__ = [
    "Module",
    "Pass",
    "PassContext",
    "Plan",
    "PruneResult",
    "Sequential",
    "TimingInstrument",
    "UserError",
    "__version__",
    "prune",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnx_hwprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
