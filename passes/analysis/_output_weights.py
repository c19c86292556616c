"""How much the network's output moves per unit of error at a layer: the weight of that
layer's refit error in the measured sensitivity (``sensitivity.py``).

A refit error of 10% at one layer is not a 10% error at another: what matters is what
reaches the output. Measured on PP-OCRv5's recognizer with the same relative noise
(10% of each layer's output energy) injected at one layer at a time, the KL divergence of
the output characters ranged from 0.0007 (an attention projection) to 0.18 (a depthwise
conv of the last stage) and 0.37 (the classifier): a 500-fold spread that equal
per-layer weights ignore, so the planner cut late, sensitive layers hardest.

For each layer, Gaussian noise with each output channel's own standard deviation times
``sqrt(noise)`` (``RandomNormalLike`` with a fixed seed: deterministic) is added to its
output, the noisy and the clean graph run on the same calibration batches, and the
*distortion* of the outputs is measured: the mean KL divergence from the clean to the
noisy distribution where an output is a Softmax (over its axis; its logits are compared),
else the squared error relative to the output's centred energy. The weight is the
distortion divided by ``noise``; the weights are then scaled to a mean of 1, so the
costs keep the per-layer scale. A layer whose noise does not reach the outputs gets
weight 0 (removing its input channels costs nothing there); if no layer's does, every
weight is 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["output_stds", "output_weights"]

_WRAPPERS = ("Reshape", "Flatten", "Identity")


def _targets(graph: gs.Graph) -> dict[str, int | None]:
    """``{tensor: softmax axis or None}``: each graph output, or the logits of the Softmax
    that makes it (through Reshape/Flatten/Identity, as exporters wrap it)."""
    out: dict[str, int | None] = {}
    for tensor in graph.outputs:
        node = tensor.inputs[0] if tensor.inputs else None
        while node is not None and node.op in _WRAPPERS and node.inputs[0].inputs:
            node = node.inputs[0].inputs[0]
        if node is not None and node.op == "Softmax":
            out[node.inputs[0].name] = int(node.attrs.get("axis", -1))
        else:
            out[tensor.name] = None
    return out


def output_stds(gram: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-output-channel standard deviation of a layer, from the Gram matrix of its input
    patches (``_gram.GramAccumulator``, intercept last) and ``[out, K + 1]`` weight with
    the bias last: no pass over the data of its own."""
    rows = gram[-1, -1]
    second = np.einsum("ok,kl,ol->o", weight, gram, weight) / rows
    mean = weight @ gram[:, -1] / rows
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def _noisy(graph: gs.Graph, tensor: str, scale: np.ndarray, axis: int, seed: int) -> gs.Graph:
    """A copy of ``graph`` where ``tensor`` (rank known from ``scale``'s use) gets noise
    ``N(0, 1) * scale`` along ``axis`` added before anything reads it."""
    out = graph.copy()
    target = out.tensors()[tensor]
    producer = target.inputs[0]
    clean = gs.Variable(f"{tensor}__clean", dtype=target.dtype, shape=target.shape)
    producer.outputs = [clean if t is target else t for t in producer.outputs]
    rank = len(target.shape) if target.shape is not None else 4
    shape = [1] * rank
    shape[axis % rank] = -1
    std = gs.Constant(f"{tensor}__std", scale.reshape(shape).astype(np.float32))
    noise = gs.Variable(f"{tensor}__noise", dtype=np.float32)
    scaled = gs.Variable(f"{tensor}__scaled", dtype=np.float32)
    out.nodes += [
        gs.Node("RandomNormalLike", inputs=[clean], outputs=[noise], attrs={"seed": float(seed)}),
        gs.Node("Mul", inputs=[noise, std], outputs=[scaled]),
        gs.Node("Add", inputs=[clean, scaled], outputs=[target]),
    ]
    out.toposort()
    return out


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _distortion(clean: np.ndarray, noisy: np.ndarray, axis: int | None) -> tuple[float, float]:
    """``(distortion summed over the batch, its normaliser)`` for one output."""
    clean, noisy = clean.astype(np.float64), noisy.astype(np.float64)
    if axis is None:
        centred = clean - clean.mean(axis=0, keepdims=True) if len(clean) > 1 else clean
        return float(np.sum((noisy - clean) ** 2)), float(np.sum(centred**2))
    lp, lq = _log_softmax(clean, axis), _log_softmax(noisy, axis)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=axis)
    return float(kl.sum()), float(kl.size)


def output_weights(
    graph: gs.Graph,
    layers: Mapping[str, tuple[str, np.ndarray, int]],
    tensors,
    noise: float,
    seed: int,
    samples: int,
) -> dict[str, float]:
    """``{layer: weight}`` (module doc) for ``layers``: ``{name: (output tensor,
    per-channel std of it, its channel axis)}``, on the first ``samples`` calibration
    samples of ``tensors`` (``PassContext.tensors``)."""
    targets = _targets(graph)
    names = list(targets)
    raw = {}
    for i, (name, (tensor, std, axis)) in enumerate(sorted(layers.items())):
        noisy = _noisy(graph, tensor, np.sqrt(noise) * std, axis, seed + i)
        num = den = 0.0
        seen = 0
        for clean, moved in tensors([(graph, names), (noisy, names)]):
            for t, soft_axis in targets.items():
                d, n = _distortion(clean[t], moved[t], soft_axis)
                num, den = num + d, den + n
            seen += len(clean[names[0]])
            if seen >= samples:
                break
        raw[name] = num / den / noise if den > 0 else 0.0
    mean = float(np.mean(list(raw.values()))) if raw else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return dict.fromkeys(raw, 1.0)
    return {name: w / mean for name, w in raw.items()}
