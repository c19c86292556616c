"""Channel importance from the weights: one score per group channel, higher = keep.

Criteria (the registry :data:`CRITERIA` feeds the CLI's ``--criterion`` choices):

- ``l1``: for every producer of the group (a Conv/Gemm whose filters are the group's
  channels), the mean absolute weight of each filter, summed over producers. The mean,
  not the sum, so that a 3x3x512 filter and a 1x1x64 filter are on one scale when a
  global ranking compares groups.
- ``l2``: the same with the root-mean-square.
- ``bn``: ``|gamma|`` of the BatchNorms in the group (network slimming); a group with no
  BatchNorm falls back to ``l1`` (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.analysis._context import const_values
from onnx_hwprune.passes.analysis._dequant import integer_weights
from onnx_hwprune.passes.analysis.groups import ChannelGroup, ChannelGroups, Member

__all__ = ["CRITERIA", "ChannelImportance", "channel_importance"]

log = logging.getLogger(__name__)

Criterion = Callable[[ChannelGroup, Mapping[str, np.ndarray]], np.ndarray]


def _per_position(values: np.ndarray, axis: int, reduce: str) -> np.ndarray:
    # Reduce over the other axes in place of moving the axis first: a moved axis would
    # force a copy of the weight (400 MB for VGG's first FC layer); accumulate in float64.
    others = tuple(a for a in range(values.ndim) if a != axis)
    if reduce == "l2":
        return np.sqrt(np.mean(np.square(values), axis=others, dtype=np.float64))
    return np.mean(np.abs(values), axis=others, dtype=np.float64)


def _member_scores(member: Member, values: np.ndarray, reduce: str) -> np.ndarray:
    per_position = _per_position(values, member.axis, reduce)
    if all(len(p) == 1 for p in member.index_map):
        return per_position[[p[0] for p in member.index_map]]
    return np.array([per_position[list(p)].mean() for p in member.index_map])


def _norm_criterion(reduce: str) -> Criterion:
    def score(group: ChannelGroup, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(group.size)
        for member in group.members_with_role("weight_out"):
            total += _member_scores(member, weights[member.tensor], reduce)
        return total

    return score


def _bn_criterion(group: ChannelGroup, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    scales = list(group.members_with_role("bn_scale"))
    if not scales:
        log.debug("group %s has no BatchNorm; bn criterion falls back to l1", group.name)
        return _norm_criterion("l1")(group, weights)
    return sum(_member_scores(m, weights[m.tensor], "l1") for m in scales)


CRITERIA: dict[str, Criterion] = {
    "l1": _norm_criterion("l1"),
    "l2": _norm_criterion("l2"),
    "bn": _bn_criterion,
}


def channel_importance(
    graph: gs.Graph, groups: ChannelGroups, criterion: str
) -> dict[str, np.ndarray]:
    """Scores for every prunable group, keyed by group name."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {sorted(CRITERIA)}")
    weights = _LazyValues(graph.tensors(), integer_weights(graph))
    return {g.name: CRITERIA[criterion](g, weights) for g in groups.prunable}


class _LazyValues(Mapping[str, np.ndarray]):
    """Constant values by name, materialised only when a criterion reads them; a
    quantized weight reads as its dequantized values."""

    def __init__(self, tensors: Mapping[str, gs.Tensor], integer: Mapping[str, np.ndarray]) -> None:
        self._constants, self._integer = tensors, integer

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._integer:  # QLinearConv & co: integers times their scales
            return self._integer[name]
        values = const_values(self._constants[name])
        if values is None:
            raise KeyError(name)
        return values

    def __iter__(self):
        return iter(self._constants)

    def __len__(self) -> int:
        return len(self._constants)


class ChannelImportance(Pass):
    """Analysis pass: fills ``Module.scores`` with a weight criterion (see module doc)."""

    name = "ChannelImportance"

    def __init__(self, criterion: str = "l1") -> None:
        if criterion not in CRITERIA:
            raise UserError(
                f"unknown criterion {criterion!r}; choose from {', '.join(sorted(CRITERIA))}"
            )
        self.criterion = criterion

    def requires(self, mod: Module) -> None:
        if mod.groups is None:
            raise PassError(f"{self.name} needs ChannelGroupAnalysis first")

    def run(self, mod: Module, ctx: PassContext) -> Module:
        return mod.replace(scores=channel_importance(mod.graph, mod.groups, self.criterion))
