"""Measured sensitivity: what removing channels costs on calibration data, after a refit.

For every prunable group and every kept count ``k`` (the ``k`` channels the planner would
keep: by default the survivors of a greedy removal that each time drops the channel the
others refit best, ``_greedy_order.py``; with ``plan.sensitivity_order = criterion`` the
strongest by ``Module.scores``; the pass hands the planner the scores of the order it
priced, so both agree), the cost is the
relative output error of the group's consumer layers after their least-squares refit on
the kept channels (what ``--recover lsq`` does), summed over the consumers::

    cost_g[r] = Σ_consumers w_c · ‖Y - refit_k(A_kept)‖² / ‖Y - mean(Y)‖²,   r = size - k

``Y`` is the consumer's output on the *original* model's input (ThiNet's and the channel-
pruning papers' per-layer formulation; the groups are measured one at a time, so the
costs of two groups add). ``w_c`` is how much of an error at that consumer reaches the
network's outputs, measured by injecting noise there (``_output_weights.py``; mean 1 over
the consumers; ``plan.sensitivity_noise = 0`` makes every ``w_c`` 1).

Example: a Conv(3→8) whose channel 2 has the smallest filter norm but feeds the next
conv through large, unpredictable activations: removing it costs a large share of the
next conv's output, and the planner keeps it; a channel that is zero or constant on the
data costs exactly nothing (a constant is absorbed by the refit's bias).

Cost (see ``_gram.py``): one streamed pass of the model over the calibration data keeps
one Gram matrix per consumer layer (about ``plan.sensitivity_rows`` patch rows over
``plan.sensitivity_samples`` samples, and at least 4x its columns); one Cholesky
factorisation per (layer, group) then gives the error at *every* count, so the table
covers every count any planner may consider.

Consumers measured: Conv with ``group == 1``, Gemm, MatMul reading the group's channels
on their input axis. A group with none (a depthwise conv's channels are measured at the
pointwise conv after it, in the same group; a group read only by ops without weights)
falls back to the share of its importance removed, ``Σ removed scores / Σ scores``, on
the same 0..1 per-layer scale; the table says which groups fell back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis._gram import (
    GramAccumulator,
    centred_energy,
    linear_layer,
    prefix_residuals,
)
from onnx_hwprune.passes.analysis._greedy_order import greedy_removal
from onnx_hwprune.passes.analysis._output_weights import output_stds, output_weights
from onnx_hwprune.passes.analysis.data_importance import consumer_pairs
from onnx_hwprune.passes.analysis.groups import ChannelGroup, Member
from onnx_hwprune.passes.transform.recover import LinearLayer

__all__ = [
    "SensitivityAnalysis",
    "SensitivityTable",
    "greedy_scores",
    "group_costs",
    "removal_order",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensitivityTable:
    """``costs[group][r]``: measured cost of removing the group's ``r`` weakest channels
    (``r = 0 .. size``, nondecreasing, ``costs[g][0] == 0``).

    Attributes:
        measured: groups whose cost comes from consumer refits.
        fallback: groups priced by their importance share instead, with the reason.
        rows: patch rows per consumer layer (the largest), samples: calibration samples.
    """

    costs: Mapping[str, np.ndarray]
    measured: tuple[str, ...] = ()
    fallback: Mapping[str, str] = field(default_factory=dict)
    rows: int = 0
    samples: int = 0
    seconds: float = 0.0
    weights: Mapping[str, float] = field(default_factory=dict)  # per consumer layer
    # the scores the costs were priced in (the order the planner must remove channels in)
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    order: str = "criterion"  # plan.sensitivity_order

    def summary(self) -> dict:
        """The report's ``sensitivity`` entry."""
        return {
            "objective": "measured refit error (relative, summed over consumer layers"
            + (", each weighted by its measured effect on the outputs)" if self.weights else ")"),
            "output_weights": {n: round(w, 4) for n, w in sorted(self.weights.items())},
            "channel_order": self.order,
            "groups_measured": len(self.measured),
            "groups_fallback": dict(sorted(self.fallback.items())),
            "samples": self.samples,
            "rows_per_layer": self.rows,
            "seconds": round(self.seconds, 3),
        }


