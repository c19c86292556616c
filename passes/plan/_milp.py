"""A 0-1 program over stair levels with pairwise costs, solved by HiGHS.

The variables: ``x[g, i] = 1`` when group ``g`` keeps its ``i``-th candidate count
(exactly one per group). A cost is a :class:`Costs`: a constant, a table per group
(``unary[g][i]``) and a table per pair of groups (``pair[g, h][i, j]``: a layer whose input
belongs to ``g`` and output to ``h`` costs ``f(count_g[i], count_h[j])``). A pair table is
linearised with one variable ``z[g, h, i, j]`` per cell and the local-marginal linking
constraints ``sum_j z[i, j] = x[g, i]`` and ``sum_i z[i, j] = x[h, j]``. With ``x``
integral these force ``z`` to the one cell of the chosen pair, so ``z`` can stay
continuous in [0, 1]: the program is exact, and only the ``x`` are branched on (a
McCormick linearisation of ``x[g,i] * x[h,j]`` is weaker: it needs three rows per cell
and its LP relaxation is looser).

Solver: HiGHS, the maintained open-source MILP solver on PyPI, through ``highspy``
because it takes a MIP start (the greedy's plan: on a ResNet-50 program the search then
always holds a plan at least as good as the greedy's, where without one it found none
in 10 s at two of four budgets) and reports the gap and dual bound. ``highspy`` prints a
banner on stdout when a solver is made, which this tool's CLI keeps for its summary, so
that moment is redirected. ``scipy.optimize.milp`` (the same HiGHS, no MIP start) is the
fallback when highspy is not installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Costs", "LevelProgram", "Solution", "SolverUnavailable"]

log = logging.getLogger(__name__)


class SolverUnavailable(RuntimeError):
    """scipy (with its HiGHS MILP interface) is not installed."""


@dataclass
class Costs:
    """``const + sum_g unary[g][x_g] + sum_(g,h) pair[g,h][x_g, x_h]`` (see module doc)."""

    const: float = 0.0
    unary: dict[str, np.ndarray] = field(default_factory=dict)
    pair: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def add_unary(self, g: str, table: np.ndarray) -> None:
        self.unary[g] = self.unary.get(g, 0.0) + np.asarray(table, dtype=np.float64)

    def add_pair(self, g: str, h: str, table: np.ndarray) -> None:
        table = np.asarray(table, dtype=np.float64)
        if (h, g) in self.pair:  # one orientation per pair
            g, h, table = h, g, table.T
        self.pair[g, h] = self.pair.get((g, h), 0.0) + table

    def value(self, choice: Mapping[str, int]) -> float:
        """The cost of one choice (level index per group)."""
        total = self.const + sum(float(t[choice[g]]) for g, t in self.unary.items())
        return total + sum(float(t[choice[g], choice[h]]) for (g, h), t in self.pair.items())


@dataclass(frozen=True)
class Solution:
    """``status``: optimal | time_limit | infeasible | failed; ``choice`` None if no plan.

    ``gap``: relative MIP gap of the returned choice (0 when proven optimal).
    """

    status: str
    choice: dict[str, int] | None
    objective: float
    gap: float
    bound: float
    seconds: float


class LevelProgram:
    """One choice per group among ``levels[g]`` candidates; costs and ``<=`` constraints."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.groups = list(sizes)
        self.sizes = dict(sizes)
        self.constraints: list[tuple[Costs, float]] = []
        # HiGHS's presolve cannot be interrupted: on a 5k-column program from a small
        # MobileNetV2 it ran 1.8 s past a 0.2 s limit, and solving without it was faster
        # to optimality too (1.4 s vs 2.5 s; ResNet bottleneck 2.8 s vs 5.6 s, this host).
        self.presolve = False

    def constrain(self, costs: Costs, upper: float) -> None:
        self.constraints.append((costs, upper))

    def solve(
        self,
        objective: Costs,
        time_limit: float,
        gap: float = 1e-3,
        start: Mapping[str, int] | None = None,
    ) -> Solution:
        """Least ``objective`` under the constraints; ``start``: a feasible choice to
        begin from (a MIP start: the search then never returns anything worse)."""
        build = time.perf_counter()
        cols = _Columns(self.sizes, [objective, *(c for c, _ in self.constraints)])
        rows = _Rows()
        cols.add_structure(rows)
        for costs, upper in self.constraints:
            idx, val = cols.linear(costs)
            rows.add(idx, val, -np.inf, upper - costs.const)
        c_idx, c_val = cols.linear(objective)
        c = np.zeros(cols.n)
        np.add.at(c, c_idx, c_val)
        log.debug(
            "milp: %d columns, %d rows, built in %.2fs", cols.n, rows.n, time.perf_counter() - build
        )
        try:
            return _solve_highspy(self, cols, rows, c, objective, time_limit, gap, start)
        except ImportError:
            return self._solve_scipy(cols, rows, c, objective, time_limit, gap)

    def _solve_scipy(self, cols, rows, c, objective: Costs, time_limit: float, gap: float):
        try:
            from scipy.optimize import Bounds, LinearConstraint, milp
            from scipy.sparse import csr_array
        except ImportError as exc:  # the planner falls back to the greedy
            raise SolverUnavailable(f"neither highspy nor scipy.optimize.milp: {exc}") from None
        matrix = csr_array((rows.vals, (rows.row_ids, rows.col_ids)), shape=(rows.n, cols.n))
        start = time.perf_counter()
        res = milp(
            c,
            integrality=cols.integrality,
            bounds=Bounds(0.0, 1.0),
            constraints=LinearConstraint(matrix, rows.lower, rows.upper),
            options={
                "time_limit": max(0.01, time_limit),
                "mip_rel_gap": gap,
                "disp": log.isEnabledFor(5),
                "presolve": self.presolve,
            },
        )
        status = {0: "optimal", 1: "time_limit", 2: "infeasible"}.get(res.status, "failed")
        bound = float(getattr(res, "mip_dual_bound", np.nan))
        found = float(getattr(res, "mip_gap", np.nan) or 0.0)
        return _solution(status, res.x, cols, objective, found, bound, time.perf_counter() - start)


