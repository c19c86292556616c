"""The staircase cost model of one layer: plain data found by ``stair_search.py``.

Deployment libraries make latency vs channel count a staircase: flat within a block of the
library's channel tile, a jump at the next block (out-channels of an onnxruntime NCHWc conv
step every 16 on AVX-512), plus *cliffs*: counts off an alignment fall back to a slower
kernel (an in-channel count that is not a multiple of 4 is 1.6x slower).
:mod:`~onnx_hwprune.cost_models.stair_search` finds both with few measurements, along one
channel axis at a time, and returns an :class:`AxisProfile`.

:class:`StaircaseModel` combines the
axes of a layer. With one axis at full, a dense layer's latency is that axis's staircase.
With both pruned, the estimate lies between the product ``L_out(o) * L_in(i) / L_full``
(compute-bound: latency ~ in * out) and ``min(L_out(o), L_in(i))`` (fixed costs dominate:
cutting the second axis gains nothing), blended by a weight fitted on a small grid of
measured off-axis points, times what the blend still misses there
(:mod:`~onnx_hwprune.cost_models.off_axis`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from onnx_hwprune.cost_models.off_axis import fit_blend, grid_counts, ratio_at

__all__ = [
    "AxisProfile",
    "Estimate",
    "SearchConfig",
    "StaircaseModel",
    "valuation",
]

logger = logging.getLogger(__name__)

_MAX_VALUATION = 4  # classes: odd, 2 mod 4, 4 mod 8, 8 mod 16, multiple of 16
# A point whose interquartile range exceeds its median is not known within a factor of
# 2: where better points exist it is left out and its count interpolated. Under a
# CPU-bound burner sharing the core, 78 of 456 ResNet-18 points came out with spreads of
# 5-13, stored ~10x under their neighbours, and the plan followed them (a 3x3 conv
# predicted 2.0 -> 0.24 ms for 4 channels of 256; tools/bench_under_load.py).
MAX_USABLE_SPREAD = 1.0


@dataclass(frozen=True)
class SearchConfig:
    """Knobs of the detector.

    Attributes:
        coarse: number of coarse intervals over the modelled range.
        min_keep: smallest modelled fraction of the full count.
        k_noise: a jump counts when it exceeds ``k_noise`` times the measured spread...
        rel_floor: ...and this fraction of the latency (noise floor of a shared machine).
        max_fraction, min_points: refinement stops when ``max(min_points, max_fraction *
            range)`` counts of this axis are measured.
    """

    coarse: int = 4
    min_keep: float = 0.25
    k_noise: float = 2.0
    rel_floor: float = 0.04
    max_fraction: float = 0.12
    min_points: int = 16


@dataclass(frozen=True)
class Estimate:
    """A predicted latency and where it comes from: measured | interpolated | estimated."""

    ms: float
    provenance: str


@dataclass(frozen=True)
class AxisProfile:
    """What the detector learnt about one axis; plain, JSON-able data.

    Attributes:
        full: the unpruned count ``N``; ``lo``: smallest modelled count.
        align: lattice step ``A``; penalties: (2-adic class, factor) for penalised classes.
        points: measured (count, ms, spread), sorted by count.
    """

    full: int
    lo: int
    align: int
    points: tuple[tuple[int, float, float], ...]
    penalties: tuple[tuple[int, float], ...] = field(default=())
    rel_floor: float = 0.04

    def to_dict(self) -> dict:
        return {
            "full": self.full,
            "lo": self.lo,
            "align": self.align,
            "points": [list(p) for p in self.points],
            "penalties": [list(p) for p in self.penalties],
            "rel_floor": self.rel_floor,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AxisProfile:
        return cls(
            d["full"],
            d["lo"],
            d["align"],
            tuple(tuple(p) for p in d["points"]),
            tuple(tuple(p) for p in d["penalties"]),
            d.get("rel_floor", 0.04),
        )

    def latency(self, count: int) -> Estimate:
        """Latency at ``count`` channels on this axis (others at full)."""
        measured = {c: ms for c, ms, _ in self._usable()}
        if count in measured:
            return Estimate(measured[count], "measured")
        factors = dict(self.penalties)
        if count % self.align and valuation(count) in factors:
            return Estimate(self._unaligned(count, factors), "estimated")
        ms = _interpolate(self._lattice_points(), count)
        return Estimate(ms, "interpolated" if self.lo <= count <= self.full else "estimated")

    def _unaligned(self, count: int, factors: dict[int, float]) -> float:
        """Off-alignment counts run another kernel (onnxruntime: NCHW instead of NCHWc)
        whose cost has its own slope (a 31-channel depthwise conv: 3.5x the 32-channel one,
        linear in channels): a line through the measured points of the count's 2-adic class
        where they span enough of the range, else the aligned staircase times the class's
        measured factor."""
        v = valuation(count)
        pts = [(c, ms) for c, ms, _ in self._usable() if c % self.align and valuation(c) == v]
        span = max((c for c, _ in pts), default=0) - min((c for c, _ in pts), default=0)
        if span * 4 >= self.full - self.lo and len(pts) >= 2:
            xs, ys = [c for c, _ in pts], [ms for _, ms in pts]
            slope, intercept = _line(xs, ys)
            return max(slope * count + intercept, 0.2 * min(ys))
        return _interpolate(self._lattice_points(), count) * factors[v]

    def stair_edges(self, tol: float | None = None) -> list[tuple[int, float]]:
        """The largest count at each latency level: counts faster than every larger count
        by more than ``tol`` (default: the noise floor), largest first."""
        tol = self.rel_floor if tol is None else tol
        edges, best = [], math.inf
        for c in range(self.full, self.lo - 1, -1):
            ms = self.latency(c).ms
            if ms < best * (1 - tol):
                edges.append((c, ms))
                best = ms
        return edges

    def _lattice_points(self) -> list[tuple[int, float]]:
        usable = self._usable()
        pts = [(c, ms) for c, ms, _ in usable if c % self.align == 0 or self.align == 1]
        return pts or [(c, ms) for c, ms, _ in usable]

    def _usable(self) -> tuple[tuple[int, float, float], ...]:
        """The points located well enough to price with (see MAX_USABLE_SPREAD); all of
        them when none is (a wild point is still better than no point)."""
        kept = tuple(p for p in self.points if p[2] <= MAX_USABLE_SPREAD)
        return kept or self.points


def valuation(count: int) -> int:
    """Number of trailing zero bits of ``count``, capped at ``_MAX_VALUATION`` (the
    alignment classes: odd, 2 mod 4, 4 mod 8, 8 mod 16, multiple of 16)."""
    v = 0
    while count % 2 == 0 and v < _MAX_VALUATION:
        count //= 2
        v += 1
    return v


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return slope, my - slope * mx


def _interpolate(points: list[tuple[int, float]], count: int) -> float:
    """Piecewise-linear through ``points``; flat beyond the top, proportional below."""
    if not points:
        raise ValueError("no measured points")
    if count >= points[-1][0]:
        return points[-1][1]
    if count <= points[0][0]:
        c0, l0 = points[0]
        return l0 * max(0.5, count / c0)
    for (c0, l0), (c1, l1) in zip(points, points[1:], strict=False):
        if c0 <= count <= c1:
            return l0 + (l1 - l0) * (count - c0) / (c1 - c0)
    return points[-1][1]


@dataclass(frozen=True)
class StaircaseModel:
    """Latency of one layer signature at any (in, out) channel counts.

    Attributes:
        signature_key: the :meth:`LayerSignature.key` it models.
        group_kind: ``dense`` (axes ``in``/``out``) or tied (axis ``ch``).
        full_in, full_out: the unpruned counts; ``full_ms``: measured latency there.
        axes: (axis name, :class:`AxisProfile`) pairs; a missing axis is not prunable.
        per_ch: for tied axes, (in, out) channels per unit of ``ch`` (1, multiplier) for
            depthwise, (in_per_group, out_per_group) for grouped.
    """

    signature_key: str
    group_kind: str
    full_in: int
    full_out: int
    full_ms: float
    axes: tuple[tuple[str, AxisProfile], ...]
    per_ch: tuple[int, int] = (1, 1)
    blend: float = 0.0
    off_axis: tuple[tuple[int, int, float], ...] = ()

    def axis(self, name: str) -> AxisProfile | None:
        """The profile of axis ``name`` or None."""
        return dict(self.axes).get(name)

    def latency(self, in_ch: int, out_ch: int) -> Estimate:
        """Predicted latency at (``in_ch``, ``out_ch``) with its provenance."""
        if self.group_kind != "dense" and self.axis("ch") is None and self.per_ch[0] > 1:
            return self._macs_scaled(in_ch, out_ch)
        if self.group_kind != "dense":
            unit = max(1, self.per_ch[0])
            return self._axis_latency("ch", in_ch // unit, self.full_in // unit)
        if in_ch == self.full_in:
            return self._axis_latency("out", out_ch, self.full_out)
        if out_ch == self.full_out:
            return self._axis_latency("in", in_ch, self.full_in)
        return self._both_axes(in_ch, out_ch)

    def _both_axes(self, in_ch: int, out_ch: int) -> Estimate:
        """The blended estimate times the measured off-axis ratio surface (off_axis.py)."""
        blended = self._off_axis(in_ch, out_ch, self.blend)
        if not self.off_axis:
            return Estimate(blended, "estimated")
        measured = {(i, o): ms for i, o, ms in self.off_axis}
        if (in_ch, out_ch) in measured:
            return Estimate(measured[(in_ch, out_ch)], "measured")
        ratios = {(i, o): ms / self._off_axis(i, o, self.blend) for i, o, ms in self.off_axis}
        full = (self.full_in, self.full_out)
        return Estimate(blended * ratio_at(ratios, full, in_ch, out_ch), "estimated")

    def _macs_scaled(self, in_ch: int, out_ch: int) -> Estimate:
        """A grouped conv whose group count stays fixed: MACs scale with in * out. Only
        the full point is measured (see the profiler); the rest is an estimate."""
        if (in_ch, out_ch) == (self.full_in, self.full_out):
            return Estimate(self.full_ms, "measured")
        share = in_ch * out_ch / max(1, self.full_in * self.full_out)
        return Estimate(self.full_ms * share, "estimated")

    def _off_axis(self, in_ch: int, out_ch: int, blend: float) -> float:
        # Both axes pruned: between the product (pure compute, latency ~ in * out) and the
        # faster single-axis cut (fixed costs dominate: cutting the other axis gains
        # nothing); ``blend`` is fitted on a measured point.
        by_out = self._axis_latency("out", out_ch, self.full_out).ms
        by_in = self._axis_latency("in", in_ch, self.full_in).ms
        product = by_out * by_in / self.full_ms
        return product + blend * (min(by_out, by_in) - product)

    def with_blend(self, in_ch: int, out_ch: int, measured_ms: float) -> StaircaseModel:
        """A copy whose off-axis blend reproduces ``measured_ms`` at (in, out), clipped
        to [0, 1] so one noisy point cannot extrapolate."""
        product, single = self._off_axis(in_ch, out_ch, 0.0), self._off_axis(in_ch, out_ch, 1.0)
        if abs(single - product) < 1e-12:
            return self
        blend = min(1.0, max(0.0, (measured_ms - product) / (single - product)))
        return StaircaseModel(**{**self.__dict__, "blend": blend})

    def off_axis_probes(self) -> list[tuple[int, int]]:
        """The (in, out) grid measured to fit both-axes pruning (see off_axis.py)."""
        if self.group_kind != "dense" or len(self.axes) != 2:
            return []
        pin, pout = self.axis("in"), self.axis("out")
        ins = grid_counts(self.full_in, pin.lo, pin.align)
        outs = grid_counts(self.full_out, pout.lo, pout.align)
        return [(i, o) for i in ins for o in outs]

    def with_off_axis(self, measured: dict[tuple[int, int], float]) -> StaircaseModel:
        """A copy fitted to measured off-axis points: least-squares blend, then the ratio
        surface through what the blend still misses."""
        pts = tuple(sorted((i, o, ms) for (i, o), ms in measured.items()))
        if not pts:
            return self

        def bounds(i: int, o: int) -> tuple[float, float]:
            return self._off_axis(i, o, 0.0), self._off_axis(i, o, 1.0)

        return StaircaseModel(**{**self.__dict__, "blend": fit_blend(pts, bounds), "off_axis": pts})

    def diagonal_probe(self) -> tuple[int, int] | None:
        """The (in, out) point used to fit the blend: ~60% of each axis, aligned."""
        if self.group_kind != "dense" or len(self.axes) != 2:
            return None
        pin, pout = self.axis("in"), self.axis("out")
        i = max(pin.lo, int(0.6 * self.full_in) // pin.align * pin.align)
        o = max(pout.lo, int(0.6 * self.full_out) // pout.align * pout.align)
        return (i, o) if i < self.full_in and o < self.full_out else None

    def stair_edges(self, axis: str, tol: float | None = None) -> list[tuple[int, float]]:
        """Largest channel count at each latency level along ``axis`` (others at full),
        in channels of that axis (for ``ch``: in-channels), largest first."""
        prof = self.axis(axis)
        if prof is None:
            full = self.full_out if axis == "out" else self.full_in
            return [(full, self.full_ms)]
        scale = self.per_ch[0] if axis == "ch" else 1
        return [(c * scale, ms) for c, ms in prof.stair_edges(tol)]

    def _axis_latency(self, name: str, count: int, full: int) -> Estimate:
        prof = self.axis(name)
        if count == full:
            return Estimate(self.full_ms, "measured")
        if prof is None:
            return Estimate(self.full_ms * count / full, "estimated")
        return prof.latency(count)

    def to_dict(self) -> dict:
        return {
            "signature": self.signature_key,
            "group_kind": self.group_kind,
            "full_in": self.full_in,
            "full_out": self.full_out,
            "full_ms": self.full_ms,
            "axes": {n: p.to_dict() for n, p in self.axes},
            "per_ch": list(self.per_ch),
            "blend": self.blend,
            **({"off_axis": [list(p) for p in self.off_axis]} if self.off_axis else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> StaircaseModel:
        axes = tuple((n, AxisProfile.from_dict(p)) for n, p in d["axes"].items())
        return cls(
            d["signature"],
            d["group_kind"],
            d["full_in"],
            d["full_out"],
            d["full_ms"],
            axes,
            tuple(d["per_ch"]),
            d.get("blend", 0.0),
            tuple(tuple(p) for p in d.get("off_axis", ())),
        )
