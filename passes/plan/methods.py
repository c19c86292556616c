"""The planning methods: one registry behind ``--method``, ``prune(method=...)``, the
options' validation and the report.

A :class:`Method` says how to build its planning pass and what drives it:

- ``drive="ratio"``: a share of channels to remove (``uniform``, ``global``);
- ``drive="budget"``: a latency budget on the target's cost model (``latency``);
- ``drive="plan"``: a plan given as data (``plan``; chosen by ``--plan FILE``, not
  ``--method``).

Adding a planner is one entry here (and its own module)::

    register_method(Method("milp", "exact ...", "budget", lambda r: MilpPlannerPass(r.budget)))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.plan.baselines import GlobalPlanner, UniformPlanner
from onnx_hwprune.passes.plan.budget import LatencyBudget
from onnx_hwprune.passes.plan.exact import ExactPlannerPass
from onnx_hwprune.passes.plan.latency import LatencyPlannerPass
from onnx_hwprune.passes.plan.memory import MemoryBudget
from onnx_hwprune.passes.plan.plan import Plan

__all__ = [
    "METHODS",
    "Method",
    "PlanRequest",
    "UsePlan",
    "choosable_methods",
    "get_method",
    "register_method",
]

Drive = Literal["ratio", "budget", "plan"]


@dataclass(frozen=True)
class PlanRequest:
    """What a method may read to build its pass: the user's ratio, budget and plan."""

    ratio: float
    budget: LatencyBudget
    plan: Plan | None = None
    planner: str = "exact"  # for drive="budget": "exact" (MILP) or "greedy"
    memory_budget: MemoryBudget | None = None


@dataclass(frozen=True)
class Method:
    """A planning method.

    Attributes:
        name: the ``--method`` value and the ``method`` recorded in plans and reports.
        help: one line for ``--help``.
        drive: which option drives it (see the module doc).
        make: ``make(request) -> Pass`` building the planning pass.
        choosable: offered by ``--method`` (``plan`` is chosen by ``--plan`` instead).
    """

    name: str
    help: str
    drive: Drive
    make: Callable[[PlanRequest], Pass]
    choosable: bool = True

    @property
    def needs_cost_model(self) -> bool:
        return self.drive == "budget"

    @property
    def needs_scores(self) -> bool:
        return self.drive != "plan"

    @property
    def reads_sensitivity(self) -> bool:
        """Its planner minimises ``Module.sensitivity`` (measured with ``--calib``) when
        present: the budget planners, which choose how many channels each group keeps."""
        return self.drive == "budget"


class UsePlan(Pass):
    """Put a given plan (loaded from JSON, made elsewhere) into the module, validated."""

    name = "UsePlan"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def requires(self, mod: Module) -> None:
        if mod.groups is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        self.plan.validate(mod.groups)
        return mod.replace(plan=self.plan)


def _given(request: PlanRequest) -> Pass:
    if request.plan is None:
        raise ValueError("method 'plan' needs a plan")
    return UsePlan(request.plan)


def _latency_pass(request: PlanRequest) -> Pass:
    # The exact planner (MILP) is the default; the greedy stays as --planner greedy and as
    # the exact planner's own fallback when no solver is installed.
    if request.planner == "greedy":
        return LatencyPlannerPass(request.budget)
    return ExactPlannerPass(request.budget, request.memory_budget)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS`; refuses a duplicate name."""
    if method.name in METHODS:
        raise ValueError(f"planning method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


for _method in (
    Method(
        "latency",
        "most importance kept under --latency-budget on the target (default)",
        "budget",
        _latency_pass,
    ),
    Method(
        "uniform",
        "hardware-blind baseline: every group loses --ratio of its channels",
        "ratio",
        lambda r: UniformPlanner(r.ratio),
    ),
    Method(
        "global",
        "hardware-blind baseline: the weakest --ratio of all channels, one ranking",
        "ratio",
        lambda r: GlobalPlanner(r.ratio),
    ),
    Method("plan", "apply a saved plan (--plan FILE)", "plan", _given, choosable=False),
):
    register_method(_method)


def choosable_methods() -> list[str]:
    """The ``--method`` choices, sorted."""
    return sorted(name for name, m in METHODS.items() if m.choosable)


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None
