"""The pruned networks that in-context timing measures (composed here, above the runtime).

``runtime/`` times models and never calls into ``passes/``; which networks to time is a
composition of passes (channel-group analysis, removal), so it lives here and is handed
to :func:`~onnx_hwprune.runtime.profiler.build_cost_model` as ``context_models``.

The configurations (each cuts every prunable channel group the same way, keeping its
first channels; groups under 8 channels stay whole):

- ``stair``: ~75% of each group, rounded down to a multiple of 16 (a stair level of the
  NCHWc block on AVX-512), so the aligned ratio is known away from full;
- ``v0`` .. ``v3``: the largest count below full whose 2-adic valuation is 0, 1, 2, 3
  (64 -> 63, 62, 60, 56): one count of each alignment class that libraries switch kernels
  or layouts on. Whatever the target penalises, one of these shows it.
- ``half``, ``half_v0``: about half of each group, in the full count's alignment class
  (64 -> 32) and odd (64 -> 31). The others all keep 56% of a layer's MACs or more, and
  a correction is held flat beyond its points; a plan at 0.8 cuts deeper. Measured on the
  whole-network benchmark before these two existed (cpu, 1 thread): variants cutting each
  group to 40-95% ran 8-15% faster than predicted when aligned (MobileNetV2, PP-OCRv5's
  three models: a smaller network's layers share the caches better) and the near-full odd
  penalty, held flat, over-predicted PP-OCRv5 rec's odd variants by 13-18%. (An A/B
  with and without these two did not separate from run-to-run noise on that machine;
  most of those errors turned out to be unattributed HardSwish and reorders, README
  *In-context costs*. They stay: the cost is two more networks timed, once per model.)

The original itself is the eighth (``full``), added by the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import onnx

from onnx_hwprune.cost_models.staircase import valuation
from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import GroupPlan, Plan
from onnx_hwprune.passes.transform.remove_channels import remove_channels

__all__ = ["CONFIGS", "config_plans", "context_models", "first_channels_plan"]

_MIN_GROUP = 8  # smaller groups stay whole: too few channels for a class probe
CONFIGS: dict[str, Callable[[int], int | None]] = {
    "stair": lambda n: (int(0.75 * n) // 16 * 16) or None,
    **{f"v{v}": (lambda n, v=v: _below_with_valuation(n, v)) for v in range(4)},
    "half": lambda n: _half(n, min(valuation(n), 4)),
    "half_v0": lambda n: _half(n, 0),
}
"""Configuration name -> the count a group of size ``n`` keeps (None: stays whole)."""


def _below_with_valuation(n: int, v: int) -> int | None:
    """Largest count in [n/2, n) whose 2-adic valuation is exactly ``v``."""
    c = n - 1
    while c >= n // 2 and valuation(c) != v:
        c -= 1
    return c if c >= n // 2 and valuation(c) == v else None


def _half(n: int, v: int) -> int | None:
    """Largest count in [n/4, n/2] whose valuation is ``v`` (4: at least 4)."""
    c = n // 2
    while c >= n // 4 and min(valuation(c), 4) != v:
        c -= 1
    return c if c >= max(1, n // 4) else None


def config_plans(groups: ChannelGroups) -> dict[str, Plan]:
    """The plans of :data:`CONFIGS` for the prunable ``groups`` (empty ones dropped)."""
    plans = {name: first_channels_plan(groups, count_of) for name, count_of in CONFIGS.items()}
    return {name: plan for name, plan in plans.items() if plan.groups}


def first_channels_plan(
    groups: ChannelGroups, count_of: Callable[[int], int | None], method: str = "context"
) -> Plan:
    """Every prunable group of 8 channels or more keeps its first ``count_of(size)``
    channels (None, 0 or the full size: it stays whole). ``count_of`` is called for every
    prunable group in order, so a random one draws the same sequence whatever it cuts."""
    cut = {}
    for g in groups.prunable:
        k = count_of(g.size)
        if g.size >= _MIN_GROUP and k is not None and 0 < k < g.size:
            cut[g.name] = GroupPlan(g.size, tuple(range(k)))
    return Plan(cut, method=method)


def context_models(model: onnx.ModelProto) -> Mapping[str, onnx.ModelProto]:
    """The pruned networks of :data:`CONFIGS` for ``model`` (a normalised, static model).

    Lazy: the names come from the plans (an analysis, ~0.2 s on PP-OCRv5 det), each model
    is built when read, so a caller can see which configurations a stored set lacks
    without building any."""
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    return _Configs(graph, groups, config_plans(groups))


class _Configs(Mapping[str, onnx.ModelProto]):
    def __init__(self, graph, groups: ChannelGroups, plans: dict[str, Plan]) -> None:
        self._graph, self._groups, self._plans = graph, groups, plans

    def __getitem__(self, name: str) -> onnx.ModelProto:
        return export_model(remove_channels(self._graph, self._groups, self._plans[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)
