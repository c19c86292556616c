"""Channel groups and pruning on every architecture family built in code.

Expectations are derived from each graph's structure (which op couples what), so the
tests hold for any channel counts the builders choose.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import group_of, random_inputs, run, zero_channels, zero_preserving

from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model, verify_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import global_plan, uniform_plan
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.testing.families import FAMILIES

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    model = normalize_model(FAMILIES[request.param]())
    graph = load_graph(model)
    return request.param, model, graph, analyze_channel_groups(graph)


def _nodes(graph: gs.Graph, *ops: str) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op in ops]


def _is_activation(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Variable) and t.shape is not None and len(t.shape) >= 2


def test_only_the_interface_is_frozen(family):
    _, _, graph, groups = family
    interface = {t.name for t in (*graph.inputs, *graph.outputs)}
    for group in groups:
        touches_interface = any(m.tensor in interface for m in group.members)
        assert group.frozen == touches_interface, (group.name, group.frozen_reasons)


def test_layer_filters_share_a_group_with_their_output(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Conv", "Gemm", "MatMul", "ConvTranspose"):
        out_groups = {g.name for g in group_of(groups, node.outputs[0].name)}
        w_axis = (
            1
            if node.op == "ConvTranspose"
            or (node.op in ("Gemm", "MatMul") and not node.attrs.get("transB"))
            else 0
        )
        w_groups = {g.name for g in group_of(groups, node.inputs[1].name, w_axis)}
        assert out_groups and out_groups == w_groups, node.name


def test_elementwise_operands_are_coupled(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Add", "Mul", "Sum", "Sub"):
        full = [
            t for t in node.inputs if _is_activation(t) and t.shape[1] == node.outputs[0].shape[1]
        ]
        if len(full) < 2:
            continue
        expected = {g.name for g in group_of(groups, node.outputs[0].name)}
        for t in full:
            assert {g.name for g in group_of(groups, t.name)} == expected, node.name


def test_concat_and_split_use_offsets(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Concat", "Split"):
        if int(node.attrs.get("axis", 0)) % len(node.outputs[0].shape) != 1:
            continue
        whole, pieces = (
            (node.outputs[0], node.inputs)
            if node.op == "Concat"
            else (node.inputs[0], node.outputs)
        )
        offset = 0
        for piece in pieces:
            for group in group_of(groups, piece.name):
                spaces = group.spaces()
                piece_map = spaces[(piece.name, 1)].index_map
                # An atom may span several pieces (a shuffle after the concat): compare
                # only its positions inside this piece's range.
                end = offset + piece.shape[1]
                whole_map = tuple(
                    tuple(p for p in ps if offset <= p < end)
                    for ps in spaces[(whole.name, 1)].index_map
                )
                assert whole_map == tuple(tuple(p + offset for p in ps) for ps in piece_map), (
                    node.name
                )
            offset += piece.shape[1]
        assert offset == whole.shape[1]


def test_depthwise_conv_couples_input_and_output(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Conv"):
        cin = node.inputs[0].shape[1]
        if int(node.attrs.get("group", 1)) != cin or cin == 1:
            continue
        multiplier = node.outputs[0].shape[1] // cin
        for group in group_of(groups, node.inputs[0].name):
            spaces = group.spaces()
            in_map, out_map = (
                spaces[(node.inputs[0].name, 1)].index_map,
                spaces[(node.outputs[0].name, 1)].index_map,
            )
            for ins, outs in zip(in_map, out_map, strict=True):
                assert outs == tuple(c * multiplier + j for c in ins for j in range(multiplier))


def test_grouped_conv_prunes_the_same_position_in_every_group(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Conv"):
        g, cin = int(node.attrs.get("group", 1)), node.inputs[0].shape[1]
        if g in (1, cin):
            continue
        per_group = cin // g
        for group in group_of(groups, node.inputs[1].name, 1):
            in_map = group.spaces()[(node.inputs[0].name, 1)].index_map
            for positions in in_map:
                assert len(positions) == g and len({p % per_group for p in positions}) == 1


def test_flatten_maps_a_channel_to_a_block_of_features(family):
    _, _, graph, groups = family
    for node in _nodes(graph, "Flatten", "Reshape"):
        src, dst = node.inputs[0], node.outputs[0]
        if not (_is_activation(src) and len(src.shape) == 4 and dst.shape and len(dst.shape) == 2):
            continue
        block = math.prod(src.shape[2:])
        for group in group_of(groups, src.name):
            src_map = group.spaces()[(src.name, 1)].index_map
            dst_map = group.spaces()[(dst.name, 1)].index_map
            for (c,), feats in zip(src_map, dst_map, strict=True):
                assert feats == tuple(range(c * block, (c + 1) * block))


def test_channel_shuffle_is_a_permutation(family):
    name, _, graph, groups = family
    transposes = [
        n for n in _nodes(graph, "Transpose") if list(n.attrs.get("perm", [])) == [0, 2, 1, 3, 4]
    ]
    if name == "shufflenet":
        assert transposes, "the shufflenet family must contain a channel shuffle"
    for t in transposes:
        first, last = t.inputs[0].inputs[0], t.outputs[0].outputs[0]
        x, y = first.inputs[0], last.outputs[0]
        g, per = first.outputs[0].shape[1:3]
        for group in group_of(groups, x.name):
            xs, ys = group.spaces()[(x.name, 1)].index_map, group.spaces()[(y.name, 1)].index_map
            for xi, yi in zip(xs, ys, strict=True):
                assert sorted(yi) == sorted((p % per) * g + p // per for p in xi)
                assert len({p % per for p in xi}) == 1  # same position in every shuffle group


def _prune(
    model: onnx.ModelProto, method: str, ratio: float, criterion: str = "l1"
) -> onnx.ModelProto:
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, criterion)
    plan = (uniform_plan if method == "uniform" else global_plan)(groups, scores, ratio)
    out = export_model(remove_channels(graph, groups, plan))
    verify_model(out)
    return out


@pytest.mark.parametrize("method", ["uniform", "global"])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pruned_model_is_valid_smaller_and_runs(name, ratio, method):
    model = normalize_model(FAMILIES[name]())
    pruned = _prune(model, method, ratio)
    onnx.checker.check_model(pruned, full_check=True)
    onnx.shape_inference.infer_shapes(pruned, strict_mode=True)
    feeds = random_inputs(model)
    before, after = run(model, feeds)[0], run(pruned, feeds)[0]
    assert after.shape == before.shape and np.isfinite(after).all()
    size = sum(np.prod(t.dims) for t in pruned.graph.initializer)
    assert size < sum(np.prod(t.dims) for t in model.graph.initializer)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_zeroed_channels_are_removed_exactly(name, criterion):
    """Zero channels in every producer of each group, prune: same outputs, and the
    planner removed exactly the zeroed (lowest-ranked) channels."""
    rng = np.random.default_rng(1)
    model = normalize_model(FAMILIES[name]())
    groups = analyze_channel_groups(load_graph(model))
    zeroed: dict[str, list[int]] = {}
    for group in groups.prunable:
        k = math.floor(group.size * 0.3 + 1e-9)
        if k and zero_preserving(model, group):
            zeroed[group.name] = sorted(rng.choice(group.size, k, replace=False).tolist())
            model = zero_channels(model, group, zeroed[group.name])
    assert zeroed, "every family has at least one group to test"
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    full = uniform_plan(groups, channel_importance(graph, groups, criterion), 0.3)
    plan = Plan({n: gp for n, gp in full.groups.items() if n in zeroed})
    for group_name, indices in zeroed.items():
        assert list(plan.groups[group_name].removed) == indices, group_name
    pruned = export_model(remove_channels(graph, groups, plan))
    feeds = random_inputs(model)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)
