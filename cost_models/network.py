"""Whole-network latency: per-layer staircase models plus a measured residual.

``predict(channels) = sum_l [scale_l * L_l(in_l, out_l) + F_l * out_l / full_out_l]
+ residual``, where ``L_l`` is the layer's
:class:`~onnx_hwprune.cost_models.staircase.StaircaseModel` (micro-benchmarks), ``scale_l``
calibrates it to the layer's measured in-context time (1.0 where the target has no
per-node profiler), ``F_l`` is the measured time of the nodes that only carry the layer's
out-channels on (activations, pooling, the SE block's Mul: they scale with the channels
kept), and ``residual`` is the measured time of everything else (reshapes, concats,
layout reorders, runtime overhead), held constant. At the
unpruned channel counts the prediction equals the measured whole-model latency by
construction; pruned variants are where it is tested (:func:`prediction_report`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnx_hwprune.cost_models.context import ContextCorrection
from onnx_hwprune.cost_models.staircase import Estimate, StaircaseModel
from onnx_hwprune.errors import NothingToPrice

if TYPE_CHECKING:  # signature.py reads graphs (onnx-graphsurgeon); the model needs none
    from onnx_hwprune.cost_models.signature import Layer

__all__ = [
    "LayerEntry",
    "NetworkCostModel",
    "assemble_cost_model",
    "layer_key",
    "prediction_report",
    "require_layers",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerEntry:
    """One layer of the network with its model and calibration.

    Attributes:
        node: the layer's node name; ``in_channels``/``out_channels``: unpruned counts.
        model: its staircase model; ``scale``: in-context / micro-benchmark at full counts.
        context: measured in-context correction at pruned counts (relative to ``scale``;
            None: the isolated staircase alone, as before in-context points existed).
        follower_ms: in-context time of the nodes that carry its out-channels on, at full
            counts; scales with the out-channels kept.
    """

    node: str
    in_channels: int
    out_channels: int
    model: StaircaseModel
    scale: float = 1.0
    context: ContextCorrection | None = None
    follower_ms: float = 0.0

    def factor(self, in_ch: int, out_ch: int) -> float:
        """Calibration of the staircase at these counts: ``scale`` times the in-context
        correction."""
        return self.scale * (self.context.factor(in_ch, out_ch) if self.context else 1.0)

    def calibrated(self, ms: float, in_ch: int, out_ch: int) -> float:
        """The layer's staircase time ``ms`` at these counts, calibrated, plus its
        followers' share at ``out_ch``."""
        follow = self.follower_ms * out_ch / max(1, self.out_channels)
        return ms * self.factor(in_ch, out_ch) + follow


