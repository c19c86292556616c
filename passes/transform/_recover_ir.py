"""Recovery's view of the IR: the consumer layers it refits, read from the original graph,
and their new parameters, written into the pruned graph.

A *consumer* is a Conv/Gemm/MatMul with a constant weight whose input axis lost channels
(or a grouped/depthwise conv that lost whole groups), or, for ``downstream`` refits, any
such layer whose input depends on a consumer's output. It is read from the original graph
as a :class:`_lsq.LinearLayer` (Gemm ``alpha`` and transposes folded in) and found again
in the pruned graph by its weight's name: node names may be empty or repeated, weight
names are unique. Writes replace a constant's values (keeping its dtype), never mutate
the array: ``gs.Graph.copy`` shares weight arrays between the copies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.transform._lsq import LinearLayer, layer_is_refittable

__all__ = [
    "Consumer",
    "consumer_layers",
    "following_batchnorm",
    "set_values",
    "write_bias",
    "write_weight",
]

logger = logging.getLogger(__name__)

_LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Consumer:
    """A layer that lost input channels: its node, tensors and normalised original."""

    node: str
    input: str
    output: str
    weight: str
    layer: LinearLayer


def _in_axis(node: gs.Node) -> int:
    if node.op == "Conv" or (node.op == "Gemm" and node.attrs.get("transB", 0)):
        return 1
    return 0


def _dense_weight(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """Gemm/MatMul weight as ``[out, in]`` with Gemm's alpha folded in."""
    if node.op == "MatMul":
        return w.T
    alpha = float(node.attrs.get("alpha", 1.0))
    return alpha * (w if node.attrs.get("transB", 0) else w.T)


def _bias_of(node: gs.Node, n_out: int) -> np.ndarray | None:
    """The layer's bias as ``[out]`` (zeros without one); None when it is not a constant."""
    bias = node.inputs[2] if len(node.inputs) > 2 and node.op != "MatMul" else None
    if bias is None or bias.is_empty():
        return np.zeros(n_out)
    if not isinstance(bias, gs.Constant):
        return None
    scale = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    return scale * np.broadcast_to(np.asarray(bias.values).reshape(-1), (n_out,))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _layer_of(node: gs.Node, kept: Mapping) -> LinearLayer | None:
    weight_name, w = node.inputs[1].name, np.asarray(node.inputs[1].values)
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        logger.warning("%s: transA not supported by recovery, skipped", node.name)
        return None
    conv = node.op == "Conv"
    weight = w if conv else _dense_weight(node, w)
    bias = _bias_of(node, weight.shape[0])
    if bias is None:
        logger.warning("%s: bias is not a constant, not refitted", node.name)
        return None
    in_axis, group = _in_axis(node), int(node.attrs.get("group", 1))
    out_keep = kept.get((weight_name, 1 - in_axis))
    in_keep = kept.get((weight_name, in_axis), np.arange(w.shape[in_axis]))
    if group > 1:  # full input channels (see _refit_grouped.py)
        in_keep = kept.get((node.inputs[0].name, 1), np.arange(w.shape[1] * group))
    spatial, attrs = w.ndim - 2, node.attrs
    return LinearLayer(
        node.op, weight, bias, in_keep,
        np.arange(weight.shape[0]) if out_keep is None else out_keep,
        tuple(attrs.get("pads", [0] * 2 * spatial)) if conv else (),
        tuple(attrs.get("strides", [1] * spatial)) if conv else (),
        tuple(attrs.get("dilations", [1] * spatial)) if conv else (),
        group, _text(attrs.get("auto_pad", "NOTSET")),
    )  # fmt: skip


def _loses_channels(node: gs.Node, kept: Mapping) -> bool:
    """Input channels cut, or (grouped conv) whole groups cut with their outputs."""
    weight = node.inputs[1].name
    if (weight, _in_axis(node)) in kept:
        return True
    return int(node.attrs.get("group", 1)) > 1 and (weight, 0) in kept


