"""Anchor a network cost model to whole-network measurements.

Two corrections, both plain arithmetic on a :class:`~.network.NetworkCostModel`
(``predict = sum_l scale_l * L_l + residual``):

- :func:`anchored`: one factor on every layer and the residual, so that the prediction
  for the original equals the original's latency measured *now*. The profile may be days
  old or taken under other load; a budget fraction then means a fraction of what the
  original measures today.
- :func:`corrected`: after a pruned model was measured too, two points of the line
  ``T = a * L + R`` are known (original and pruned), so the layer factor ``a`` and the
  residual ``R`` are solved from both. It falls back to the proportional correction when
  the two are too close to separate or the solution is not physical (a <= 0, or a line
  that would predict the measured pruned model at no cost). A negative ``R`` is kept: it
  says the pruned network ran faster than its layers' sum predicts (layers cut below
  what was measured, fusions), and re-planning after such an undershoot prunes *less*,
  between the two measured points, where the line interpolates.
- :func:`through`: the line through the original and one chosen point ``(L*, T*)``; the
  closed loop picks ``L*`` between two measured plans that bracket the budget.
"""

from __future__ import annotations

from dataclasses import replace

from onnx_hwprune.cost_models.network import NetworkCostModel

__all__ = ["anchored", "corrected", "layer_sum", "through"]


def layer_sum(cost: NetworkCostModel, channels=None) -> float:
    """The layers' share of :meth:`~.network.NetworkCostModel.predict` (no residual)."""
    return cost.predict(channels) - cost.residual_ms


def _rescaled(cost: NetworkCostModel, a: float, residual: float, full_ms: float):
    layers = tuple(
        replace(e, scale=e.scale * a, follower_ms=e.follower_ms * a) for e in cost.layers
    )
    return replace(cost, layers=layers, residual_ms=residual, measured_full_ms=full_ms)


def anchored(cost: NetworkCostModel, measured_ms: float) -> NetworkCostModel:
    """``cost`` scaled so that its prediction for the original is ``measured_ms``."""
    factor = measured_ms / cost.predict()
    return _rescaled(cost, factor, cost.residual_ms * factor, measured_ms)


def corrected(
    cost: NetworkCostModel, channels, original_ms: float, pruned_ms: float
) -> NetworkCostModel:
    """``cost`` refit through the measured original and the measured pruned model."""
    l0, l1 = layer_sum(cost), layer_sum(cost, channels)
    if l0 - l1 > 0.02 * l0:
        a = (original_ms - pruned_ms) / (l0 - l1)
        residual = original_ms - a * l0
        if a > 0 and a * l1 + residual > 0:
            return _rescaled(cost, a, residual, original_ms)
    # Proportional: keep the residual's share, scale both through the pruned measurement.
    factor = pruned_ms / cost.predict(channels)
    return _rescaled(cost, factor, cost.residual_ms * factor, original_ms)


def through(
    cost: NetworkCostModel, layers_ms: float, original_ms: float, target_ms: float
) -> NetworkCostModel | None:
    """``cost`` refit so that the original predicts ``original_ms`` and any plan whose
    layers sum to ``layers_ms`` (in ``cost``'s units) predicts ``target_ms``; None when
    no such line is physical (a <= 0)."""
    l0 = layer_sum(cost)
    if l0 - layers_ms <= 0.02 * l0:
        return None
    a = (original_ms - target_ms) / (l0 - layers_ms)
    return _rescaled(cost, a, original_ms - a * l0, original_ms) if a > 0 else None
