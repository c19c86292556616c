"""Public entry points for data-driven pruning: channel scores and recovery without training.

::

    batches = calib_factory("digits_calib.npz", original, batch_size=64)  # frontends.calib
    scores = data_importance(original, groups, "reconstruction", batches)
    plan = uniform_plan(groups, scores, 0.5)
    pruned = export_model(remove_channels(graph, groups, plan))
    repaired = recover(original, pruned, groups, plan, batches, method="lsq")

``original`` is the model the channel groups were computed on (``normalize_model(src)`` or
``export_model(graph)``: tensor and node names must match the groups), ``pruned`` the
model ``remove_channels`` made from it. Calibration data is read several times, so it is
passed as a *factory*: a callable returning a fresh iterable of batches each time.

Recovery methods (:data:`RECOVERY_METHODS`):

- ``lsq``: every consumer layer of a pruned group (a Conv/Gemm/MatMul that lost input
  channels, or a grouped/depthwise conv that lost channels; group by group) is
  refitted, in topological order, by ridge least squares from the pruned
  model's input to the original model's output (``passes/transform/recover.py``); the
  intercept of the fit is the bias compensation. One pass over the data per consumer, so
  later layers also correct the errors left by earlier ones.
- ``bias``: bias compensation only, from one pass of the original model.

Both then refresh every BatchNormalization that reads a changed layer's output (one pass
each, in order). The original model is never modified; the result is a new model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnx_hwprune.frontends.calib import BatchFactory
from onnx_hwprune.frontends.onnx import export_model
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.data_importance import DataImportance
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform._refit_grouped import (
    BlockEquations,
    grouped_compensated_bias,
    solve_blocks,
)
from onnx_hwprune.passes.transform.recover import (
    LinearLayer,
    layer_is_refittable,
    refreshed_batchnorm,
)
from onnx_hwprune.passes.transform.remove_channels import kept_positions
from onnx_hwprune.runtime.calib_stats import (
    accumulate_normal_equations,
    channel_stats_provider,
    paired_moments,
    patch_column_means,
)

__all__ = ["RECOVERY_METHODS", "data_importance", "recover"]

logger = logging.getLogger(__name__)

RECOVERY_METHODS: dict[str, str] = {
    "lsq": "refit consumer layers by ridge least squares + bias, then refresh BatchNorm",
    "bias": "bias compensation of removed channels only, then refresh BatchNorm",
}


def _as_model(model: onnx.ModelProto | gs.Graph) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else export_model(model)


def data_importance(
    model: onnx.ModelProto | gs.Graph,
    groups: ChannelGroups,
    criterion: str,
    calib_batches_factory: BatchFactory,
) -> dict[str, np.ndarray]:
    """Scores ``{group name: float64 [size]}`` (higher = keep) for a data criterion.

    Args:
        model: the model (or graph) ``groups`` was computed on.
        criterion: a key of ``passes.analysis.data_importance.DATA_CRITERIA``.
        calib_batches_factory: see :func:`calib_factory`; read once.

    Raises:
        UserError: unusable calibration data.
    """
    graph = model if isinstance(model, gs.Graph) else gs.import_onnx(model)
    ctx = PassContext(activations=channel_stats_provider(calib_batches_factory))
    return dict(DataImportance(criterion)(Module(graph, groups), ctx).scores)


def recover(
    original: onnx.ModelProto | gs.Graph,
    pruned: onnx.ModelProto,
    groups: ChannelGroups,
    plan: Plan,
    calib_batches_factory: BatchFactory,
    method: str = "lsq",
    ridge: float = 1e-3,
    max_rows: int = 4096,
    seed: int = 0,
    refresh_bn: bool = True,
) -> onnx.ModelProto:
    """A repaired copy of ``pruned`` (see the module docstring for the methods).

    Args:
        original: the unpruned model (or graph) ``groups`` and ``plan`` refer to.
        pruned: ``export_model(remove_channels(graph, groups, plan))``; not modified.
        ridge: relative ridge strength for ``lsq`` (``λ = ridge * mean diag(AᵀA)``).
        max_rows: patch rows used per batch and layer for ``lsq`` (subsampled with ``seed``).
        refresh_bn: re-estimate BatchNorm statistics after changed layers.

    Raises:
        UserError: unusable calibration data; ValueError: unknown method.
    """
    if method not in RECOVERY_METHODS:
        raise ValueError(
            f"unknown recovery method {method!r}; choose from {sorted(RECOVERY_METHODS)}"
        )
    plan.validate(groups)
    source = _as_model(original)
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    consumers = _consumer_layers(source, kept_positions(groups, plan))
    logger.info("recovering %d consumer layers with %s", len(consumers), method)
    if method == "bias":
        _compensate(source, out, consumers, calib_batches_factory)
    for consumer in consumers:
        if method == "lsq":
            _refit(source, out, consumer, calib_batches_factory, ridge, max_rows, seed)
        if refresh_bn:
            _refresh_following_bn(source, out, consumer, calib_batches_factory)
    return out


def _compensate(
    source: onnx.ModelProto,
    out: onnx.ModelProto,
    consumers: list[Consumer],
    factory: BatchFactory,
) -> None:
    wanted = {c.node: (c.layer, c.input) for c in consumers}
    means = patch_column_means(source, wanted, factory())
    for c in consumers:
        _write_bias(out, c, grouped_compensated_bias(c.layer, means[c.node]))


def _refit(
    source: onnx.ModelProto,
    out: onnx.ModelProto,
    c: Consumer,
    factory: BatchFactory,
    ridge: float,
    max_rows: int,
    seed: int,
) -> None:
    eq = accumulate_normal_equations(
        source, out, c.layer, (c.input, c.output), factory(), max_rows, seed,
        BlockEquations(c.layer),
    )  # fmt: skip
    weight, bias = solve_blocks(eq, c.layer, ridge)
    _write_weight(out, c, weight)
    _write_bias(out, c, bias)


def _refresh_following_bn(
    source: onnx.ModelProto, out: onnx.ModelProto, c: Consumer, factory: BatchFactory
) -> None:
    bn = _following_batchnorm(out, c.output)
    if bn is None:
        return
    moments = paired_moments(source, out, [c.output], factory())[c.output]
    (mu, var), pruned_moments = moments
    original_moments = (mu[c.layer.out_keep], var[c.layer.out_keep])
    gamma, _, mean, variance = (_initializer(out, name) for name in bn.input[1:5])
    epsilon = _attribute(bn, "epsilon", 1e-5)
    rm, rv, g = refreshed_batchnorm(
        original_moments, pruned_moments, (mean, variance), gamma, epsilon
    )
    for name, value in zip((bn.input[3], bn.input[4], bn.input[1]), (rm, rv, g), strict=True):
        _set_initializer(out, name, value)


# --- reading consumer layers from, and writing them back into, an ONNX model ----------


@dataclass(frozen=True)
class Consumer:
    """A layer that lost input channels: its node, tensors and normalised original."""

    node: str
    input: str
    output: str
    weight: str
    layer: LinearLayer


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(name)


def _set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) initializer ``name``, keeping the old dtype when there is one."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype), name))
            return
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))


def _in_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv" or (node.op_type == "Gemm" and _attribute(node, "transB", 0)):
        return 1
    return 0


def _dense_weight(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """Gemm/MatMul weight as ``[out, in]`` with Gemm's alpha folded in."""
    if node.op_type == "MatMul":
        return w.T
    alpha = float(_attribute(node, "alpha", 1.0))
    return alpha * (w if _attribute(node, "transB", 0) else w.T)