def _solution(status, x, cols: _Columns, objective: Costs, gap, bound, seconds) -> Solution:
    if x is None:
        return Solution(status, None, np.inf, np.inf, -np.inf, seconds)
    choice = cols.choice(np.asarray(x))
    value = objective.value(choice)
    log.debug("milp %s in %.2fs: objective %.6g gap %.2g", status, seconds, value, gap)
    return Solution(status, choice, value, gap, bound + objective.const, seconds)


def _solve_highspy(program, cols, rows, c, objective: Costs, time_limit, gap, start) -> Solution:
    import highspy  # ImportError: the caller falls back to scipy

    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", max(0.01, time_limit))
    h.setOptionValue("mip_rel_gap", gap)
    h.setOptionValue("presolve", "on" if program.presolve else "off")
    h.passModel(_lp(highspy, cols, rows, c))
    if start is not None:
        warm = highspy.HighsSolution()
        warm.col_value = cols.values(start).tolist()
        warm.value_valid = True
        h.setSolution(warm)
    began = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - began
    model_status = h.getModelStatus()
    names = {
        highspy.HighsModelStatus.kOptimal: "optimal",
        highspy.HighsModelStatus.kTimeLimit: "time_limit",
        highspy.HighsModelStatus.kInfeasible: "infeasible",
    }
    status = names.get(model_status, "failed")
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    return _solution(status, x, cols, objective, info.mip_gap, info.mip_dual_bound, seconds)