def removal_order(scores: np.ndarray) -> np.ndarray:
    """Channel indices, weakest first, ties by index: the latency planners' order."""
    s = np.asarray(scores)
    return np.lexsort((np.arange(len(s)), s))


def _consumers(group: ChannelGroup, graph: gs.Graph) -> list[tuple[Member, gs.Node, LinearLayer]]:
    nodes = {n.name: n for n in graph.nodes}
    out = []
    for act, _ in consumer_pairs(group):
        node = nodes.get(act.node)
        layer = linear_layer(node) if node is not None else None
        if layer is None or node.inputs[0].name != act.tensor:
            continue
        ndim = len(node.inputs[0].shape or ()) or None
        if layer.is_conv and act.axis != 1:
            continue
        if not layer.is_conv and ndim is not None and act.axis != ndim - 1:
            continue
        out.append((act, node, layer))
    return out


def _with_bias(layer: LinearLayer) -> np.ndarray:
    """``[out, K + 1]``: the layer's flat weight with its bias as the last column (the
    intercept column of its Gram)."""
    return np.concatenate([layer.flat_weight(), layer.bias[:, None]], axis=1)


def _columns(member: Member, layer: LinearLayer, channel: int) -> np.ndarray:
    k = layer.kernel_size
    return (np.asarray(member.index_map[channel])[:, None] * k + np.arange(k)).reshape(-1)


def group_costs(
    group: ChannelGroup,
    scores: np.ndarray,
    consumers: list[tuple[Member, LinearLayer, np.ndarray, float]],
) -> np.ndarray | None:
    """``cost[r]`` for ``r = 0 .. size`` removed (see module doc), or None without a
    measurable consumer. ``consumers``: ``(act_in member, layer, Gram, output weight)``
    per layer."""
    keep_order = removal_order(scores)[::-1]
    total, used = np.zeros(group.size + 1), 0
    for member, layer, gram, scale in consumers:
        blocks = [_columns(member, layer, int(c)) for c in keep_order]
        mine = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        fixed = np.setdiff1d(np.arange(gram.shape[0] - 1), mine)
        weight = _with_bias(layer)
        res, centred = prefix_residuals(gram, weight, fixed, blocks)
        if centred <= 0:
            continue  # a constant output: nothing to lose
        total += scale * (res[::-1] - res[-1]) / centred  # index: removed count
        used += 1
    if not used:
        return None
    return np.maximum.accumulate(np.maximum(total, 0.0))


def greedy_scores(
    group: ChannelGroup, consumers: list[tuple[Member, LinearLayer, np.ndarray, float]]
) -> np.ndarray | None:
    """Scores whose :func:`removal_order` is the greedy refit order (``_greedy_order.py``):
    the channel removed first scores 0. ``consumers`` as in :func:`group_costs`; None when
    every consumer's output is constant (nothing to order by)."""
    inputs = []
    for member, layer, gram, scale in consumers:
        weight = _with_bias(layer)
        centred = centred_energy(gram, weight)
        if centred <= 0:
            continue  # a constant output: no channel costs anything there
        blocks = [_columns(member, layer, c) for c in range(group.size)]
        inputs.append((gram, weight, blocks, scale / centred))
    if not inputs:
        return None
    scores = np.zeros(group.size)
    scores[greedy_removal(inputs, group.size)] = np.arange(group.size, dtype=np.float64)
    return scores


def _fallback(scores: np.ndarray) -> np.ndarray:
    s = np.maximum(np.asarray(scores, dtype=np.float64), 0.0)
    prefix = np.concatenate([[0.0], np.cumsum(s[removal_order(scores)])])
    return prefix / prefix[-1] if prefix[-1] > 0 else np.linspace(0.0, 1.0, len(prefix))


