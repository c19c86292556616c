"""Data-free bias compensation from BatchNorm statistics (the default without --calib).

A removed channel does not send zero to its consumers: it sent its activation, whose
expected value is usually far from zero (a ReLU's output is never negative). Removing it
shifts every consumer's output by ``sum_k W[o, c, k] * E[a_c]``; adding that shift to the
consumer's bias keeps the expected output unchanged (Nagel et al. 2019, data-free
quantization, section 4.2, uses the same estimate for quantization error).

``E[a_c]`` without data: a BatchNormalization's output channel c is taken as
``N(beta_c, gamma_c^2)`` (what BN was trained to produce), and pushed through the
activation that follows:

- Relu: closed form ``mu * Phi(mu / s) + s * phi(mu / s)``;
- every other elementwise activation (SiLU as ``x * Sigmoid(x)``, HardSwish, Clip/Relu6,
  Sigmoid, HardSigmoid, LeakyRelu, Tanh): the expectation computed numerically by
  64-point Gauss-Hermite quadrature (exact for a constant channel, s = 0);
- through Concat (per input), GlobalAveragePool, Resize, Flatten (a channel's H*W
  features share its mean), Add (sum of the means): exactly.

Stated approximations: the Gaussian model of BN outputs; a padded conv's border pixels
see fewer taps than the interior, so the bias gets each tap weighted by the share of
output pixels where it reads inside the input (the least-squares constant). A consumer whose
input mean cannot be derived (no BN upstream, e.g. torch exports fold BN into the conv)
is left as is and counted in the summary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import const_values
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["Compensation", "compensation_deltas", "apply_deltas", "expected_activation"]

log = logging.getLogger(__name__)

_HERMITE = np.polynomial.hermite.hermgauss(64)
_PASS_THROUGH = ("Resize", "Upsample", "Identity", "Dropout", "GlobalAveragePool")


def _clip(node: gs.Node) -> Callable[[np.ndarray], np.ndarray]:
    bounds = [const_values(t) for t in node.inputs[1:3] if t is not None and t.name]
    lo = float(bounds[0]) if bounds and bounds[0] is not None else -np.inf
    hi = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else np.inf
    return lambda x: np.clip(x, lo, hi)


def _hard_sigmoid(node: gs.Node) -> Callable[[np.ndarray], np.ndarray]:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _activation(node: gs.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    op = node.op
    if op == "Clip":
        return _clip(node)
    if op == "HardSigmoid":
        return _hard_sigmoid(node)
    if op == "LeakyRelu":
        alpha = float(node.attrs.get("alpha", 0.01))
        return lambda x: np.where(x > 0, x, alpha * x)
    simple = {
        "Relu": lambda x: np.maximum(x, 0.0),
        "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "Tanh": np.tanh,
        "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    }
    return simple.get(op)


def expected_activation(
    f: Callable[[np.ndarray], np.ndarray] | str | None, mu: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """``E[f(X)]`` for ``X ~ N(mu, sigma^2)`` per channel (``f`` None: identity;
    ``"relu"``: the closed form)."""
    mu, sigma = np.asarray(mu, np.float64), np.abs(np.asarray(sigma, np.float64))
    if f is None:
        return mu
    if f == "relu":
        z = np.divide(mu, sigma, out=np.zeros_like(mu), where=sigma > 0)
        pdf = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
        return np.where(sigma > 0, mu * _normal_cdf(z) + sigma * pdf, np.maximum(mu, 0.0))
    nodes, weights = _HERMITE
    x = mu[:, None] + np.sqrt(2.0) * sigma[:, None] * nodes[None, :]
    return (f(x) * weights[None, :]).sum(axis=1) / np.sqrt(np.pi)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, by ``erfc`` so the lower tail keeps its precision. scipy is
    not a dependency of the base install (it was imported here, and the Quickstart's
    fresh install failed on it); one value per channel, so a Python loop is cheap."""
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-z / math.sqrt(2.0))