def _quiet_highs(highspy):
    """A solver with no output. highspy prints a banner on stdout when a solver is made,
    before any option can be set; stdout may be this tool's report, so it is redirected
    for that moment."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


def _lp(highspy, cols: _Columns, rows: _Rows, c: np.ndarray):
    start, index, value = _csc(rows, cols.n)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = cols.n, rows.n
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = c, np.zeros(cols.n), np.ones(cols.n)
    lp.row_lower_, lp.row_upper_ = np.asarray(rows.lower), np.asarray(rows.upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = start, index, value
    kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
    lp.integrality_ = [kinds[int(v)] for v in cols.integrality]
    return lp


class _Rows:
    """Sparse rows collected as triplets."""

    def __init__(self) -> None:
        self.row_ids: list[int] = []
        self.col_ids: list[int] = []
        self.vals: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    @property
    def n(self) -> int:
        return len(self.lower)

    def add(self, idx: Sequence[int], val: Sequence[float], lo: float, hi: float) -> None:
        self.row_ids.extend([self.n] * len(idx))
        self.col_ids.extend(int(i) for i in idx)
        self.vals.extend(float(v) for v in val)
        self.lower.append(lo)
        self.upper.append(hi)


class _Columns:
    """Column numbering: the ``x`` block per group, then a ``z`` block per used pair."""

    def __init__(self, sizes: Mapping[str, int], all_costs: Sequence[Costs]) -> None:
        self.x: dict[str, int] = {}
        n = 0
        for g, size in sizes.items():
            self.x[g], n = n, n + size
        n_x = n
        self.z: dict[tuple[str, str], int] = {}
        for costs in all_costs:
            for key in costs.pair:
                if key not in self.z and key[::-1] not in self.z:
                    self.z[key], n = n, n + sizes[key[0]] * sizes[key[1]]
        self.sizes, self.n = dict(sizes), n
        self.integrality = np.zeros(n)
        self.integrality[:n_x] = 1

    def add_structure(self, rows: _Rows) -> None:
        for g, first in self.x.items():
            rows.add(range(first, first + self.sizes[g]), [1.0] * self.sizes[g], 1.0, 1.0)
        for (g, h), first in self.z.items():
            ng, nh = self.sizes[g], self.sizes[h]
            cells = np.arange(ng * nh).reshape(ng, nh) + first
            for i in range(ng):  # sum_j z[i, j] - x[g, i] = 0
                rows.add([*cells[i], self.x[g] + i], [1.0] * nh + [-1.0], 0.0, 0.0)
            for j in range(nh):
                rows.add([*cells[:, j], self.x[h] + j], [1.0] * ng + [-1.0], 0.0, 0.0)

    def linear(self, costs: Costs) -> tuple[list[int], list[float]]:
        idx: list[int] = []
        val: list[float] = []
        for g, table in costs.unary.items():
            idx.extend(range(self.x[g], self.x[g] + len(table)))
            val.extend(np.asarray(table).tolist())
        for (g, h), table in costs.pair.items():
            if (g, h) in self.z:
                first, flat = self.z[g, h], np.asarray(table).ravel()
            else:
                first, flat = self.z[h, g], np.asarray(table).T.ravel()
            idx.extend(range(first, first + flat.size))
            val.extend(flat.tolist())
        return idx, val

    def values(self, choice: Mapping[str, int]) -> np.ndarray:
        """The column values of one choice (``x`` one-hot, ``z`` at the chosen cells)."""
        v = np.zeros(self.n)
        for g, first in self.x.items():
            v[first + choice[g]] = 1.0
        for (g, h), first in self.z.items():
            v[first + choice[g] * self.sizes[h] + choice[h]] = 1.0
        return v

    def choice(self, x: np.ndarray) -> dict[str, int]:
        return {g: int(np.argmax(x[f : f + self.sizes[g]])) for g, f in self.x.items()}


def _csc(rows: _Rows, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise (start, row index, value) of the triplets, duplicates summed."""
    keys = np.asarray(rows.col_ids, dtype=np.int64) * max(1, rows.n) + np.asarray(rows.row_ids)
    unique, inverse = np.unique(keys, return_inverse=True)
    value = np.zeros(len(unique))
    np.add.at(value, inverse, rows.vals)
    col, index = np.divmod(unique, max(1, rows.n))
    start = np.searchsorted(col, np.arange(n_cols + 1))
    return start.astype(np.int32), index.astype(np.int32), value
