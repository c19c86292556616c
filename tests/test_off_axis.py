"""Both axes pruned: a grid of measured off-axis points fits a 2-D cost surface that one
point cannot (the single-point blend was up to 29% off on real layers)."""

from __future__ import annotations

import math

import pytest

from onnx_hwprune.cost_models.off_axis import fit_blend, grid_counts, ratio_at
from onnx_hwprune.cost_models.staircase import AxisProfile, StaircaseModel

FULL, LO = 64, 16


def _in(c: int) -> float:
    return 0.2 + 0.8 * c / FULL


def _out(c: int) -> float:
    return 0.2 + 0.8 * math.ceil(c / 16) * 16 / FULL  # a staircase of 16


def _surface(i: int, o: int) -> float:
    """Between the product of the axes (compute-bound) and their min (fixed costs
    dominate), with a mix that moves with the size of the cut: near full the layer is
    compute-bound, deep cuts are overhead-bound. One blend cannot fit both ends."""
    product, low = _in(i) * _out(o) / (_in(FULL) * _out(FULL)), min(_in(i), _out(o))
    w = 1 - i * o / FULL**2
    return product + w * (low - product)


def _model() -> StaircaseModel:
    """Both axes measured at every count (the axis search is not under test here)."""

    def axis(f):
        return AxisProfile(FULL, LO, 1, tuple((c, f(c), 0.0) for c in range(LO, FULL + 1)))

    axes = (("in", axis(_in)), ("out", axis(_out)))
    return StaircaseModel("k", "dense", FULL, FULL, _surface(FULL, FULL), axes)


def _errors(model: StaircaseModel) -> list[float]:
    return [abs(model.latency(i, o).ms / _surface(i, o) - 1)
            for i in range(LO, FULL) for o in range(LO, FULL)]  # fmt: skip


def test_grid_fit_beats_one_point():
    model = _model()
    diag = model.diagonal_probe()
    single = model.with_blend(*diag, _surface(*diag))
    probes = model.off_axis_probes()
    grid = model.with_off_axis({p: _surface(*p) for p in probes})
    one, many = _errors(single), _errors(grid)
    assert max(one) > 0.08  # the surface really defeats a single blend
    assert max(many) < 0.5 * max(one)
    assert sum(many) / len(many) < 0.5 * sum(one) / len(one)
    for p in probes:  # measured points are reproduced exactly
        assert grid.latency(*p).ms == pytest.approx(_surface(*p))
        assert grid.latency(*p).provenance == "measured"
    # Bounded cost: 4 points, well under 10% of the off-axis sweep's 48 x 48.
    assert len(probes) == 4 <= 0.1 * (FULL - LO) ** 2
    assert StaircaseModel.from_dict(grid.to_dict()) == grid


def test_ratio_surface_is_one_on_the_axes_and_flat_beyond():
    ratios = {(32, 32): 1.2, (32, 48): 1.1, (48, 32): 1.1, (48, 48): 1.05}
    assert ratio_at(ratios, (64, 64), 64, 20) == 1.0
    assert ratio_at(ratios, (64, 64), 20, 64) == 1.0
    assert ratio_at(ratios, (64, 64), 8, 8) == pytest.approx(1.2)  # flat below the grid
    assert ratio_at(ratios, (64, 64), 40, 40) == pytest.approx((1.2 + 1.1 + 1.1 + 1.05) / 4)
    assert ratio_at(ratios, (64, 64), 56, 48) == pytest.approx((1.05 + 1.0) / 2)


def test_blend_is_least_squares_and_clipped():
    # product 1, single 2 at both points: measured 1.25 and 1.75 -> blend 0.5
    bounds = lambda i, o: (1.0, 2.0)  # noqa: E731
    assert fit_blend([(1, 1, 1.25), (2, 2, 1.75)], bounds) == pytest.approx(0.5)
    assert fit_blend([(1, 1, 9.0)], bounds) == 1.0
    assert grid_counts(64, 16, 16) == [16, 32]
    assert grid_counts(20, 16, 1) == [16]
