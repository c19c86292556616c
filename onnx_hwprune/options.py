"""The options of a pruning job: one definition shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.plan.baselines import check_ratio
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.methods import METHODS, Method, choosable_methods
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["PruneOptions", "DEFAULT_BUDGET", "DEFAULT_RATIO", "DEFAULT_TARGET"]

DEFAULT_TARGET = "cpu"
DEFAULT_BUDGET = LatencyBudget(fraction=0.7)  # 30% faster: a step most CNNs take easily
DEFAULT_RATIO = 0.3


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides what ``prune`` does.

    Method resolution when ``method`` is None: a ``plan`` is applied as given; a ``ratio``
    means ``uniform``; otherwise ``latency`` with ``latency_budget`` (default 0.7 of the
    original's latency on ``target``).
    """

    method: str | None = None
    ratio: float | None = None
    criterion: str = "l1"
    plan: Plan | None = None
    snap: bool = False
    target: str = DEFAULT_TARGET
    latency_budget: LatencyBudget | str | None = None
    threads: int | None = None
    profile_db: str | os.PathLike | None = None
    pinned_profile: str | os.PathLike | None = None  # an export: plan from it alone
    measure: bool = True
    calib: object = None  # .npz path, image folder, arrays or an iterable of batches
    preprocess: str | None = None
    calib_limit: int | None = None
    calib_batch: int = 64
    recover: str | None = None
    ridge: float = 1e-3
    eval_data: str | os.PathLike | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = field(default=None)

    def __post_init__(self) -> None:
        # The API takes a budget as text too ("0.6", "12ms"), as the CLI does.
        budget = self.latency_budget
        if isinstance(budget, str | float | int):
            object.__setattr__(self, "latency_budget", LatencyBudget.parse(str(budget)))

    def resolved_method(self) -> str:
        if self.plan is not None:
            return "plan"
        if self.method is not None:
            return self.method
        return "uniform" if self.ratio is not None else "latency"

    @property
    def effective_ratio(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio

    @property
    def effective_budget(self) -> LatencyBudget:
        return self.latency_budget or DEFAULT_BUDGET

    def method_record(self) -> Method:
        """The resolved method's registry entry (``passes.plan.methods``)."""
        method = self.resolved_method()
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose from {choosable_methods()}")
        return METHODS[method]

    def needs_cost_model(self) -> bool:
        return self.method_record().needs_cost_model or self.snap

    def validate(self) -> None:
        method, drive = self.resolved_method(), self.method_record().drive
        if self.ratio is not None:
            check_ratio(self.ratio)
        if drive == "budget" and self.ratio is not None:
            raise UserError(
                f"--ratio and --method {method} exclude each other: give --latency-budget"
            )
        if self.latency_budget is not None and drive == "ratio":
            raise UserError(f"--latency-budget needs --method latency, not {method}")
        if self.recover is not None and self.calib is None:
            raise UserError(f"--recover {self.recover} needs calibration data (--calib)")

    def to_json(self) -> dict:
        """The options as recorded in reports (paths as given, no data)."""
        return {
            "method": self.resolved_method(),
            "ratio": self.ratio if self.method_record().drive == "ratio" else None,
            "criterion": self.criterion,
            "snap": self.snap,
            "target": self.target,
            "latency_budget": str(self.effective_budget) if self.needs_cost_model() else None,
            "recover": self.recover,
        }