def _bias_of(model: onnx.ModelProto, node: onnx.NodeProto, n_out: int) -> np.ndarray:
    name = node.input[2] if len(node.input) > 2 and node.op_type != "MatMul" else ""
    if not name:
        return np.zeros(n_out)
    scale = float(_attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    return scale * np.broadcast_to(_initializer(model, name).reshape(-1), (n_out,))


def _layer_of(model: onnx.ModelProto, node: onnx.NodeProto, kept: Mapping) -> LinearLayer | None:
    weight_name = node.input[1]
    w = _initializer(model, weight_name)
    conv = node.op_type == "Conv"
    if node.op_type == "Gemm" and _attribute(node, "transA", 0):
        logger.warning("%s: transA not supported by recovery, skipped", node.name)
        return None
    weight = w if conv else _dense_weight(node, w)
    in_axis = _in_axis(node)
    out_keep = kept.get((weight_name, 1 - in_axis))
    group = int(_attribute(node, "group", 1))
    in_keep = kept.get((weight_name, in_axis))
    if group > 1:  # full input channels (see _refit_grouped.py)
        in_keep = kept.get((node.input[0], 1), np.arange(w.shape[1] * group))
    auto_pad = _attribute(node, "auto_pad", b"NOTSET")
    spatial = w.ndim - 2
    return LinearLayer(
        node.op_type,
        weight,
        _bias_of(model, node, weight.shape[0]),
        in_keep,
        np.arange(weight.shape[0]) if out_keep is None else out_keep,
        tuple(_attribute(node, "pads", [0] * 2 * spatial)) if conv else (),
        tuple(_attribute(node, "strides", [1] * spatial)) if conv else (),
        tuple(_attribute(node, "dilations", [1] * spatial)) if conv else (),
        group,
        auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad,
    )


def _consumer_layers(model: onnx.ModelProto, kept: Mapping) -> list[Consumer]:
    """Conv/Gemm/MatMul nodes with a constant weight whose input axis lost channels, and
    grouped/depthwise convs that lost whole channels: refitted on the pruned input they
    now see, so the errors of earlier layers do not accumulate."""
    weights = {t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in weights or not _loses_channels(node, kept):
            continue
        layer = _layer_of(model, node, kept)
        if layer is not None and not layer_is_refittable(layer):
            logger.warning("%s: not a 2-D conv, left as pruned (no recovery)", node.name)
        elif layer is not None:
            out.append(Consumer(node.name, node.input[0], node.output[0], node.input[1], layer))
    return out


def _loses_channels(node: onnx.NodeProto, kept: Mapping) -> bool:
    """Input channels cut, or (grouped conv) whole groups cut with their outputs."""
    if (node.input[1], _in_axis(node)) in kept:
        return True
    return int(_attribute(node, "group", 1)) > 1 and (node.input[1], 0) in kept


def _node(model: onnx.ModelProto, c: Consumer) -> onnx.NodeProto:
    """The consumer's node, found by its weight (node names may be empty or repeated)."""
    return next(n for n in model.graph.node if len(n.input) > 1 and n.input[1] == c.weight)


def _write_weight(model: onnx.ModelProto, c: Consumer, dense: np.ndarray) -> None:
    """Write a refitted ``[out_kept, kept columns]`` weight in the node's own layout."""
    node = _node(model, c)
    if c.layer.is_conv:
        shape = (len(c.layer.out_keep), -1, *c.layer.weight.shape[2:])
        value = dense.reshape(shape)
    elif node.op_type == "MatMul":
        value = dense.T
    else:
        value = dense / float(_attribute(node, "alpha", 1.0))
        value = value if _attribute(node, "transB", 0) else value.T
    _set_initializer(model, node.input[1], value)


def _write_bias(model: onnx.ModelProto, c: Consumer, bias: np.ndarray) -> None:
    """Set the layer's bias, adding one (or, for MatMul, an Add node) if it has none."""
    node = _node(model, c)
    if node.op_type == "MatMul":
        _matmul_bias(model, node, bias)
        return
    if len(node.input) < 3 or not node.input[2]:
        name = _fresh_name(model, f"{node.input[1]}.recovered_bias")
        del node.input[2:]
        node.input.append(name)
        if node.op_type == "Gemm":
            _set_attribute(node, "beta", 1.0)
    beta = float(_attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    _set_initializer(model, node.input[2], bias / (beta or 1.0))


def _matmul_bias(model: onnx.ModelProto, node: onnx.NodeProto, bias: np.ndarray) -> None:
    adds = [n for n in model.graph.node if n.op_type == "Add" and n.name == node.name + "/bias"]
    if adds:
        _set_initializer(model, adds[0].input[1], bias)
        return
    out, pre = node.output[0], _fresh_name(model, node.output[0] + ".pre_bias")
    name = _fresh_name(model, node.input[1] + ".recovered_bias")
    node.output[0] = pre
    _set_initializer(model, name, bias)
    index = list(model.graph.node).index(node) + 1
    model.graph.node.insert(
        index, onnx.helper.make_node("Add", [pre, name], [out], node.name + "/bias")
    )


def _set_attribute(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _fresh_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer}
    taken |= {o for n in model.graph.node for o in (*n.input, *n.output)}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    return name


def _following_batchnorm(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    """The BatchNormalization reading ``tensor`` when it is that tensor's only reader."""
    readers = [n for n in model.graph.node if tensor in n.input]
    if len(readers) == 1 and readers[0].op_type == "BatchNormalization":
        return readers[0]
    return None
