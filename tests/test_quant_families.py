"""Pruning quantized graphs: the zero-channel equivalence proof on QDQ and QOperator
versions of the families, made by onnxruntime's own quantizer (per-channel weights).

Channels are zeroed in the float model, so after quantization their weights are exactly
the zero point (checked below); removing them must not change a single int8 value.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import random_inputs, run, zero_channels, zero_preserving
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model, verify_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.baselines import uniform_plan
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.testing.families import FAMILIES

QUANT_FAMILIES = ["resnet_basic", "mobilenetv2", "vgg", "squeezenet", "per_channel_affine"]


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize(model: onnx.ModelProto, fmt: str, tmp_path: Path) -> onnx.ModelProto:
    src, dst = tmp_path / f"float_{fmt}.onnx", tmp_path / f"int8_{fmt}.onnx"
    onnx.save(model, src)
    feeds = [random_inputs(model, batch=1, seed=s) for s in range(4)]
    quantize_static(
        str(src),
        str(dst),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return normalize_model(onnx.load(dst))


def _zeroed_float(name: str) -> tuple[onnx.ModelProto, int]:
    rng = np.random.default_rng(3)
    model = normalize_model(FAMILIES[name]())
    total = 0
    for group in analyze_channel_groups(load_graph(model)).prunable:
        k = math.floor(group.size * 0.3 + 1e-9)
        if k and zero_preserving(model, group):
            model = zero_channels(model, group, rng.choice(group.size, k, replace=False).tolist())
            total += k
    return model, total


def _zero_score_plan(model: onnx.ModelProto) -> tuple[Plan, dict]:
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    plan = {}
    for group in groups.prunable:
        keep = tuple(int(i) for i in np.nonzero(scores[group.name] != 0)[0])
        if len(keep) < group.size:
            plan[group.name] = GroupPlan(group.size, keep)
    return Plan(plan), {"graph": graph, "groups": groups}


def _assert_int_weights_at_zero_point(model: onnx.ModelProto, plan: Plan, groups) -> None:
    """The removed filters are exactly the zero point in the quantized domain."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    checked = 0
    for name, gp in plan.groups.items():
        for m in groups[name].members:
            w = inits.get(m.tensor)
            if m.role in ("weight_out", "weight_out_q") and w is not None and w.dtype == np.int8:
                assert not np.take(w, list(m.positions(gp.removed)), axis=m.axis).any(), m.tensor
                checked += 1
    assert checked, "the plan removes filters of int8 weights"


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear producing the graph output (one int8 step)."""
    out = model.graph.output[0].name
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    return float(inits[node.input[1]])


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("name", QUANT_FAMILIES)
def test_zeroed_quantized_channels_are_removed_exactly(name, fmt, tmp_path):
    floats, zeroed = _zeroed_float(name)
    model = _quantize(floats, fmt, tmp_path)
    plan, analysis = _zero_score_plan(model)
    removed = sum(len(gp.removed) for gp in plan.groups.values())
    assert removed == zeroed, "exactly the zeroed channels score 0 and are planned away"
    _assert_int_weights_at_zero_point(model, plan, analysis["groups"])
    pruned = export_model(remove_channels(analysis["graph"], analysis["groups"], plan))
    verify_model(pruned)
    size = sum(math.prod(t.dims) for t in pruned.graph.initializer)
    assert size < sum(math.prod(t.dims) for t in model.graph.initializer)
    feeds = random_inputs(model, batch=2, seed=7)
    before, after = run(model, feeds)[0], run(pruned, feeds)[0]
    if fmt == "QOperator":
        # The output is DequantizeLinear(int8) with unchanged scale: equal floats are
        # equal int8 values, bit for bit.
        np.testing.assert_array_equal(after, before)
    else:
        assert np.abs(after - before).max() <= _output_step(model) * (1 + 1e-6)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_quantized_families_prune_like_float(fmt, tmp_path):
    """The quantized graph has the same prunable channels as the float one: Q/DQ pairs
    and the QLinear ops pass channels through, nothing freezes that did not before."""
    for name in ("resnet_basic", "mobilenetv2", "squeezenet"):
        model = normalize_model(FAMILIES[name]())
        groups_f = analyze_channel_groups(load_graph(model))
        groups_q = analyze_channel_groups(load_graph(_quantize(model, fmt, tmp_path)))
        sizes = sorted(g.size for g in groups_f.prunable)
        assert sorted(g.size for g in groups_q.prunable) == sizes, name


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_quantized_importance_follows_the_float_weights(fmt, tmp_path):
    """Per-channel int8 gives every filter the full int8 range: scores must come from the
    dequantized weights (integers times scales), else they say nothing."""
    model = normalize_model(FAMILIES["vgg"]())
    quant = _quantize(model, fmt, tmp_path)
    scores = []
    for m in (model, quant):
        graph = load_graph(m)
        groups = analyze_channel_groups(graph)
        by_size = channel_importance(graph, groups, "l1")
        scores.append(
            np.concatenate([by_size[g.name] for g in sorted(groups.prunable, key=lambda g: g.size)])
        )
    assert np.corrcoef(*scores)[0, 1] > 0.99


def _ddddocr_model() -> Path:
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or spec.origin is None:
        pytest.skip("the ddddocr package (which ships common_old.onnx) is not installed")
    return Path(spec.origin).parent / "common_old.onnx"


def test_ddddocr_common_old_prunes():
    """Dynamic quantization (ConvInteger with its run-time bias chain) prunes, and the
    result is valid, runs in onnxruntime and is smaller."""
    model = normalize_model(onnx.load(_ddddocr_model()))
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    convs = [n for n in graph.nodes if n.op == "ConvInteger"]
    assert len(groups.prunable) >= len(convs) // 2
    plan = uniform_plan(groups, channel_importance(graph, groups, "l1"), 0.3)
    pruned = export_model(remove_channels(graph, groups, plan))
    verify_model(pruned)
    size = sum(math.prod(t.dims) for t in pruned.graph.initializer)
    assert size < sum(math.prod(t.dims) for t in model.graph.initializer)
    feeds = random_inputs(model, batch=1)
    before, after = run(model, feeds)[0], run(pruned, feeds)[0]
    assert after.shape == before.shape and np.isfinite(after).all()


def test_frontend_keeps_quantized_weights(tmp_path):
    """Folding DequantizeLinear(int8 constant) would turn the model back into float."""
    model = _quantize(normalize_model(FAMILIES["resnet_basic"]()), "QDQ", tmp_path)
    graph = load_graph(model)
    weight_dqs = [
        n for n in graph.nodes if n.op == "DequantizeLinear" and n.inputs[0].dtype == np.int8
    ]
    convs = [n for n in graph.nodes if n.op == "Conv"]
    assert convs and all(n.inputs[1].inputs[0] in weight_dqs for n in convs)
