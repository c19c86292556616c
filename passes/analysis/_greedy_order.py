"""Which channels of a group to keep, chosen by the refit error itself (greedy OBS).

A criterion scores each channel alone (a filter norm, a mean activation). After a
least-squares refit what matters is what the *other* kept channels cannot reconstruct:
two correlated channels each look strong, and one of them can go at almost no cost. This
order removes, one channel at a time, the channel whose removal raises the consumers'
refit error least, given the channels still kept (ThiNet's greedy selection, scored in
closed form as in Optimal Brain Surgeon, one block of patch columns per channel).

The maths, per consumer layer (``_gram.py`` explains ``G = A₁ᵀA₁`` and ``W``, and the
normalisation): with ``H = G_SS⁻¹`` over the columns ``S`` still kept and ``V`` the refit
weights on them (``W`` itself before any removal), removing the block ``B`` raises the
residual energy by ``tr(V_B H_BB⁻¹ V_Bᵀ)``, after which ``V ← V - V_B H_BB⁻¹ H_B·`` and
``H ← H - H_·B H_BB⁻¹ H_B·`` (the rows and columns of ``B`` become 0, so ``H`` keeps its
size). The increases of all consumers, each divided by its output's centred energy and
multiplied by its output weight (as in the sensitivity table), add. Cost per consumer:
``O(C · K² · k)`` for ``C`` channels, ``K`` patch columns and ``k`` columns per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_hwprune.passes.analysis._gram import _JITTER

__all__ = ["Consumer", "greedy_removal"]

Consumer = tuple[np.ndarray, np.ndarray, Sequence[np.ndarray], float]
"""``(gram, weight [out, K + 1], blocks (one array of columns per group channel), scale)``:
``scale`` is the output weight over the centred output energy."""


def greedy_removal(consumers: Sequence[Consumer], size: int) -> np.ndarray:
    """The group's ``size`` channels, the first removed first (see module doc)."""
    states = [_State(*c) for c in consumers]
    alive = np.ones(size, dtype=bool)
    order = []
    for _ in range(size):
        cost = sum(s.increase() for s in states)
        cost = np.where(alive, cost, np.inf)
        pick = int(np.argmin(cost))  # ties: the lowest index, deterministic
        order.append(pick)
        alive[pick] = False
        for s in states:
            s.remove(pick)
    return np.asarray(order, dtype=np.int64)


class _State:
    """One consumer's ``H`` and ``V`` in unit-normalised columns."""

    def __init__(
        self, gram: np.ndarray, weight: np.ndarray, blocks: Sequence[np.ndarray], scale: float
    ) -> None:
        diag = np.diag(gram).copy()
        unit = np.sqrt(np.where(diag > 0, diag, 1.0))
        g = gram / np.outer(unit, unit)
        g[np.diag_indices_from(g)] += _JITTER
        self.h = np.linalg.inv(g)
        self.v = weight * unit  # refit weights in the normalised columns
        self.blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
        self.scale = scale

    def increase(self) -> np.ndarray:
        """Residual energy each kept channel's removal adds now (scaled; removed: 0)."""
        out = np.zeros(len(self.blocks))
        for idx in self._by_width().values():
            cols = np.stack([self.blocks[i] for i in idx])  # [n, width]
            hbb = self.h[cols[:, :, None], cols[:, None, :]]  # [n, width, width]
            vb = np.moveaxis(self.v[:, cols], 0, -1)  # [n, width, out]
            # tr(V_B H_BB⁻¹ V_Bᵀ), every channel of this width at once
            out[idx] = np.einsum("nwo,nwo->n", vb, np.linalg.solve(hbb, vb))
        return self.scale * np.maximum(out, 0.0)

    def _by_width(self) -> dict[int, np.ndarray]:
        """Kept channels by their column count (blocks of one width stack)."""
        widths: dict[int, list[int]] = {}
        for i, cols in enumerate(self.blocks):
            if len(cols):
                widths.setdefault(len(cols), []).append(i)
        return {w: np.asarray(i) for w, i in widths.items()}

    def remove(self, channel: int) -> None:
        cols = self.blocks[channel]
        if len(cols) == 0:
            return
        hbb_inv = np.linalg.pinv(self.h[np.ix_(cols, cols)])
        h_b = self.h[cols, :]
        self.v -= (self.v[:, cols] @ hbb_inv) @ h_b
        self.h -= self.h[:, cols] @ hbb_inv @ h_b
        self.blocks[channel] = np.zeros(0, dtype=np.int64)
