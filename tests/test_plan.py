"""Plans as data, and the properties of the baseline planners."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from onnx_hwprune import UserError
from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import global_plan, keep_top, uniform_plan
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.testing.families import FAMILIES


@pytest.fixture(scope="module")
def analysed():
    graph = load_graph(FAMILIES["densenet"]())
    groups = analyze_channel_groups(graph)
    return groups, channel_importance(graph, groups, "l1")


def test_json_round_trip(analysed):
    groups, scores = analysed
    plan = global_plan(groups, scores, 0.4)
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    again.validate(groups)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9])
def test_uniform_removes_the_same_share_everywhere(analysed, ratio):
    groups, scores = analysed
    plan = uniform_plan(groups, scores, ratio)
    for group in groups.prunable:
        keep = plan.groups[group.name].keep
        assert len(keep) == max(1, group.size - math.floor(group.size * ratio + 1e-9))
        weakest_kept = min(scores[group.name][list(keep)])
        removed = plan.groups[group.name].removed
        assert all(scores[group.name][i] <= weakest_kept for i in removed)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_global_meets_the_total_and_never_empties_a_group(analysed, ratio):
    groups, scores = analysed
    plan = global_plan(groups, scores, ratio, max_group_ratio=0.9)
    total = sum(g.size for g in groups.prunable)
    removed = sum(len(gp.removed) for gp in plan.groups.values())
    assert removed <= math.floor(total * ratio + 1e-9)
    for group in groups.prunable:
        assert len(plan.groups[group.name].removed) <= math.floor(group.size * 0.9)
        assert plan.groups[group.name].keep


def test_keep_top_breaks_ties_by_index():
    assert keep_top(np.array([1.0, 3.0, 1.0, 3.0, 2.0]), 3) == (1, 3, 4)
    assert keep_top(np.array([1.0, 1.0, 1.0]), 2) == (0, 1)


def test_validation_refuses_plans_that_do_not_fit(analysed):
    groups, _ = analysed
    group = groups.prunable[0]
    frozen = next(g for g in groups if g.frozen)
    cases = {
        "does not have": Plan({"nope": GroupPlan(4, (0,))}),
        "has": Plan({group.name: GroupPlan(group.size + 1, (0,))}),
        "zero channels": Plan({group.name: GroupPlan(group.size, ())}),
        "invalid indices": Plan({group.name: GroupPlan(group.size, (0, group.size))}),
        "frozen": Plan({frozen.name: GroupPlan(frozen.size, (0,))}),
    }
    for words, plan in cases.items():
        with pytest.raises(UserError, match=words):
            plan.validate(groups)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"schema": "x"},
        {"schema": "onnx-hwprune.plan", "version": 99},
        {"schema": "onnx-hwprune.plan", "version": 1, "groups": {"a": {"size": 2}}},
    ],
)
def test_malformed_plan_json(data):
    with pytest.raises(UserError):
        Plan.from_json(data)
