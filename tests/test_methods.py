"""One registry of planning methods drives the CLI, the options and the planning passes."""

from __future__ import annotations

import argparse

import pytest

from onnx_hwprune.cli_commands import prune as prune_cli
from onnx_hwprune.errors import UserError
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes.plan.methods import (
    METHODS,
    Method,
    PlanRequest,
    UsePlan,
    choosable_methods,
    register_method,
)


def _method_choices() -> list[str]:
    parser = argparse.ArgumentParser()
    prune_cli.add_arguments(parser)
    return next(a.choices for a in parser._actions if "--method" in a.option_strings)


def test_builtin_methods_and_cli_choices():
    assert set(METHODS) == {"latency", "uniform", "global", "plan"}
    assert _method_choices() == choosable_methods() == ["global", "latency", "uniform"]
    assert {m.name: m.drive for m in METHODS.values()} == {
        "latency": "budget", "uniform": "ratio", "global": "ratio", "plan": "plan"
    }  # fmt: skip


def test_duplicate_method_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method(METHODS["uniform"])


def test_a_new_method_reaches_cli_options_and_passes(monkeypatch):
    """A later planner is one registry entry: the CLI offers it, options validate by its
    drive, and the API builds its pass."""
    from onnx_hwprune.api import planning_passes

    made: list[PlanRequest] = []

    def make(request: PlanRequest) -> UsePlan:
        made.append(request)
        return UsePlan(request.plan)

    monkeypatch.setitem(METHODS, "exact", Method("exact", "an exact planner", "budget", make))
    assert "exact" in _method_choices()
    opts = PruneOptions(method="exact", latency_budget="0.5")
    opts.validate()
    assert opts.needs_cost_model() and opts.to_json()["ratio"] is None
    with pytest.raises(UserError, match="--ratio and --method exact"):
        PruneOptions(method="exact", ratio=0.2).validate()
    passes = planning_passes(opts)
    assert len(passes) == 1 and made[0].budget.fraction == 0.5


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown method 'magic'"):
        PruneOptions(method="magic").validate()


def test_ratio_methods_refuse_a_budget():
    with pytest.raises(UserError, match="--latency-budget needs --method latency, not global"):
        PruneOptions(method="global", latency_budget="0.5").validate()
    assert PruneOptions(method="global", ratio=0.4).to_json()["ratio"] == 0.4
