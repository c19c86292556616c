"""The latency planner and snap on synthetic cost models whose best answers are known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.plan.latency import LatencyPlanner
from onnx_hwprune.testing.families import FAMILIES


@dataclass(frozen=True)
class _Ms:
    ms: float


@dataclass
class StairCost:
    """latency(layer) = weight * ceil(in/step_in) * ceil(out/step_out): a 2-D staircase."""

    step: dict[str, tuple[int, int]]
    weight: dict[str, float]
    residual_ms: float = 0.1

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> _Ms:
        si, so = self.step.get(node, (1, 1))
        return _Ms(self.weight.get(node, 0.0) * math.ceil(in_ch / si) * math.ceil(out_ch / so))


@pytest.fixture(scope="module")
def vgg():
    graph = load_graph(FAMILIES["vgg"]())
    groups = analyze_channel_groups(graph)
    layers = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm")]
    return graph, groups, channel_importance(graph, groups, "l1"), layers


def _planner(vgg, cost, **kw) -> LatencyPlanner:
    graph, groups, scores, layers = vgg
    return LatencyPlanner(graph, groups, scores, cost, layers, **kw)


def _stair_cost(layers, step=8) -> StairCost:
    return StairCost({n: (step, step) for n in layers}, {n: 0.01 for n in layers})


def _expected_edges(group) -> list[int]:
    """Edges of the 8x8 staircase in group counts, descending (closed form)."""
    widths = {len(m.index_map[0]) for m in group.members}
    if widths == {1}:  # one position per channel: a step every 8 channels
        counts = {min(group.size, math.ceil(c / 8) * 8) for c in range(1, group.size + 1)}
        return sorted(counts, reverse=True)
    assert widths == {1, 16}  # flattened into 16 features: every channel crosses 2 steps
    return list(range(group.size, 0, -1))


def test_stair_edges_are_the_true_edges(vgg):
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers, step=8), max_group_ratio=1.0)
    for group in planner.groups.values():
        assert planner.stair_edges(group.name) == _expected_edges(group), group.name


def test_no_group_collapses(vgg):
    """A budget far below reach: every group stops at its floor, a quarter of its channels
    (the default plan.max_group_ratio is 0.75)."""
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers, step=1))
    plan = planner.plan_to_budget(planner.predict({}) * 0.01)
    for name, gp in plan.groups.items():
        assert len(gp.keep) == math.ceil(gp.size * 0.25), name


def test_plan_meets_the_budget_at_stair_edges_only(vgg):
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers))
    full = planner.predict({})
    for fraction in (0.8, 0.5, 0.3):
        plan = planner.plan_to_budget(full * fraction)
        assert plan.meta["predicted_ms"] <= full * fraction
        for name, gp in plan.groups.items():
            assert len(gp.keep) in _expected_edges(planner.groups[name]), (name, len(gp.keep))
            kept_scores = scores[name][list(gp.keep)]
            assert all(scores[name][i] <= kept_scores.min() for i in gp.removed)


def test_groups_that_buy_no_latency_are_not_pruned(vgg):
    """Only one group's layers cost anything: every other group must stay whole."""
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers))
    target = next(iter(planner.groups))
    # each paying layer's cost depends only on the axis that belongs to the target group
    steps = {}
    for layer in planner.map.layers_of_group[target]:
        on_input = (target, 1) in planner.map.width.get(layer.in_space, [])
        steps[layer.node] = (8, 10**9) if on_input else (10**9, 8)
    cost = StairCost(steps, {n: (0.01 if n in steps else 0.0) for n in layers})
    planner = _planner(vgg, cost)
    plan = planner.plan_to_budget(planner.predict({}) * 0.6)
    for name, gp in plan.groups.items():
        assert (len(gp.keep) < gp.size) == (name == target), name