def _bn_stats(node: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    if node.op != "BatchNormalization":
        return None
    gamma, beta = const_values(node.inputs[1]), const_values(node.inputs[2])
    return None if gamma is None or beta is None else (beta, gamma)


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def _activation_of_bn(node: gs.Node) -> np.ndarray | None:
    """E[act(BN(x))] where ``node`` is the activation (SiLU: ``Mul(x, Sigmoid(x))``)."""
    if node.op == "Mul" and len(node.inputs) == 2:
        a, b = (_producer(t) for t in node.inputs)
        if b is not None and b.op == "Sigmoid" and b.inputs[0] is node.inputs[0]:
            f, src = _silu, a
        elif a is not None and a.op == "Sigmoid" and a.inputs[0] is node.inputs[1]:
            f, src = _silu, b
        else:
            return None
    else:
        f = "relu" if node.op == "Relu" else _activation(node)
        src = _producer(node.inputs[0])
        if f is None:
            return None
    stats = _bn_stats(src) if src is not None else None
    return None if stats is None else expected_activation(f, *stats)


def channel_means(tensor: gs.Tensor, depth: int = 0) -> np.ndarray | None:
    """Expected value of each channel (axis 1) of ``tensor``, or None if unknown."""
    node = _producer(tensor)
    if node is None or depth > 16:
        return None
    if (stats := _bn_stats(node)) is not None:
        return np.asarray(stats[0], np.float64)
    if node.op in _PASS_THROUGH or (node.op == "Flatten" and int(node.attrs.get("axis", 1)) == 1):
        return _flattened(node, channel_means(node.inputs[0], depth + 1))
    if node.op == "Concat" and int(node.attrs.get("axis", 0)) in (1, -3):
        parts = [channel_means(t, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else np.concatenate(parts)
    if node.op == "Add" and len(node.inputs) == 2:
        a, b = (channel_means(t, depth + 1) for t in node.inputs)
        return a + b if a is not None and b is not None and a.shape == b.shape else None
    return _activation_of_bn(node)


def _flattened(node: gs.Node, means: np.ndarray | None) -> np.ndarray | None:
    """A Flatten's H*W features per channel share the channel's mean (C-major order)."""
    if means is None or node.op != "Flatten":
        return means
    shape = node.outputs[0].shape
    features = shape[1] if shape is not None and len(shape) == 2 else None
    if not isinstance(features, int) or features % len(means):
        return None
    return np.repeat(means, features // len(means))


@dataclass
class Compensation:
    """Per consumer node: the shift of each (unpruned) output channel, and a summary."""

    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)  # node -> its weight's name
    channels: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "method": "data-free: BatchNorm statistics through the activation",
            "compensated_consumers": len(self.deltas),
            "removed_channels_compensated": self.channels,
            "uncompensated_consumers": dict(sorted(self.skipped.items())),
        }


def compensation_deltas(graph: gs.Graph, groups: ChannelGroups, plan: Plan) -> Compensation:
    """The bias shift of every consumer of a removed channel (see the module doc)."""
    nodes = {n.name: n for n in graph.nodes}
    result = Compensation()
    for name, gp in plan.pruned_groups().items():
        for member in groups[name].members_with_role("weight_in"):
            node = nodes.get(member.node)
            if node is None:
                continue
            positions = member.positions(gp.removed)
            delta, why = _consumer_shift(node, positions)
            if delta is None:
                result.skipped[node.name] = why
                continue
            prev = result.deltas.get(node.name)
            result.deltas[node.name] = delta if prev is None else prev + delta
            result.weights[node.name] = node.inputs[1].name
            result.channels += len(positions)
    return result


def _consumer_shift(node: gs.Node, positions: list[int]) -> tuple[np.ndarray | None, str]:
    w = const_values(node.inputs[1])
    if w is None:
        return None, "weight is not a constant"
    if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
        return None, "grouped conv: its removed inputs leave with their outputs"
    if node.op not in ("Conv", "Gemm"):
        return None, f"{node.op} consumer not compensated"
    means = channel_means(node.inputs[0])
    if means is None:
        return None, "no BatchNorm statistics upstream"
    idx = np.asarray(positions)
    if node.op == "Conv":
        cover = _tap_coverage(node, w.shape[2:]).reshape(-1)
        taps = w[:, idx].reshape(w.shape[0], len(idx), -1) @ cover
        return taps @ means[idx], ""
    trans_b = int(node.attrs.get("transB", 0)) == 1
    rows = w[:, idx].T if trans_b else w[idx, :]
    # Gemm adds beta * C: the shift goes into C divided by beta.
    scale = float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0) or 1.0)
    return scale * (means[idx] @ rows), ""


def _tap_coverage(node: gs.Node, kernel: tuple[int, ...]) -> np.ndarray:
    """Share of output pixels where each kernel tap reads inside the input (not padding).

    A bias is one constant per channel; the best constant for a removed constant input
    is its mean over the output pixels, and a padded conv's border pixels see fewer taps
    (on a 2x2 map a 3x3 conv sees 4 of 9). All ones where the input size is unknown.
    """
    shape = node.inputs[0].shape
    spatial = list(shape[2:]) if shape is not None else []
    explicit = node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    if not explicit or len(spatial) != len(kernel) or not all(isinstance(d, int) for d in spatial):
        return np.ones(kernel)
    nd = len(kernel)
    strides = node.attrs.get("strides", [1] * nd)
    dilations = node.attrs.get("dilations", [1] * nd)
    pads = node.attrs.get("pads", [0] * 2 * nd)
    cover = np.ones(())
    for a, (size, k) in enumerate(zip(spatial, kernel, strict=True)):
        s, d, p0, p1 = strides[a], dilations[a], pads[a], pads[a + nd]
        outs = np.arange((size + p0 + p1 - d * (k - 1) - 1) // s + 1)
        taps = outs[:, None] * s - p0 + np.arange(k)[None, :] * d
        share = ((taps >= 0) & (taps < size)).mean(axis=0)
        cover = np.multiply.outer(cover, share)
    return cover


def apply_deltas(
    graph: gs.Graph, comp: Compensation, kept: Mapping[tuple[str, int], np.ndarray]
) -> int:
    """Add the shifts to the consumers' biases in the *pruned* ``graph`` (in place).

    ``kept``: kept positions of every pruned space (consumers' outputs may be pruned
    too). A consumer without a bias gets one. Returns the number of consumers changed.
    """
    done = 0
    for node in graph.nodes:
        delta = comp.deltas.get(node.name)
        # The graph may be a second load of the model (at its own dims): the node must
        # read the same weight, and its output count must match, or it is left alone.
        if delta is None or node.inputs[1].name != comp.weights.get(node.name):
            continue
        out_positions = kept.get((node.outputs[0].name, 1))
        shift = delta if out_positions is None else delta[out_positions]
        if shift.size != _out_channels(node):
            continue
        index = 2
        if len(node.inputs) > index and node.inputs[index].name:
            bias = node.inputs[index]
            values = const_values(bias)
            if values is None or values.size != shift.size:
                continue
            bias.values = (values + shift).astype(values.dtype)
        else:
            dtype = const_values(node.inputs[1]).dtype
            while len(node.inputs) < index:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(gs.Constant(f"{node.name}__bias_comp", shift.astype(dtype)))
        done += 1
    return done


def _out_channels(node: gs.Node) -> int:
    w = node.inputs[1].values.shape
    if node.op == "Gemm":
        return int(w[0] if int(node.attrs.get("transB", 0)) else w[1])
    return int(w[0])