@dataclass(frozen=True)
class NetworkCostModel:
    """Predicts a network's latency for any channel counts of its prunable layers.

    Attributes:
        target, fingerprint_hash: where the numbers were measured.
        layers: the prunable layers, in graph order.
        residual_ms: measured time of the non-pruned part.
        measured_full_ms: measured whole-model latency at full counts (None if unknown).
    """

    target: str
    fingerprint_hash: str
    layers: tuple[LayerEntry, ...]
    residual_ms: float
    measured_full_ms: float | None = None

    @property
    def followers_ms(self) -> float:
        """The followers' time at full counts, summed over the layers."""
        return sum(e.follower_ms for e in self.layers)

    def layer(self, node: str) -> LayerEntry:
        """The entry of layer ``node`` (KeyError names the node)."""
        for entry in self.layers:
            if entry.node == node:
                return entry
        raise KeyError(f"no prunable layer named {node!r}")

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> Estimate:
        """Calibrated latency of one layer at (in, out) channels, with provenance."""
        entry = self.layer(node)
        est = entry.model.latency(in_ch, out_ch)
        return Estimate(entry.calibrated(est.ms, in_ch, out_ch), est.provenance)

    def stair_edges(self, node: str, axis: str) -> list[tuple[int, float]]:
        """Largest count at each latency level of ``node`` along ``axis`` (calibrated ms)."""
        entry = self.layer(node)
        return [(c, entry.calibrated(ms, *_counts_on(entry, axis, c)))
                for c, ms in entry.model.stair_edges(axis)]  # fmt: skip

    def predict(self, channels: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Network latency in ms; layers missing from ``channels`` keep their full counts."""
        return self.predict_detail(channels)["total_ms"]

    def predict_detail(self, channels: Mapping[str, tuple[int, int]] | None = None) -> dict:
        """Total, per-layer estimates and a count of provenances."""
        channels = channels or {}
        per_layer, provenance = {}, {"measured": 0, "interpolated": 0, "estimated": 0}
        for entry in self.layers:
            i, o = channels.get(entry.node, (entry.in_channels, entry.out_channels))
            est = self.layer_latency(entry.node, i, o)
            per_layer[entry.node] = est
            provenance[est.provenance] += 1
        total = sum(e.ms for e in per_layer.values()) + self.residual_ms
        return {"total_ms": total, "layers": per_layer, "provenance": provenance}

    def to_dict(self) -> dict:
        """JSON-able form (models included)."""
        return {
            "target": self.target,
            "fingerprint_hash": self.fingerprint_hash,
            "residual_ms": self.residual_ms,
            "measured_full_ms": self.measured_full_ms,
            "layers": [
                {
                    "node": e.node,
                    "in": e.in_channels,
                    "out": e.out_channels,
                    "scale": e.scale,
                    "follower_ms": e.follower_ms,
                    "model": e.model.to_dict(),
                    **({"context": e.context.to_dict()} if e.context else {}),
                }
                for e in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> NetworkCostModel:
        """Inverse of :meth:`to_dict`."""
        layers = tuple(
            LayerEntry(
                x["node"],
                x["in"],
                x["out"],
                StaircaseModel.from_dict(x["model"]),
                x["scale"],
                ContextCorrection.from_dict(x["context"]) if "context" in x else None,
                x.get("follower_ms", 0.0),
            )  # fmt: skip
            for x in d["layers"]
        )
        return cls(
            d["target"], d["fingerprint_hash"], layers, d["residual_ms"], d.get("measured_full_ms")
        )


def _counts_on(entry: LayerEntry, axis: str, count: int) -> tuple[int, int]:
    """(in, out) of ``entry`` with ``count`` on ``axis`` and the other axis at full."""
    if axis == "in":
        return count, entry.out_channels
    if axis == "out":
        return entry.in_channels, count
    return count, count * entry.out_channels // max(1, entry.in_channels)  # tied: both


def prediction_report(cases: list[tuple[str, float, float]]) -> dict:
    """Predicted vs measured: rows of (label, predicted, measured, error) and the MAPE.

    Args:
        cases: (label, predicted_ms, measured_ms) triples.
    """
    rows = [
        {"label": label, "predicted_ms": p, "measured_ms": m, "error": (p - m) / m}
        for label, p, m in cases
    ]
    mape = sum(abs(r["error"]) for r in rows) / len(rows) if rows else 0.0
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    return {"rows": rows, "mape": mape, "max_abs_error": worst}


def layer_key(layer: Layer) -> tuple[str, int, int]:
    """What layers share a staircase by: signature and unpruned channel counts."""
    return (layer.signature.key(), layer.in_channels, layer.out_channels)


def require_layers(layers: Sequence[Layer], hint: str = "") -> None:
    """:class:`UserError` when there is nothing to price; ``hint`` says what works instead."""
    if not layers:
        raise NothingToPrice(
            "the model has no prunable Conv/Gemm/MatMul layer with constant weights" + hint
        )


def assemble_cost_model(
    target: str,
    fingerprint_hash: str,
    layers: Sequence[Layer],
    staircases: Mapping[tuple[str, int, int], StaircaseModel],
    calibration: Mapping[str, Any],
    context: Mapping[str, ContextCorrection] | None = None,
) -> NetworkCostModel:
    """The network model from its layers, their staircases (by :func:`layer_key`), a
    calibration (``residual_ms``, optional ``total_ms`` and per-node ``scales``) and
    optional in-context corrections by node.

    The one place a :class:`NetworkCostModel` is put together, whether the staircases were
    measured here, replayed from a shipped profile or from a board's stored measurements.
    """
    require_layers(layers)
    scales = calibration.get("scales", {})
    followers = calibration.get("followers", {})
    entries = tuple(
        LayerEntry(
            layer.node,
            layer.in_channels,
            layer.out_channels,
            staircases[layer_key(layer)],
            scales.get(layer.node, 1.0),
            (context or {}).get(layer.node),
            followers.get(layer.node, 0.0),
        )
        for layer in layers
    )
    return NetworkCostModel(
        target, fingerprint_hash, entries, calibration["residual_ms"], calibration.get("total_ms")
    )
