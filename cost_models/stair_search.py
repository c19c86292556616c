"""Staircase detection: the staircase of one channel axis from few measurements.

1. **Alignment probes.** Measure the full count ``N`` and, for each 2-adic class
   (odd, 2 mod 4, 4 mod 8, 8 mod 16, multiple of 16), the largest count below ``N`` in it.
   A class slower than a larger, better-aligned count (by more than twice the noise
   floor) is *penalised* if a second count of the class confirms it; the alignment ``A``
   is the smallest power of two above every penalised class, and each class below ``A``
   gets a measured slowdown factor (median of its probes vs the aligned staircase).
2. **Coarse probes** on the lattice of multiples of ``A`` in ``[lo, N]`` (``lo`` is
   ``min_keep * N``; pruning more than that is out of the modelled range).
3. **Refinement** (LOCP's three-point stair-step discrimination): an interval ``(a, b)``
   whose end latencies differ by more than the noise threshold gets a probe ``m``. If
   ``(a, m, b)`` lie on a line within the noise, the interval is smooth (many small steps
   below the noise, as in wide layers) and is interpolated; otherwise it is split and each
   half is examined again, down to adjacent lattice points, which locates the stair edge.
   Once an edge is known, the edges' GCD is taken as the period and later probes go to
   the predicted edge instead of the midpoint, which verifies a step in one or two
   measurements instead of a bisection.

The result is an :class:`~onnx_hwprune.cost_models.staircase.AxisProfile` (plain data).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from onnx_hwprune.cost_models.staircase import (
    _MAX_VALUATION,
    AxisProfile,
    SearchConfig,
    _interpolate,
    valuation,
)

__all__ = ["MeasureFn", "detect_axis", "exhaustive_axis"]

MeasureFn = Callable[[list[int]], dict[int, tuple[float, float]]]
"""``measure(counts) -> {count: (median_ms, relative_spread)}`` along one axis."""


def detect_axis(measure: MeasureFn, full: int, config: SearchConfig | None = None) -> AxisProfile:
    """Find the staircase of one axis with few calls to ``measure`` (see module doc)."""
    config = config or SearchConfig()
    lo = max(1, math.ceil(full * config.min_keep))
    data: dict[int, tuple[float, float]] = {}
    data.update(measure(_alignment_probes(full, lo)))
    penalised = _confirm_penalties(measure, data, full, lo, config)
    align = 2 ** (max(penalised) + 1) if penalised else 1
    lattice = [c for c in range(lo, full + 1) if c % align == 0] or [full]
    coarse = _coarse_probes(lattice, config.coarse)
    data.update(measure([c for c in coarse if c not in data]))
    budget = max(config.min_points, int(config.max_fraction * (full - lo + 1)))
    _refine(measure, data, lattice, align, config, budget)
    lattice_pts = [(c, data[c][0]) for c in sorted(data) if c % align == 0]
    # Every class below the alignment gets its own measured factor, flagged or not: a
    # class finer than a penalised one cannot be better aligned.
    penalties = tuple(
        (v, statistics.median(data[c][0] / _interpolate(lattice_pts, c) for c in counts))
        for v in range(_MAX_VALUATION + 1)
        if 2**v < align and (counts := [c for c in data if valuation(c) == v])
    )
    points = tuple((c, ms, sp) for c, (ms, sp) in sorted(data.items()))
    return AxisProfile(full, lo, align, points, penalties, config.rel_floor)


def exhaustive_axis(measure: MeasureFn, full: int, lo: int = 1) -> AxisProfile:
    """Measure every count in ``[lo, full]``: the reference the detector is judged by."""
    data = measure(list(range(lo, full + 1)))
    points = tuple((c, ms, sp) for c, (ms, sp) in sorted(data.items()))
    return AxisProfile(full, lo, 1, points)


def _class_probes(full: int, lo: int) -> dict[int, int]:
    """For each 2-adic class, the largest count in ``[lo, full]`` belonging to it."""
    probes = {}
    for v in range(_MAX_VALUATION + 1):
        c = full
        while c >= lo and valuation(c) != v:
            c -= 1
        if c >= lo:
            probes[v] = c
    return probes


def _largest_in_class(v: int, upper: int, lo: int) -> int | None:
    c = upper
    while c >= lo and valuation(c) != v:
        c -= 1
    return c if c >= lo else None


def _alignment_probes(full: int, lo: int) -> list[int]:
    return sorted({full, *_class_probes(full, lo).values()})


def _is_penalised(data, c: int, refs: list[int], config: SearchConfig) -> bool:
    """``c`` is slower than one of ``refs`` (larger, better-aligned counts) beyond noise."""
    noise = max(2 * config.rel_floor, config.k_noise * data[c][1])
    return any(data[c][0] > data[r][0] * (1 + noise) for r in refs if r in data)


def _confirm_penalties(measure, data, full: int, lo: int, config: SearchConfig) -> set[int]:
    """Classes penalised at their probe near ``N`` *and* at the next lower count of the
    class: on a shared machine one slow probe is too often noise (a false cliff costs 50%+
    error). A confirmed class also gets a mid-range count, which gives the slope of the
    slower kernel (see :meth:`AxisProfile._unaligned`)."""
    probes = _class_probes(full, lo)

    def penalised(c: int, v: int) -> bool:
        return _is_penalised(data, c, [r for u, r in probes.items() if u > v and r > c], config)

    flagged = {v for v, c in probes.items() if c in data and penalised(c, v)}
    second = {v: probes[v] - 2 ** (v + 1) for v in flagged if probes[v] - 2 ** (v + 1) >= lo}
    data.update(measure(sorted(set(second.values()) - set(data))))
    confirmed = {v for v in flagged if v not in second or penalised(second[v], v)}
    mids = [_largest_in_class(v, (lo + full) // 2, lo) for v in confirmed]
    data.update(measure(sorted({c for c in mids if c is not None} - set(data))))
    return confirmed


def _coarse_probes(lattice: list[int], n: int) -> list[int]:
    """``n + 1`` lattice points spread over the range, snapped to round counts."""
    lo, hi = lattice[0], lattice[-1]
    spacing = max(1, (hi - lo) / max(1, n))
    # Library tiles are powers of two: probes at round counts tend to sit on stair edges.
    snap = 2 ** min(4, round(math.log2(spacing)))
    members = set(lattice)
    out = {lo, hi}
    for j in range(1, n):
        target = lo + j * spacing
        cand = [c for c in lattice if c % snap == 0] or lattice
        best = min(cand, key=lambda c: abs(c - target))
        if best in members:
            out.add(best)
    return sorted(out)


def _threshold(a, b, config: SearchConfig) -> float:
    (la, sa), (lb, sb) = a, b
    return max(config.k_noise * max(la * sa, lb * sb), config.rel_floor * max(la, lb))


def _refine(measure, data, lattice, align, config, budget) -> None:
    """Split intervals whose ends differ by more than the noise until edges are found."""
    members = set(lattice)
    known = sorted(c for c in data if c in members)
    intervals = list(zip(known, known[1:], strict=False))
    while intervals and len(data) < budget:
        period = _period(data, known, align, config)
        probes = _choose_probes(data, intervals, align, period, config)
        if not probes:
            break
        data.update(measure(sorted(set(probes.values()) - set(data))))
        intervals = _split(data, probes, config) + [
            iv for iv in intervals if iv not in probes and _needs_probe(data, iv, align, config)
        ]
        known = sorted(c for c in data if c in members)


def _needs_probe(data, iv, align, config) -> bool:
    a, b = iv
    return b - a > align and abs(data[b][0] - data[a][0]) > _threshold(data[a], data[b], config)


def _choose_probes(data, intervals, align, period, config) -> dict[tuple[int, int], int]:
    """One probe per open interval; before a period is known, only the widest jump."""
    open_ivs = [iv for iv in intervals if _needs_probe(data, iv, align, config)]
    if period is None and open_ivs:
        # Bisect one interval first: its edge gives the period for all the others.
        open_ivs = [max(open_ivs, key=lambda iv: abs(data[iv[1]][0] - data[iv[0]][0]))]
    return {iv: _probe_in(iv, align, period) for iv in open_ivs}


def _probe_in(iv: tuple[int, int], align: int, period: int | None) -> int:
    a, b = iv
    if period:
        predicted = [e for e in range(-(-a // period) * period, b, period) if a <= e < b]
        if predicted:
            e = predicted[len(predicted) // 2]
            return a + align if e == a else e
    mid = (a + b) // 2
    return max(a + align, min(b - align, mid - mid % align))


def _split(data, probes, config) -> list[tuple[int, int]]:
    out = []
    for (a, b), m in probes.items():
        chord = data[a][0] + (data[b][0] - data[a][0]) * (m - a) / (b - a)
        if abs(data[m][0] - chord) > _threshold(data[a], data[b], config):
            out += [(a, m), (m, b)]
    return out


def _period(data, known, align, config) -> int | None:
    """GCD of the stair edges found so far (adjacent lattice points with a jump)."""
    edges = [
        a
        for a, b in zip(known, known[1:], strict=False)
        if b - a == align and data[b][0] - data[a][0] > _threshold(data[a], data[b], config)
    ]
    if not edges:
        return None
    g = 0
    for e in edges:
        g = math.gcd(g, e)
    # Tiles are powers of two: one edge at 48 suggests a period of 16, not 48.
    g = g & -g
    return g if g >= 2 * align else None
