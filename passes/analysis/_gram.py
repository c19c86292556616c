"""The maths of measured sensitivity: streamed Gram matrices of a layer's input patches,
and the refit error of every nested kept subset from one Cholesky factorisation.

Numpy only. A consumer layer (Conv with ``group == 1``, Gemm, MatMul) is the
:class:`recover.LinearLayer` linear map from patch rows ``A`` to output rows
``Y = A Wᵀ + b`` (``recover.py`` explains the patch rows). With ``A₁ = [A, 1]`` and
``G = A₁ᵀA₁`` over calibration rows, the least-squares refit of ``Y`` from a subset ``S``
of the columns (plus the intercept) leaves the residual energy

    ``‖Y‖² - ‖P_S Y‖²``, with ``P_S`` the projection onto the columns ``S``.

Order the columns ``c₁, c₂, ...`` so that every subset the planner may keep is a prefix
(intercept, the columns of other groups, then the group's channels strongest first). With
``G = L Lᵀ`` (Cholesky, in that order), ``Z = Lᵀ W₁ᵀ`` has rows whose squared norms are
the energy each column adds to the projection (Gram-Schmidt in the metric ``G``), so the
residual of *every* prefix is a suffix sum of ``‖Z_i‖²``: one ``O(K³/3)`` factorisation
per layer and group gives the refit error at every kept count, not only at stair levels.
Neither the model nor the refit is re-run per count.

Columns that are zero on the data (a dead channel, padding-only columns) are dropped:
they add exactly nothing, so the error of removing them is exactly 0. A small jitter
(``1e-10`` on the unit-normalised diagonal) keeps the factorisation defined when columns
are dependent (a constant channel next to the intercept); the error it introduces is of
that order, relative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.transform.recover import LinearLayer, patch_rows, row_count

__all__ = ["GramAccumulator", "centred_energy", "linear_layer", "prefix_residuals"]

_JITTER = 1e-10


def linear_layer(node: gs.Node) -> LinearLayer | None:
    """The node as an unpruned :class:`LinearLayer`, or None where the sensitivity maths
    does not apply (grouped convs, non-2-D convs, ``transA``, a non-constant weight)."""
    if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    w_t = node.inputs[1]
    if not isinstance(w_t, gs.Constant):
        return None
    w = np.asarray(w_t.values, dtype=np.float64)
    if node.op == "Conv":
        if w.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
            return None
        weight = w
    elif node.op == "Gemm":
        if int(node.attrs.get("transA", 0)) or w.ndim != 2:
            return None
        weight = float(node.attrs.get("alpha", 1.0)) * (w if node.attrs.get("transB", 0) else w.T)
    else:
        if w.ndim != 2:
            return None
        weight = w.T
    bias = _bias(node, weight.shape[0])
    attrs, conv = node.attrs, node.op == "Conv"
    auto_pad = attrs.get("auto_pad", "NOTSET")
    return LinearLayer(
        node.op, weight, bias, np.arange(weight.shape[1]), np.arange(weight.shape[0]),
        tuple(attrs.get("pads", (0, 0, 0, 0))) if conv else (),
        tuple(attrs.get("strides", (1, 1))) if conv else (),
        tuple(attrs.get("dilations", (1, 1))) if conv else (),
        1, auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
    )  # fmt: skip


def _bias(node: gs.Node, n_out: int) -> np.ndarray:
    if node.op == "MatMul" or len(node.inputs) < 3 or not isinstance(node.inputs[2], gs.Constant):
        return np.zeros(n_out)
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    values = np.asarray(node.inputs[2].values, dtype=np.float64).reshape(-1)
    return beta * np.broadcast_to(values, (n_out,))


class GramAccumulator:
    """Streamed ``A₁ᵀA₁`` of one layer's input patches (intercept column last).

    At most ``rows_per_sample`` patch rows per sample of a batch (so the total does not
    depend on how the data is batched), drawn without replacement by a generator seeded
    with ``seed``: memory and time are ``O(K²)`` and ``O(rows·K²)``.
    """

    def __init__(self, layer: LinearLayer, rows_per_sample: float, seed: int = 0) -> None:
        self.layer, self.per_sample = layer, rows_per_sample
        self.rng = np.random.default_rng(seed)
        k = layer.weight.shape[1] * layer.kernel_size
        self.gram = np.zeros((k + 1, k + 1))
        self.rows = 0

    def add(self, x: np.ndarray) -> None:
        total = row_count(self.layer, x)
        want = max(1, int(np.ceil(self.per_sample * x.shape[0])))
        pick = None
        if total > want:
            pick = np.sort(self.rng.choice(total, want, replace=False))
        a = patch_rows(self.layer, x, pick)
        a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1)
        self.gram += a1.T @ a1
        self.rows += len(a)


def prefix_residuals(
    gram: np.ndarray, weight: np.ndarray, fixed: np.ndarray, blocks: Sequence[np.ndarray]
) -> tuple[np.ndarray, float]:
    """Refit residual energy after keeping the intercept, ``fixed`` and the first ``c``
    ``blocks``, for every ``c``; and the output's centred energy (intercept only).

    Args:
        gram: ``A₁ᵀA₁``, ``K + 1`` square, the intercept last.
        weight: ``[out, K + 1]``: the layer's flat weight with its bias as the last column.
        fixed: patch columns that are always kept (channels of other groups).
        blocks: the group's channels in keep order, each its patch columns.

    Returns:
        ``(res [len(blocks) + 1], centred)``: ``res[c]`` with ``c`` blocks kept.
    """
    intercept = gram.shape[0] - 1
    order = [np.array([intercept]), np.asarray(fixed, dtype=np.int64), *map(np.asarray, blocks)]
    diag = np.diag(gram)
    live = [cols[diag[cols] > 0] for cols in order]
    ends = np.cumsum([len(c) for c in live])
    perm = np.concatenate(live).astype(np.int64)
    scale = np.sqrt(diag[perm])
    g = gram[np.ix_(perm, perm)] / np.outer(scale, scale)
    g[np.diag_indices_from(g)] += _JITTER
    lower = np.linalg.cholesky(g)
    z = lower.T @ (weight[:, perm] * scale).T
    energy = np.square(z).sum(axis=1)
    suffix = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    res = suffix[ends[1:]]  # after fixed, then after each block
    return np.maximum(res, 0.0), float(max(suffix[ends[0]], 0.0))


def centred_energy(gram: np.ndarray, weight: np.ndarray) -> float:
    """``‖Y - mean(Y)‖²`` of the layer's output (the ``centred`` :func:`prefix_residuals`
    returns, there as a by-product of a factorisation), in closed form from the Gram: per
    output ``w G_AA wᵀ - (w·s)² / N`` with ``s`` the column sums and ``N`` the rows; the
    bias cancels. ``O(out·K²)``, no factorisation."""
    w, rows, sums = weight[:, :-1], gram[-1, -1], gram[:-1, -1]
    if rows <= 0:
        return 0.0
    energy = np.einsum("ok,ok->", w @ gram[:-1, :-1], w) - np.sum(np.square(w @ sums)) / rows
    return float(max(energy, 0.0))
