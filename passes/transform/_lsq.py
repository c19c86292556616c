"""The maths of recovery without training: least-squares refit, bias compensation,
BatchNorm refresh.

Numpy only: the statistics come in as arrays (streamed by :class:`recover.RecoverPass`
from ``PassContext.tensors``) and the new parameters go out as arrays (written into the
IR by ``_recover_ir.py``).

A consumer layer (Conv, Gemm, MatMul) is seen as a linear map from *patch rows* to
*output rows*: for a Conv, one row per (sample, output position) holding the
``C_in * kh * kw`` input values under the kernel (im2col, zero padding included); for a
dense layer, one row per sample. Its weight is normalised to ``[out, in, *kernel]`` (Gemm
``alpha`` and transposes folded in), its bias to ``[out]``.

Rules:

- **LSQ** (:func:`solve_lsq`): with ``A`` the pruned model's patch rows of the *kept* input
  channels plus a column of ones, and ``T`` the original model's output rows of the kept
  output channels, solve the ridge normal equations
  ``(AᵀA + λD) Θ = AᵀT + λD Θ0``. ``Θ0`` holds the original weights (kept rows and
  columns) and bias; ``D`` is the identity on weight coordinates and 0 on the intercept,
  so the ridge pulls towards the original weights, never towards zero, and leaves the
  bias free. ``λ = ridge * mean(diag(AᵀA))`` makes ``ridge`` scale-free. Consequence:
  when an exact fit exists (removed channels constant or linear combinations of kept
  ones on the data, and no border effects), it is the unique minimiser for any ridge.
- **Bias compensation** (:func:`compensated_bias`): ``b' = b + W[:, removed] · m[removed]``
  with ``m`` the mean of each patch column of the *original* input (per input channel and
  kernel offset, over samples and output positions, padding zeros included). This is the
  best constant for fixed kept weights in the mean-squared sense. It is exact when the
  removed channels are constant on the data and every patch sees them unpadded: Gemm,
  MatMul, 1x1 convs without padding, and kxk convs with ``pads == 0``. For padded kxk
  convs the border positions see zeros, so the constant is exact in the interior only.
- **BatchNorm refresh** (:func:`refreshed_batchnorm`): for a BatchNormalization after a
  changed layer, new running mean/var so that, on the calibration data, each channel's
  normalised output has the same mean and variance as in the original model.

Grouped and depthwise convs (``group > 1``) are refitted group by group
(``_refit_grouped.py``); ``auto_pad`` is resolved per input size
(``frontends/onnx/_pads.py``). Convs must be 2-D.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from onnx_hwprune.frontends.onnx._pads import explicit_pads

__all__ = [
    "LinearLayer",
    "NormalEquations",
    "compensated_bias",
    "layer_is_refittable",
    "output_rows",
    "patch_column_sums",
    "patch_rows",
    "refreshed_batchnorm",
    "row_count",
    "solve_lsq",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearLayer:
    """A consumer layer, normalised (see module docstring).

    Attributes:
        op: ``Conv``, ``Gemm`` or ``MatMul``.
        weight: original weight, ``[out, in, *kernel]`` (dense layers: ``[out, in]``).
        bias: original bias ``[out]`` (zeros when the layer has none).
        in_keep: original input positions the pruned layer keeps (sorted).
        out_keep: original output positions the pruned layer keeps (sorted).
        pads: Conv begin/end pads ``(top, left, bottom, right)``; strides, dilations.
        group: Conv ``group`` attribute.
    """

    op: str
    weight: np.ndarray
    bias: np.ndarray
    in_keep: np.ndarray
    out_keep: np.ndarray
    pads: tuple[int, ...] = (0, 0, 0, 0)
    strides: tuple[int, ...] = (1, 1)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    auto_pad: str = "NOTSET"  # resolved against each input's size (see frontends/onnx/_pads.py)

    @property
    def is_conv(self) -> bool:
        return self.op == "Conv"

    @property
    def kernel_size(self) -> int:
        return int(np.prod(self.weight.shape[2:], dtype=np.int64))

    def kept_columns(self) -> np.ndarray:
        """Patch columns (``in * kernel`` flattened, C order) of the kept input channels."""
        k = self.kernel_size
        return (self.in_keep[:, None] * k + np.arange(k)[None, :]).reshape(-1)

    def removed_columns(self) -> np.ndarray:
        mask = np.ones(self.weight.shape[1] * self.kernel_size, dtype=bool)
        mask[self.kept_columns()] = False
        return np.nonzero(mask)[0]

    def flat_weight(self) -> np.ndarray:
        """``[out, in * kernel]`` in float64."""
        return self.weight.reshape(self.weight.shape[0], -1).astype(np.float64)


def layer_is_refittable(layer: LinearLayer) -> bool:
    """2-D convs (grouped and depthwise ones per group, ``_refit_grouped.py``) and dense
    layers."""
    if layer.is_conv:
        return layer.weight.ndim == 4
    return layer.weight.ndim == 2


def _windows(layer: LinearLayer, x: np.ndarray) -> np.ndarray:
    """A strided view ``[N, C, Ho, Wo, kh, kw]`` of the zero-padded input (no copy of x's
    windows is made until rows are picked)."""
    kh, kw = layer.weight.shape[2:]
    auto = explicit_pads(layer.auto_pad, x.shape[2:], (kh, kw), layer.strides, layer.dilations)
    top, left, bottom, right = auto or layer.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    dh, dw = layer.dilations
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    view = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    sh, sw = layer.strides
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def patch_rows(layer: LinearLayer, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Patch rows of input ``x`` (float64), optionally only the row indices ``rows``.

    Conv rows are ordered (sample, out y, out x); dense rows are the input reshaped to
    ``[-1, in]`` (MatMul over batched inputs treats every leading index as a sample).
    """
    if not layer.is_conv:
        flat = x.reshape(-1, x.shape[-1])
        return (flat if rows is None else flat[rows]).astype(np.float64)
    view = _windows(layer, x)
    n, c, ho, wo = view.shape[:4]
    if rows is None:
        rows = np.arange(n * ho * wo)
    i, rem = np.divmod(rows, ho * wo)
    yy, xx = np.divmod(rem, wo)
    return view[i, :, yy, xx].reshape(len(rows), -1).astype(np.float64)


