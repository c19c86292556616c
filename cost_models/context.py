"""In-context corrections: what a layer costs inside its network, not alone.

A micro-benchmark times one layer in isolation; inside the network the same layer shares
caches with its neighbours and, on onnxruntime's CPU provider, runs in the NCHWc layout
without reorders only while its in-channels stay a multiple of 4. Measured here (ResNet-18,
224x224, 1 thread, per-node profiler): ``layer1.block0.conv2`` costs 2.15 ms in context at
64 and 60 in-channels but 2.6-2.8 ms at 61, 62 and 63, plus 0.2-0.3 ms of layout reorders
that no layer owns; the isolated staircase cannot see it, because the lone layer pays a
reorder at every count.

So whole pruned networks are timed at a few configurations (``runtime/context_profile.py``)
and every layer gets a point in context: ``(in, out, ms)``. The correction of one layer is
the ratio of its in-context time to its staircase estimate at the same counts, relative to
that ratio at full counts (the full point is what ``scale`` already calibrates, so anchoring
and the closed loop keep working on ``scale`` alone):

- points are grouped by the *alignment class* of their counts: the 2-adic valuation of the
  count, capped at the full count's (odd, 2 mod 4, 4 mod 8, 8 mod 16, aligned), because
  that is what libraries switch kernels and layouts on;
- a query uses the points of its own (in, out) classes, else those of its in-class (the
  layout of a conv's input decides the kernel), else the aligned ones;
- within a class the ratio is interpolated piecewise-linearly over the kept MAC fraction
  ``in * out / (full_in * full_out)`` and held flat beyond the measured range.

The penalty is thus measured and stored per target and device: the planner avoids a count
because it costs more, not because a rule forbids it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from onnx_hwprune.cost_models.staircase import StaircaseModel, valuation

__all__ = ["ContextCorrection", "ContextPoint", "alignment_class", "correction_from_points"]


@dataclass(frozen=True)
class ContextPoint:
    """One layer timed inside one configuration of its network.

    Attributes:
        config: the configuration's name (``full``, ``odd``, ``stair``...).
        node: the layer's node name; ``in_ch``/``out_ch``: its counts there.
        ms: its in-context time (its kernels plus its share of layout reorders).
    """

    config: str
    node: str
    in_ch: int
    out_ch: int
    ms: float


def alignment_class(count: int, full: int) -> int:
    """2-adic valuation of ``count``, capped at the full count's (which is 'aligned')."""
    return min(valuation(count), valuation(full))


@dataclass(frozen=True)
class ContextCorrection:
    """Relative in-context factor of one layer (1.0 at full counts).

    Attributes:
        full_in, full_out: the layer's unpruned counts.
        points: (in, out, relative ratio) per measured configuration, sorted.
    """

    full_in: int
    full_out: int
    points: tuple[tuple[int, int, float], ...]

    def factor(self, in_ch: int, out_ch: int) -> float:
        """Multiplier of the calibrated staircase estimate at (``in_ch``, ``out_ch``)."""
        ci, co = self._classes(in_ch, out_ch)
        aligned = self._classes(self.full_in, self.full_out)
        for wanted in ((ci, co), (ci, None), aligned):
            curve = self._curves.get(wanted)
            if curve:
                return _interpolate(curve, self._frac(in_ch, out_ch))
        return 1.0

    @functools.cached_property
    def _curves(self) -> dict[tuple[int, int | None], list[tuple[float, float]]]:
        """(in class, out class) and (in class, None) -> (MAC fraction, ratio) points:
        planners ask for thousands of counts, the points are few and fixed."""
        curves: dict[tuple[int, int | None], list[tuple[float, float]]] = {}
        for i, o, r in self.points:
            ci, co = self._classes(i, o)
            for key in ((ci, co), (ci, None)):
                curves.setdefault(key, []).append((self._frac(i, o), r))
        return curves

    def _classes(self, in_ch: int, out_ch: int) -> tuple[int, int]:
        return alignment_class(in_ch, self.full_in), alignment_class(out_ch, self.full_out)

    def _frac(self, in_ch: int, out_ch: int) -> float:
        return in_ch * out_ch / max(1, self.full_in * self.full_out)

    def to_dict(self) -> dict:
        return {"full_in": self.full_in, "full_out": self.full_out,
                "points": [list(p) for p in self.points]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> ContextCorrection:
        return cls(d["full_in"], d["full_out"], tuple(tuple(p) for p in d["points"]))


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through (x, y) points (same x averaged); flat outside."""
    by_x: dict[float, list[float]] = {}
    for px, py in points:
        by_x.setdefault(px, []).append(py)
    pts = sorted((px, sum(v) / len(v)) for px, v in by_x.items())
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def correction_from_points(
    staircase: StaircaseModel, full_in: int, full_out: int, points: Iterable[ContextPoint]
) -> ContextCorrection | None:
    """The layer's correction from its in-context points, or None without a full point.

    Each point's ratio is its in-context time over the staircase at the same counts; the
    ratio at full counts (mean over full points) normalises them all.
    """
    ratios = []
    for p in points:
        micro = staircase.latency(p.in_ch, p.out_ch).ms
        if micro > 0 and p.ms > 0:
            ratios.append((p.in_ch, p.out_ch, p.ms / micro))
    full = [r for i, o, r in ratios if (i, o) == (full_in, full_out)]
    if not full:
        return None
    base = sum(full) / len(full)
    rel = sorted((i, o, r / base) for i, o, r in ratios)
    return ContextCorrection(full_in, full_out, tuple(rel))
