"""Both axes pruned: fitting a layer's cost off its two measured axes.

The axis searches measure a dense layer along one axis at a time (the other at full). With
both axes pruned the cost lies between the product ``L_out(o) * L_in(i) / L_full`` (pure
compute) and ``min(L_out(o), L_in(i))`` (fixed costs dominate), blended by a weight. One
measured off-axis point fixed that weight before, and was up to 29% off elsewhere: the mix
of compute and fixed cost changes with the size of the cut.

Now a small grid of off-axis points is measured, the cut fractions ``GRID`` of each axis
(2 x 2 = 4 points by default, against the hundreds of an exhaustive 2-D sweep; on a
constructed surface whose compute/fixed-cost mix moves with the cut, 35% and 70% cut the
worst error of the one-point fit from 18% to 6.5%, see ``tests/test_off_axis.py``):

1. the blend is the least-squares fit over all of them (clipped to [0, 1]);
2. what the fitted blend still misses at each grid point, ``measured / blended``, is a
   ratio surface, 1 on both axes (where the axis staircases are exact), interpolated
   bilinearly between grid points and held flat beyond the smallest grid counts.

Worked example: full 64 x 64, grid counts 22 and 44 on each axis (alignment 1); a query
(30, 50) falls in the cell [22, 44] x [44, 64] and mixes the ratios at (22, 44), (44, 44)
and 1 on the out-axis edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["GRID", "fit_blend", "grid_counts", "ratio_at"]

GRID = (0.35, 0.7)
"""Cut fractions of each axis probed off-axis."""

Point = tuple[int, int, float]  # (in, out, measured ms)


def grid_counts(full: int, lo: int, align: int, fractions: Sequence[float] = GRID) -> list[int]:
    """Aligned counts at ``fractions`` of ``full`` (at least ``lo``, below ``full``)."""
    counts = {max(lo, int(f * full) // align * align) for f in fractions}
    return sorted(c for c in counts if 0 < c < full)


def fit_blend(points: Sequence[Point], bounds: Callable[[int, int], tuple[float, float]]) -> float:
    """Least-squares blend over measured points; ``bounds(i, o)`` -> (product, single)."""
    num = den = 0.0
    for i, o, ms in points:
        product, single = bounds(i, o)
        d = single - product
        num, den = num + d * (ms - product), den + d * d
    return min(1.0, max(0.0, num / den)) if den > 1e-24 else 0.0


def ratio_at(
    ratios: dict[tuple[int, int], float], full: tuple[int, int], in_ch: int, out_ch: int
) -> float:
    """Bilinear ratio surface through grid ``ratios`` and 1 at full counts (module doc)."""
    ins = sorted({i for i, _ in ratios} | {full[0]})
    outs = sorted({o for _, o in ratios} | {full[1]})

    def r(i: int, o: int) -> float:
        if i == full[0] or o == full[1]:
            return 1.0
        return ratios.get((i, o), 1.0)

    i0, i1, ti = _bracket(ins, in_ch)
    o0, o1, to = _bracket(outs, out_ch)
    low = r(i0, o0) * (1 - to) + r(i0, o1) * to
    high = r(i1, o0) * (1 - to) + r(i1, o1) * to
    return low * (1 - ti) + high * ti


def _bracket(grid: list[int], x: int) -> tuple[int, int, float]:
    """(left, right, weight of right) around ``x``; flat beyond both ends."""
    if x <= grid[0]:
        return grid[0], grid[0], 0.0
    for a, b in zip(grid, grid[1:], strict=False):
        if x <= b:
            return a, b, (x - a) / (b - a)
    return grid[-1], grid[-1], 0.0
