"""The options of a pruning job: one definition shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.plan.baselines import check_ratio
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.memory import MemoryBudget
from onnx_hwprune.passes.plan.methods import METHODS, Method, choosable_methods
from onnx_hwprune.passes.plan.plan import Plan

__all__ = [
    "PruneOptions", "DEFAULT_BUDGET", "DEFAULT_RATIO", "DEFAULT_TARGET", "LATENCY_PLANNERS"
]  # fmt: skip

DEFAULT_TARGET = "cpu"
DEFAULT_BUDGET = LatencyBudget(fraction=0.7)  # 30% faster: a step most CNNs take easily
DEFAULT_RATIO = 0.3
# How --method latency plans: the exact program (default) or the greedy (also its fallback).
LATENCY_PLANNERS = ("exact", "greedy")
RECOVER_CHOICES = ("auto", "bias", "lsq", "distill", "none")
# Measured sensitivity (passes/analysis/sensitivity.py) as the budget planners' objective;
# "auto": on when --calib is given to a budget-driven method.
SENSITIVITY_CHOICES = ("auto", "on", "off")


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
    planner: str = "exact"
    memory_budget: MemoryBudget | str | None = None
    threads: int | None = None
    profile_db: str | os.PathLike | None = None
    pinned_profile: str | os.PathLike | None = None  # an export: plan from it alone
    measure: bool = True
    calib: object = None  # .npz path, image folder, arrays or an iterable of batches
    preprocess: str | None = None
    calib_limit: int | None = None
    calib_batch: int = 64
    recover: str | None = None  # None: "auto" when calib is given (resolved_recover)
    ridge: float = 1e-3
    recover_steps: int = 300  # distill: Adam steps at most
    recover_time: float | None = 300.0  # distill: seconds at most (None: steps only)
    eval_data: str | os.PathLike | None = None
    quantize: str | None = None  # "int8": onnxruntime's quantize_static after recovery
    input_shapes: Mapping[str, Sequence[int]] | None = field(default=None)
    # --input-shape fixes dims for measuring and planning; the written model keeps the
    # model's own (dynamic) dims unless this is set.
    fix_input_shape: bool = False
    # Data-free bias compensation from BatchNorm statistics; None: on without --calib.
    bias_compensation: bool | None = None
    # Points of top-1 (or of agreement with the original) the job may lose: with eval_data
    # the budget is bisected to the fastest plan within it; --recover auto aims at it.
    max_accuracy_drop: float | None = None
    # Relax the *default* budget when outputs move too far (None: on for the default job).
    guard: bool | None = None
    sensitivity: str = "auto"
    # Without --calib: inputs synthesised from the model's BatchNorm statistics serve as
    # calibration data ("auto": where the model and torch allow; runtime/synthesize.py).
    synthetic_data: str = "auto"
    synthetic_samples: int = 48  # a third held back for the checks

    def __post_init__(self) -> None:
        # The API takes a budget as text too ("0.6", "12ms"), as the CLI does.
        budget = self.latency_budget
        if isinstance(budget, str | float | int):
            object.__setattr__(self, "latency_budget", LatencyBudget.parse(str(budget)))
        if isinstance(self.memory_budget, str | float | int):
            object.__setattr__(self, "memory_budget", MemoryBudget.parse(str(self.memory_budget)))

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
    def effective_bias_compensation(self) -> bool:
        if self.bias_compensation is not None:
            return self.bias_compensation
        return self.resolved_recover() is None

    @property
    def effective_budget(self) -> LatencyBudget:
        return self.latency_budget or DEFAULT_BUDGET

    def method_record(self) -> Method:
        """The resolved method's registry entry (``passes.plan.methods``)."""
        method = self.resolved_method()
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose from {choosable_methods()}")
        return METHODS[method]

    def resolved_recover(self) -> str | None:
        """The recovery method to run: ``auto`` by default when there is calibration data,
        nothing for ``none``."""
        if self.recover == "none":
            return None
        return self.recover or ("auto" if self.calib is not None else None)

    def uses_sensitivity(self) -> bool:
        """Plan on the measured refit error instead of importance sums (see SENSITIVITY_CHOICES)."""
        if self.sensitivity == "off" or self.calib is None:
            return False
        return self.method_record().reads_sensitivity and self.plan is None

    def needs_cost_model(self) -> bool:
        return self.method_record().needs_cost_model or self.snap

    def validate(self) -> None:
        method, drive = self.resolved_method(), self.method_record().drive
        if self.synthetic_data not in ("auto", "off") or self.synthetic_samples < 4:
            raise UserError("synthetic_data must be 'auto' or 'off', with at least 4 samples")
        if self.ratio is not None:
            check_ratio(self.ratio)
        if drive == "budget" and self.ratio is not None:
            raise UserError(
                f"--ratio and --method {method} exclude each other: give --latency-budget"
            )
        if self.latency_budget is not None and drive == "ratio":
            raise UserError(f"--latency-budget needs --method latency, not {method}")
        if self.planner not in LATENCY_PLANNERS:
            raise UserError(f"--planner must be one of {', '.join(LATENCY_PLANNERS)}")
        if self.memory_budget is not None and (method != "latency" or self.planner != "exact"):
            raise UserError("--memory-budget needs --method latency with --planner exact")
        if self.recover not in (None, *RECOVER_CHOICES):
            raise UserError(f"unknown --recover {self.recover!r}; choose from {RECOVER_CHOICES}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop < 100.0:
            raise UserError(
                f"--max-accuracy-drop is in points, in [0, 100), got {self.max_accuracy_drop}"
            )
        if self.max_accuracy_drop is not None and self.eval_data is None and self.calib is None:
            # with --eval the budget is bisected on measured accuracy; with --calib only,
            # --recover auto aims at it on held-back agreement
            raise UserError("--max-accuracy-drop needs --eval or --calib data")
        if self.recover_time is not None and not self.recover_time > 0:
            raise UserError(f"--recover-time is in seconds, > 0, got {self.recover_time}")
        if self.recover not in (None, "none") and self.calib is None:
            raise UserError(f"--recover {self.recover} needs calibration data (--calib)")
        if self.sensitivity not in SENSITIVITY_CHOICES:
            raise UserError(f"--sensitivity must be one of {', '.join(SENSITIVITY_CHOICES)}")
        if self.sensitivity == "on" and (self.calib is None or not self.uses_sensitivity()):
            raise UserError("--sensitivity on needs --calib and --method latency")
        if self.quantize is not None and self.calib is None:
            raise UserError(f"--quantize {self.quantize} needs calibration data (--calib)")

    def to_json(self) -> dict:
        """The options as recorded in reports (paths as given, no data)."""
        return {
            "method": self.resolved_method(),
            "ratio": self.ratio if self.method_record().drive == "ratio" else None,
            "criterion": self.criterion,
            "sensitivity": self.uses_sensitivity(),
            "snap": self.snap,
            "target": self.target,
            "latency_budget": str(self.effective_budget) if self.needs_cost_model() else None,
            "recover": self.resolved_recover(),
            "planner": self.planner if self.resolved_method() == "latency" else None,
            "memory_budget": str(self.memory_budget) if self.memory_budget else None,
            "quantize": self.quantize,
            "bias_compensation": self.effective_bias_compensation,
            "fix_input_shape": self.fix_input_shape,
            "synthetic_data": self.synthetic_data,
        }