def row_count(layer: LinearLayer, x: np.ndarray) -> int:
    if not layer.is_conv:
        return int(np.prod(x.shape[:-1], dtype=np.int64))
    view = _windows(layer, x)
    return int(np.prod(view.shape[:1] + view.shape[2:4], dtype=np.int64))


def output_rows(layer: LinearLayer, y: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Output rows ``[P, out]`` (float64) in the same row order as :func:`patch_rows`."""
    flat = (
        np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        if layer.is_conv
        else y.reshape(-1, y.shape[-1])
    )
    return (flat if rows is None else flat[rows]).astype(np.float64)


def patch_column_sums(layer: LinearLayer, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of every patch column over all rows, and the row count (for exact means)."""
    if not layer.is_conv:
        return x.reshape(-1, x.shape[-1]).sum(axis=0, dtype=np.float64), row_count(layer, x)
    view = _windows(layer, x)
    sums = view.sum(axis=(0, 2, 3), dtype=np.float64)  # [C, kh, kw]
    return sums.reshape(-1), int(view.shape[0] * view.shape[2] * view.shape[3])


class NormalEquations:
    """Streaming ``AᵀA`` and ``AᵀT`` with an intercept column appended to ``A``.

    Memory is ``O(K²+K·M)`` for ``K`` patch columns and ``M`` outputs, whatever the
    number of rows added.
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        self.gram = np.zeros((n_in + 1, n_in + 1))
        self.cross = np.zeros((n_in + 1, n_out))
        self.rows = 0

    def add(self, a: np.ndarray, t: np.ndarray) -> None:
        a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1)
        self.gram += a1.T @ a1
        self.cross += a1.T @ t
        self.rows += len(a)


def solve_lsq(
    eq: NormalEquations, w0: np.ndarray, b0: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge LSQ towards ``(w0 [out, K], b0 [out])``; returns ``(w [out, K], b [out])``.

    See the module docstring for the equations. With ``ridge == 0`` a singular system is
    solved in the least-norm sense (``lstsq``).
    """
    k = w0.shape[1]
    theta0 = np.concatenate([w0.T, b0[None, :]], axis=0)
    diag = np.diag(eq.gram)[:k]
    lam = ridge * float(diag.mean()) if k and diag.mean() > 0 else ridge
    reg = np.diag(np.r_[np.full(k, lam), 0.0])
    lhs, rhs = eq.gram + reg, eq.cross + reg @ theta0
    try:
        theta = np.linalg.solve(lhs, rhs) if ridge > 0 else np.linalg.lstsq(lhs, rhs)[0]
    except np.linalg.LinAlgError:
        log.warning("singular normal equations; using the least-norm solution")
        theta = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return theta[:k].T, theta[k]


def compensated_bias(layer: LinearLayer, column_means: np.ndarray) -> np.ndarray:
    """Kept outputs' bias plus the mean contribution of the removed input columns."""
    w = layer.flat_weight()[layer.out_keep]
    removed = layer.removed_columns()
    return layer.bias[layer.out_keep].astype(np.float64) + w[:, removed] @ column_means[removed]


def refreshed_batchnorm(
    original: tuple[np.ndarray, np.ndarray],
    pruned: tuple[np.ndarray, np.ndarray],
    running: tuple[np.ndarray, np.ndarray],
    gamma: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New ``(running_mean, running_var, gamma)`` for a BN whose input changed.

    Args:
        original: per-channel (mean, var) of the BN input in the original model.
        pruned: the same in the pruned model (same channels).
        running: the BN's current (running_mean, running_var).
        gamma: the BN scale; only changed when the needed variance would be negative
            (then var is clamped to 0 and gamma absorbs the rest, same output).
        epsilon: the BN's epsilon.

    Rule: with ``s = sqrt(var + eps)``, the original normalised output has mean
    ``(μ - rm) / s`` and std ``σ / s``; the new ``s' = σ' s / σ`` and
    ``rm' = μ' - (μ - rm) s' / s`` give the pruned output the same two moments. A channel
    with zero variance on either side keeps ``s`` and only has its mean matched.
    """
    (mu, var), (mu_p, var_p), (rm, rv) = original, pruned, running
    s = np.sqrt(rv.astype(np.float64) + epsilon)
    sigma, sigma_p = np.sqrt(np.maximum(var, 0)), np.sqrt(np.maximum(var_p, 0))
    both = (sigma > 0) & (sigma_p > 0)
    s_new = np.where(both, sigma_p * s / np.where(both, sigma, 1.0), s)
    rm_new = mu_p - (mu - rm) * s_new / s
    rv_new = s_new**2 - epsilon
    gamma_new = gamma.astype(np.float64).copy()
    clamp = rv_new < 0
    gamma_new[clamp] *= np.sqrt(epsilon) / s_new[clamp]
    rv_new[clamp] = 0.0
    return rm_new, rv_new, gamma_new