class SensitivityAnalysis(Pass):
    """Analysis pass: ``Module.sensitivity`` from calibration data (see module doc).

    Preconditions: channel groups and scores (the order channels leave in), and
    ``PassContext.tensors`` (the runtime runs the model; this pass only says which
    tensors it needs and reduces them).
    """

    name = "SensitivityAnalysis"

    def requires(self, mod: Module) -> None:
        if mod.groups is None or mod.scores is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis and channel scores first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        if ctx.tensors is None:
            raise PassError(f"{self.name} needs PassContext(tensors=...) over calib data")
        order = ctx.get("plan.sensitivity_order")
        if order not in ("criterion", "greedy"):
            raise PassError(f"plan.sensitivity_order: 'criterion' or 'greedy', not {order!r}")
        start = time.perf_counter()
        found = {g.name: _consumers(g, mod.graph) for g in mod.groups.prunable}
        layers = {node.name: (node, layer) for cs in found.values() for _, node, layer in cs}
        grams, samples = self._grams(mod.graph, layers, ctx)
        weights = self._output_weights(mod.graph, layers, grams, ctx)
        costs, measured, fallback, scores = {}, [], {}, dict(mod.scores)
        for g in mod.groups.prunable:
            triples = [(m, layer, grams[node.name].gram, weights.get(node.name, 1.0))
                       for m, node, layer in found[g.name]]  # fmt: skip
            greedy = greedy_scores(g, triples) if triples and order == "greedy" else None
            if greedy is not None:
                scores[g.name] = greedy
            cost = group_costs(g, scores[g.name], triples) if triples else None
            if cost is None:
                fallback[g.name] = "no dense consumer layer" if not triples else "constant outputs"
                cost = _fallback(mod.scores[g.name])
            else:
                measured.append(g.name)
            costs[g.name] = cost
        rows = max((acc.rows for acc in grams.values()), default=0)
        table = SensitivityTable(
            costs, tuple(measured), fallback, rows, samples, time.perf_counter() - start,
            weights, scores, order,
        )  # fmt: skip
        log.info("sensitivity: %d groups measured, %d fall back", len(measured), len(fallback))
        return mod.replace(sensitivity=table, scores=scores)

    def _output_weights(self, graph: gs.Graph, layers, grams, ctx: PassContext):
        """``{layer: weight}`` (``_output_weights.py``); empty when turned off."""
        noise = ctx.get("plan.sensitivity_noise")
        if noise <= 0 or not layers:
            return {}
        chosen = {}
        for name, (node, layer) in layers.items():
            weight = _with_bias(layer)
            axis = 1 if layer.is_conv else -1
            chosen[name] = (node.outputs[0].name, output_stds(grams[name].gram, weight), axis)
        samples = ctx.get("plan.sensitivity_noise_samples")
        return output_weights(graph, chosen, ctx.tensors, noise, ctx.seed, samples)

    def _grams(self, graph: gs.Graph, layers, ctx: PassContext):
        rows, samples = ctx.get("plan.sensitivity_rows"), ctx.get("plan.sensitivity_samples")
        per_sample = {
            n: max(rows, 4 * layer.weight[0].size) / samples for n, (_, layer) in layers.items()
        }
        accs = {
            name: GramAccumulator(layer, per_sample[name], ctx.seed + i)
            for i, (name, (_, layer)) in enumerate(sorted(layers.items()))
        }
        inputs = {name: node.inputs[0].name for name, (node, _) in layers.items()}

        samples = 0
        names = sorted(set(inputs.values()))
        for (values,) in ctx.tensors([(graph, names)]) if accs else ():
            for name, acc in accs.items():
                acc.add(np.asarray(values[inputs[name]]))
            samples += len(values[names[0]])
        return accs, samples
