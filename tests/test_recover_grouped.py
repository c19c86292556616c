"""Sequential reconstruction covers grouped, depthwise and auto_pad convs and dense heads."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import group_of, run
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.frontends.calib import calib_factory
from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model, verify_model
from onnx_hwprune.frontends.onnx._pads import explicit_pads
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform._refit_grouped import BlockEquations, solve_blocks
from onnx_hwprune.passes.transform.recover import LinearLayer, output_rows, patch_rows
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.recovery import recover

HW = 9  # odd, so SAME pads are asymmetric


def _weights(rng) -> dict[str, np.ndarray]:
    """conv_a 3->8 (no ReLU) -> grouped conv 8->8 (group 2, SAME_LOWER, stride 2) ->
    depthwise 3x3 (SAME_UPPER) + ReLU -> 1x1 conv 8->6 + ReLU -> GAP -> Gemm 6->4.

    Constructed so the channels removed below carry no information:
    - conv_a channels 3 and 7 (local position 3 of both groups of the grouped conv) are
      linear combinations of channels of their own group, bias included, so they are
      reproducible everywhere, padding included;
    - depthwise channels 1 and 5 (local position 1 of the grouped conv's outputs) have a
      zero filter and a positive bias: constant after the ReLU;
    - 1x1 conv channels 2 and 4: zero filters, positive bias: constant after the ReLU.
    """
    w = {
        "wa": rng.standard_normal((8, 3, 3, 3)) / 4, "ba": rng.standard_normal(8),
        "wg": rng.standard_normal((8, 4, 3, 3)) / 6, "bg": rng.standard_normal(8),
        "wd": rng.standard_normal((8, 1, 3, 3)) / 3, "bd": rng.standard_normal(8),
        "wc": rng.standard_normal((6, 8, 1, 1)) / 3, "bc": rng.standard_normal(6),
        "wf": rng.standard_normal((4, 6)), "bf": rng.standard_normal(4),
    }  # fmt: skip
    for dst, (a, b) in ((3, (0, 1)), (7, (4, 6))):
        w["wa"][dst] = w["wa"][a] - 0.5 * w["wa"][b]
        w["ba"][dst] = w["ba"][a] - 0.5 * w["ba"][b]
    w["wd"][[1, 5]], w["bd"][[1, 5]] = 0.0, [0.8, 1.2]
    w["wc"][[2, 4]], w["bc"][[2, 4]] = 0.0, [0.5, 0.9]
    return w


def _model(rng) -> onnx.ModelProto:
    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
        mk("Conv", ["a", "wg", "bg"], ["g"], group=2, auto_pad="SAME_LOWER", strides=[2, 2]),
        mk("Conv", ["g", "wd", "bd"], ["d"], group=8, auto_pad="SAME_UPPER"),
        mk("Relu", ["d"], ["dr"]),
        mk("Conv", ["dr", "wc", "bc"], ["c"]),
        mk("Relu", ["c"], ["cr"]),
        mk("GlobalAveragePool", ["cr"], ["p"]),
        mk("Flatten", ["p"], ["f"]),
        mk("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in _weights(rng).items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return normalize_model(model)


def _plan(groups) -> Plan:
    removed = {"a": 3, "g": 1, "c": (2, 4)}
    plans = {}
    for tensor, drop in removed.items():
        (group,) = group_of(groups, tensor)
        drop = drop if isinstance(drop, tuple) else (drop,)
        plans[group.name] = GroupPlan(
            group.size, tuple(i for i in range(group.size) if i not in drop)
        )
    return Plan(plans)


def test_sequential_reconstruction_is_exact_through_grouped_depthwise_and_gemm():
    rng = np.random.default_rng(0)
    model = _model(rng)
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    plan = _plan(groups)
    pruned = export_model(remove_channels(graph, groups, plan))
    data = {"x": rng.standard_normal((48, 3, HW, HW)).astype(np.float32)}
    factory = calib_factory(data, model, batch_size=16)
    repaired = recover(model, pruned, groups, plan, factory, method="lsq", ridge=1e-6)
    verify_model(repaired)
    want = run(model, data)[0]
    scale = np.abs(want).max()
    assert np.abs(run(pruned, data)[0] - want).max() > 0.05 * scale  # removal alone is wrong
    np.testing.assert_allclose(run(repaired, data)[0], want, atol=2e-4 * scale, rtol=0)


@pytest.mark.parametrize(
    "auto_pad,stride,dilation",  # onnxruntime refuses dilation with SAME_*
    [(p, s, 1) for p in ("SAME_UPPER", "SAME_LOWER") for s in (1, 2)] + [("VALID", 2, 2)],
)
def test_auto_pad_patch_rows_reproduce_onnxruntime(auto_pad, stride, dilation):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    attrs = dict(auto_pad=auto_pad, strides=[stride] * 2, dilations=[dilation] * 2)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    (want,) = run(model, {"x": x})
    layer = LinearLayer(
        "Conv", w, np.zeros(4), np.arange(3), np.arange(4),
        strides=(stride, stride), dilations=(dilation, dilation), auto_pad=auto_pad,
    )  # fmt: skip
    got = patch_rows(layer, x) @ layer.flat_weight().T
    np.testing.assert_allclose(got, output_rows(layer, want), atol=1e-4)


def test_explicit_pads_follow_the_onnx_rule():
    # 7 wide, kernel 3, stride 2: ceil(7/2)=4 outputs need 2*3+3-7 = 2 pad pixels.
    assert explicit_pads("SAME_UPPER", (7,), (3,), (2,), (1,)) == (1, 1)
    # 8 wide, kernel 3, stride 2: 2*3+3-8 = 1 pad pixel, at the end (UPPER) or start (LOWER).
    assert explicit_pads("SAME_UPPER", (8,), (3,), (2,), (1,)) == (0, 1)
    assert explicit_pads("SAME_LOWER", (8,), (3,), (2,), (1,)) == (1, 0)
    assert explicit_pads("VALID", (8, 8), (3, 3), (1, 1), (1, 1)) == (0, 0, 0, 0)
    assert explicit_pads("NOTSET", (8,), (3,), (1,), (1,)) is None


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_refit_undoes_a_per_channel_affine_input_change(multiplier):
    """A depthwise conv whose kept input channels arrive scaled and shifted (an upstream
    layer changed) is refitted channel by channel back to the original output exactly."""
    rng = np.random.default_rng(4)
    c, keep = 6, np.array([0, 2, 3, 5])
    w = rng.standard_normal((c * multiplier, 1, 3, 3))
    out_keep = (keep[:, None] * multiplier + np.arange(multiplier)).reshape(-1)
    layer = LinearLayer(
        "Conv", w, rng.standard_normal(c * multiplier), keep, out_keep, group=c,
        strides=(2, 2), auto_pad="VALID",
    )  # fmt: skip
    x = rng.standard_normal((8, c, 9, 9))
    scale, shift = rng.uniform(0.5, 2, len(keep)), rng.standard_normal(len(keep))
    x_pruned = x[:, keep] * scale[None, :, None, None] + shift[None, :, None, None]
    target = _depthwise(x, w, layer.bias, multiplier)[:, out_keep]
    eqs = BlockEquations(layer)
    eqs.add(patch_rows(layer, x_pruned), output_rows(layer, target))
    assert len(eqs.blocks) == len(keep)  # one small problem per kept channel
    weight, bias = solve_blocks(eqs, layer, ridge=0.0)
    got = _depthwise(x_pruned, weight.reshape(-1, 1, 3, 3), bias, multiplier)
    assert (
        np.abs(_depthwise(x_pruned, w[out_keep], layer.bias[out_keep], multiplier) - target).max()
        > 0.1
    )
    np.testing.assert_allclose(got, target, atol=1e-8)


def _depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray, multiplier: int) -> np.ndarray:
    """Reference depthwise conv, VALID, stride 2 (numpy, float64)."""
    view = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    view = np.repeat(view, multiplier, axis=1)
    return np.einsum("nchwij,cij->nchw", view, w[:, 0]) + b[None, :, None, None]