def consumer_layers(graph: gs.Graph, kept: Mapping, downstream: bool = False) -> list[Consumer]:
    """Consumers of ``graph`` (the original) in topological order: refitted on the pruned
    input they now see, so the errors of earlier layers do not accumulate. With
    ``downstream``, also every later layer whose input depends on a consumer's output:
    its weights are intact, but its input carries what the refits upstream could not
    repair (see ``recover.py``)."""
    out, changed = [], set()
    for node in graph.nodes:
        inputs = [t.name for t in node.inputs if not isinstance(t, gs.Constant)]
        if any(name in changed for name in inputs):
            changed.update(t.name for t in node.outputs)
        if node.op not in _LAYER_OPS or len(node.inputs) < 2:
            continue
        if not isinstance(node.inputs[1], gs.Constant):
            continue
        follows = downstream and node.inputs[0].name in changed
        if not (_loses_channels(node, kept) or follows):
            continue
        changed.update(t.name for t in node.outputs)  # refitted or not, it differs
        layer = _layer_of(node, kept)
        if layer is not None and not layer_is_refittable(layer):
            logger.warning("%s: not a 2-D conv, not refitted", node.name)
        elif layer is not None:
            names = (node.inputs[0].name, node.outputs[0].name, node.inputs[1].name)
            out.append(Consumer(node.name, *names, layer))
    return out


def _node(graph: gs.Graph, c: Consumer) -> gs.Node:
    return next(n for n in graph.nodes if len(n.inputs) > 1 and n.inputs[1].name == c.weight)


def set_values(tensor: gs.Tensor, value: np.ndarray) -> None:
    """New values for a constant, in its old dtype (the array is replaced, not mutated)."""
    tensor.values = np.asarray(value, np.asarray(tensor.values).dtype)


def write_weight(graph: gs.Graph, c: Consumer, dense: np.ndarray) -> None:
    """Write a refitted ``[out_kept, kept columns]`` weight in the node's own layout."""
    node = _node(graph, c)
    if c.layer.is_conv:
        value = dense.reshape((len(c.layer.out_keep), -1, *c.layer.weight.shape[2:]))
    elif node.op == "MatMul":
        value = dense.T
    else:
        value = dense / float(node.attrs.get("alpha", 1.0))
        value = value if node.attrs.get("transB", 0) else value.T
    set_values(node.inputs[1], value)


def write_bias(graph: gs.Graph, c: Consumer, bias: np.ndarray) -> None:
    """Set the layer's bias, adding one (or, for MatMul, an Add node) if it has none."""
    node = _node(graph, c)
    if node.op == "MatMul":
        _matmul_bias(graph, node, bias)
        return
    if len(node.inputs) < 3 or node.inputs[2].is_empty():
        name = _fresh_name(graph, f"{node.inputs[1].name}.recovered_bias")
        while len(node.inputs) > 2:  # an empty bias name; gs lists take no slice delete
            del node.inputs[-1]
        node.inputs.append(gs.Constant(name, np.zeros(len(bias), np.float32)))
        if node.op == "Gemm":
            node.attrs["beta"] = 1.0
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    set_values(node.inputs[2], bias / (beta or 1.0))


def _matmul_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray) -> None:
    adds = [n for n in graph.nodes if n.op == "Add" and n.name == node.name + "/bias"]
    if adds:
        set_values(adds[0].inputs[1], bias)
        return
    out = node.outputs[0]
    pre = gs.Variable(_fresh_name(graph, out.name + ".pre_bias"), out.dtype, out.shape)
    name = _fresh_name(graph, node.inputs[1].name + ".recovered_bias")
    node.outputs[0] = pre
    constant = gs.Constant(name, np.asarray(bias, np.float32))
    add = gs.Node("Add", node.name + "/bias", inputs=[pre, constant], outputs=[out])
    graph.nodes.insert(graph.nodes.index(node) + 1, add)


def _fresh_name(graph: gs.Graph, base: str) -> str:
    taken = set(graph.tensors())
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    return name


def following_batchnorm(graph: gs.Graph, tensor: str) -> gs.Node | None:
    """The BatchNormalization reading ``tensor`` when it is that tensor's only reader."""
    readers = [n for n in graph.nodes if any(t.name == tensor for t in n.inputs)]
    if len(readers) == 1 and readers[0].op == "BatchNormalization":
        return readers[0]
    return None
