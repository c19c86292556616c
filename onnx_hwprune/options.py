"""The options of a pruning job: one definition shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.plan.budget import LatencyBudget
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
    measure: bool = True
    calib: object = None  # .npz path, image folder, arrays or an iterable of batches
    preprocess: str | None = None
    calib_limit: int | None = None
    calib_batch: int = 64
    recover: str | None = None
    ridge: float = 1e-3
    eval_data: str | os.PathLike | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = field(default=None)
    # --input-shape fixes dims for measuring and planning; the written model keeps the
    # model's own (dynamic) dims unless this is set.
    fix_input_shape: bool = False
    # Data-free bias compensation from BatchNorm statistics; None: on without --calib.
    bias_compensation: bool | None = None
    # With eval_data: the fastest plan within this many points of top-1 (or agreement).
    max_accuracy_drop: float | None = None
    # Relax the *default* budget when outputs move too far (None: on for the default job).
    guard: bool | None = None

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
    def effective_recover(self) -> str | None:
        """With calibration data, ``lsq`` unless the user chose (``none`` turns it off)."""
        if self.recover == "none":
            return None
        return self.recover or ("lsq" if self.calib is not None else None)

    @property
    def effective_bias_compensation(self) -> bool:
        if self.bias_compensation is not None:
            return self.bias_compensation
        return self.effective_recover is None

    @property
    def effective_budget(self) -> LatencyBudget:
        return self.latency_budget or DEFAULT_BUDGET

    def needs_cost_model(self) -> bool:
        return self.resolved_method() == "latency" or self.snap

    def validate(self) -> None:
        method = self.resolved_method()
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UserError(f"ratio must be in [0, 1), got {self.ratio}")
        if method == "latency" and self.ratio is not None:
            raise UserError(
                "--ratio and --method latency exclude each other: give --latency-budget"
            )
        if self.latency_budget is not None and method in ("uniform", "global"):
            raise UserError(f"--latency-budget needs --method latency, not {method}")
        if self.max_accuracy_drop is not None and (self.eval_data is None or method != "latency"):
            # (the default job's guard works without --eval, on output agreement)
            raise UserError("--max-accuracy-drop needs --eval data and the latency method")
        if self.recover not in (None, "none") and self.calib is None:
            raise UserError(f"--recover {self.recover} needs calibration data (--calib)")

    def to_json(self) -> dict:
        """The options as recorded in reports (paths as given, no data)."""
        return {
            "method": self.resolved_method(),
            "ratio": self.ratio if self.resolved_method() in ("uniform", "global") else None,
            "criterion": self.criterion,
            "snap": self.snap,
            "target": self.target,
            "latency_budget": str(self.effective_budget) if self.needs_cost_model() else None,
            "recover": self.effective_recover,
            "bias_compensation": self.effective_bias_compensation,
            "fix_input_shape": self.fix_input_shape,
        }
