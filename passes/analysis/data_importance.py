"""Channel importance from calibration data: one score per group channel, higher = keep.

Numpy only: the per-channel statistics are computed elsewhere (``runtime/calib_stats.py``)
and come in as ``{tensor name: float64 [C]}`` arrays, one value per position of axis 1.

Which tensors: a group's *observed* tensors are the inputs of its consumer layers (the
``act_in`` members of nodes that also have a ``weight_in`` member in the group: a Conv,
Gemm or MatMul reading the group's channels), i.e. the activation after its nonlinearity,
as the next layer sees it. A group with no consumer layer observes its ``act_out``
tensors instead. Several observed tensors (a residual stream read by several convs)
are averaged; a channel that spans several positions of a tensor (the H*W features of a
flattened channel) averages them (``mean_abs``, ``apoz``) or sums them
(``reconstruction``).

Criteria (the registry :data:`DATA_CRITERIA` feeds the CLI's ``--criterion`` choices):

- ``mean_abs``: mean ``|x|`` over samples and positions.
- ``apoz``: ``1 - APoZ``, the fraction of non-zero values (Hu et al. 2016); after a ReLU a
  channel that is mostly zero carries little.
- ``reconstruction``: the expected squared change of the consumers' outputs when the
  channel is removed, ``Σ_consumers E[x_c²] · ||W[:, c]||²``. Estimate and assumptions:
  exact for a dense consumer (Gemm/MatMul, or a 1x1 conv without padding) when the
  removed channel is uncorrelated with the others *and* the error is measured per
  output over the data; for a kxk conv it treats the kernel taps of channel ``c`` as
  uncorrelated (it ignores the spatial correlation of the channel with itself and the
  zero padding). It scores plain removal (no bias compensation), so a constant channel
  with large values counts as important.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis.groups import ChannelGroup, ChannelGroups, Member

__all__ = [
    "DATA_CRITERIA",
    "DataCriterion",
    "DataImportance",
    "consumer_pairs",
    "data_channel_importance",
    "observed_members",
    "required_statistics",
]

log = logging.getLogger(__name__)

Stats = Mapping[str, np.ndarray]
Weights = Mapping[str, np.ndarray]


def consumer_pairs(group: ChannelGroup) -> list[tuple[Member, Member]]:
    """``(act_in, weight_in)`` member pairs of the group's consumer layers, in order."""
    weights = {m.node: m for m in group.members_with_role("weight_in")}
    return [(m, weights[m.node]) for m in group.members_with_role("act_in") if m.node in weights]


def observed_members(group: ChannelGroup) -> list[Member]:
    """The activation members a criterion reads (see the module docstring), one per tensor."""
    members = [a for a, _ in consumer_pairs(group)] or list(group.members_with_role("act_out"))
    unique = {m.tensor: m for m in reversed(members) if m.axis == 1}
    return [unique[t] for t in dict.fromkeys(m.tensor for m in members) if t in unique]


def _per_channel(member: Member, values: np.ndarray) -> np.ndarray:
    return np.array([values[list(p)].mean() for p in member.index_map])


def _averaged(group: ChannelGroup, stats: Stats) -> np.ndarray:
    members = observed_members(group)
    if not members:
        log.warning("group %s has no observable activation; scores are uniform", group.name)
        return np.ones(group.size)
    return np.mean([_per_channel(m, stats[m.tensor]) for m in members], axis=0)


def _mean_abs(group: ChannelGroup, stats: Stats, weights: Weights) -> np.ndarray:
    return _averaged(group, stats)


def _apoz(group: ChannelGroup, stats: Stats, weights: Weights) -> np.ndarray:
    return 1.0 - _averaged(group, stats)


def _column_energy(weight: np.ndarray, axis: int) -> np.ndarray:
    others = tuple(a for a in range(weight.ndim) if a != axis)
    return np.square(weight, dtype=np.float64).sum(axis=others)


