"""onnx-hwprune: hardware-aware channel pruning for ONNX CNNs.

Public API:
    prune(model, ratio=..., method=..., criterion=...) -> PruneResult
    Module, Pass, Sequential, PassContext: the pass manager
    Plan: plans as data
"""

from onnx_hwprune._version import __version__
from onnx_hwprune.api import PruneResult, prune
from onnx_hwprune.errors import UserError
from onnx_hwprune.passes._infra import Module, Pass, PassContext, Sequential, TimingInstrument
from onnx_hwprune.passes.plan.plan import Plan

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