def test_known_optimum_two_groups():
    """Two groups of 32 feeding one conv each; group A costs 10x per step of 8, B 1x.
    With equal importance everywhere, the cheapest way to halve latency is to prune A
    only, to exactly the edge that meets the budget."""
    graph = load_graph(FAMILIES["inception"]())
    groups = analyze_channel_groups(graph)
    scores = {g.name: np.ones(g.size) for g in groups.prunable}
    layers = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm")]
    planner = LatencyPlanner(graph, groups, scores, StairCost({}, {}), layers)
    a, b = list(planner.groups)[:2]
    a_out = [layer.node for layer in planner.map.layers_of_group[a]][0]
    b_out = [layer.node for layer in planner.map.layers_of_group[b]][0]
    cost = StairCost({a_out: (1, 8), b_out: (1, 8)}, {a_out: 10.0, b_out: 1.0}, residual_ms=0.0)
    planner = LatencyPlanner(graph, groups, scores, cost, layers)
    full = planner.predict({})
    plan = planner.plan_to_budget(full * 0.75)
    removed_a = planner.groups[a].size - len(plan.groups[a].keep)
    assert len(plan.groups[b].keep) == planner.groups[b].size
    # the smallest multiple-of-8 cut of A that meets the budget
    in_a = planner.map.layer_counts(planner.map.layers_of_group[a][0], {})[0]
    step_ms = 10.0 * in_a
    needed = math.ceil((full - full * 0.75) / step_ms - 1e-9) * 8
    assert removed_a == needed


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_snap_never_slower_never_below_the_request(vgg, ratio):
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers))
    plan = uniform_plan(groups, scores, ratio)
    snapped = planner.snap(plan, scores)
    before = planner.predict({n: gp.size - len(gp.keep) for n, gp in plan.groups.items()})
    after = planner.predict({n: gp.size - len(gp.keep) for n, gp in snapped.groups.items()})
    assert after <= before + 1e-12
    for name, gp in plan.groups.items():
        assert set(gp.keep) <= set(snapped.groups[name].keep)
        # moved up to the top of its stair
        assert len(snapped.groups[name].keep) in _expected_edges(planner.groups[name])


@pytest.mark.parametrize("name", ["mobilenetv2", "resnext", "densenet", "vgg"])
def test_analytic_macs_match_the_rewritten_graph(name):
    from onnx_hwprune.passes.analysis.stats import model_stats
    from onnx_hwprune.passes.transform.remove_channels import remove_channels

    graph = load_graph(FAMILIES[name]())
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    layers = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    planner = LatencyPlanner(graph, groups, scores, StairCost({}, {}), layers)
    plan = uniform_plan(groups, scores, 0.4)
    removed = {n: gp.size - len(gp.keep) for n, gp in plan.groups.items()}
    assert planner.map.macs(removed) == model_stats(remove_channels(graph, groups, plan)).macs
    assert planner.map.macs({}) == model_stats(graph).macs


def test_channel_multiple_makes_other_counts_infeasible(vgg):
    graph, groups, scores, layers = vgg
    planner = _planner(vgg, _stair_cost(layers, step=1), channel_multiple=4)
    full = planner.predict({})
    plan = planner.plan_to_budget(full * 0.5)
    assert plan.meta["predicted_ms"] <= full * 0.5
    for gp in plan.groups.values():
        assert len(gp.keep) % 4 == 0 or len(gp.keep) == gp.size
    odd = uniform_plan(groups, scores, 0.3)  # counts like 23 of 32: not multiples of 4
    snapped = planner.snap(odd, scores)
    for name, gp in odd.groups.items():
        n = len(snapped.groups[name].keep)
        assert n >= len(gp.keep) and (n % 4 == 0 or n == gp.size)


def test_pass_reads_max_group_ratio_from_the_context(vgg):
    """``plan.max_group_ratio`` caps what the latency planning pass removes per group."""
    from types import SimpleNamespace

    from onnx_hwprune.passes._infra import Module, PassContext
    from onnx_hwprune.passes.plan.budget import LatencyBudget
    from onnx_hwprune.passes.plan.latency import LatencyPlannerPass

    graph, groups, scores, layers = vgg
    cost = _stair_cost(layers, step=1)
    cost.layers = [SimpleNamespace(node=n) for n in layers]
    mod = Module(graph, groups, scores)
    for cap in (0.5, 0.8):
        ctx = PassContext(cost_model=cost, config={"plan.max_group_ratio": cap})
        plan = LatencyPlannerPass(LatencyBudget(fraction=0.01))(mod, ctx).plan
        assert plan.groups
        for name, gp in plan.groups.items():
            assert len(gp.keep) == math.ceil(gp.size * (1 - cap) - 1e-9), (cap, name)