def _reconstruction(group: ChannelGroup, stats: Stats, weights: Weights) -> np.ndarray:
    pairs = [(a, w) for a, w in consumer_pairs(group) if a.axis == 1]
    if not pairs:
        log.debug("group %s has no consumer layer; reconstruction uses E[x^2]", group.name)
        return _averaged(group, stats)
    total = np.zeros(group.size)
    for act, weight in pairs:
        second = stats[act.tensor]
        energy = _column_energy(weights[weight.tensor], weight.axis)
        for i, (xs, ws) in enumerate(zip(act.index_map, weight.index_map, strict=True)):
            if len(xs) == len(ws):  # pairwise: feature j of the channel meets weight column j
                total[i] += float(second[list(xs)] @ energy[list(ws)])
            else:  # grouped convs: one input position meets one column per group
                total[i] += float(second[list(xs)].mean() * energy[list(ws)].sum())
    return total


@dataclass(frozen=True)
class DataCriterion:
    """A data-driven criterion: which reducer it needs on the observed tensors, and how
    it turns ``{tensor: statistic}`` (plus the weights) into group scores."""

    reducer: str
    score: Callable[[ChannelGroup, Stats, Weights], np.ndarray]
    doc: str


DATA_CRITERIA: dict[str, DataCriterion] = {
    "mean_abs": DataCriterion("mean_abs", _mean_abs, "mean |activation| on calibration data"),
    "apoz": DataCriterion("apoz", _apoz, "1 - average percentage of zeros (after ReLU)"),
    "reconstruction": DataCriterion(
        "mean_square", _reconstruction, "E[x^2]*||W[:,c]||^2 summed over consumer layers"
    ),
}


def _criterion(name: str) -> DataCriterion:
    if name not in DATA_CRITERIA:
        raise ValueError(f"unknown data criterion {name!r}; choose from {sorted(DATA_CRITERIA)}")
    return DATA_CRITERIA[name]


def required_statistics(groups: ChannelGroups, criterion: str) -> dict[str, list[str]]:
    """``{reducer kind: tensor names}`` to collect for ``criterion`` on the prunable groups."""
    tensors = [m.tensor for g in groups.prunable for m in observed_members(g)]
    return {_criterion(criterion).reducer: list(dict.fromkeys(tensors))}


def data_channel_importance(
    groups: ChannelGroups,
    criterion: str,
    stats: Mapping[str, Stats],
    weights: Weights,
) -> dict[str, np.ndarray]:
    """Scores for every prunable group, keyed by group name.

    Args:
        groups: the analysis of the model the statistics were collected on.
        criterion: a key of :data:`DATA_CRITERIA`.
        stats: ``{reducer kind: {tensor: per-position statistic}}`` holding at least
            :func:`required_statistics`.
        weights: constant values by name (the consumers' weights for ``reconstruction``).
    """
    spec = _criterion(criterion)
    per_tensor = stats[spec.reducer]
    return {g.name: spec.score(g, per_tensor, weights) for g in groups.prunable}


class DataImportance(Pass):
    """Analysis pass: channel scores from calibration data (``Module.scores``).

    The statistics come from ``PassContext.activations`` (the runtime runs the model;
    this pass only says which tensors and reducers it needs, then scores).
    """

    name = "DataImportance"

    def __init__(self, criterion: str) -> None:
        _criterion(criterion)
        self.criterion = criterion

    def requires(self, mod: Module) -> None:
        if mod.groups is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        if ctx.activations is None:
            raise PassError(f"{self.name} needs PassContext(activations=...) over calibration data")
        stats = ctx.activations(mod.graph, required_statistics(mod.groups, self.criterion))
        weights = {
            t.name: np.asarray(t.values)
            for t in mod.graph.tensors().values()
            if isinstance(t, gs.Constant)
        }
        scores = data_channel_importance(mod.groups, self.criterion, stats, weights)
        return mod.replace(scores=scores)
