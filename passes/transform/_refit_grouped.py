"""Least-squares refit of any consumer layer, grouped and depthwise convs included.

Numpy only, like ``_lsq.py`` whose :class:`LinearLayer` it reads. A Conv with ``group=g``
is ``g`` independent linear maps: output channel ``o`` (in group ``o // (Cout/g)``) reads
only the ``Cin/g`` input channels of its group. Its refit is therefore ``g`` small ridge
problems, one per group that keeps outputs (a :class:`Block`): the columns are the patch
columns of that group's kept input channels, the targets its kept output channels. A plain
layer (``group=1``, Gemm, MatMul) is the one-block case and gives exactly the equations of
:func:`_lsq.solve_lsq`; a depthwise conv is one block per kept channel (``k*k`` weights
and a bias each), so its memory is ``O(C·k⁴)``, not ``O((C·k²)²)``.

Convention for grouped layers: ``LinearLayer.in_keep`` holds *full* input channel indices
of the layer's input tensor (for ``group=1`` these equal the weight's axis-1 positions),
``weight`` is the ONNX weight ``[Cout, Cin/g, *kernel]``. The pruned model's input tensor
holds the kept channels in that order, so pruned channel ``p`` is original ``in_keep[p]``.

``auto_pad`` (``SAME_UPPER``, ``SAME_LOWER``, ``VALID``) is resolved per input size by
:func:`frontends.onnx._pads.explicit_pads`, the ONNX rule: total pad
``max(0, (ceil(H/s)-1)·s + (k-1)·d + 1 - H)``, the odd pixel at the end for ``SAME_UPPER``
and at the start for ``SAME_LOWER``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_hwprune.passes.transform._lsq import LinearLayer, NormalEquations, solve_lsq

__all__ = [
    "Block",
    "BlockEquations",
    "blocks",
    "grouped_compensated_bias",
    "solve_blocks",
]


@dataclass(frozen=True)
class Block:
    """One group of a layer: which pruned patch columns feed which kept outputs.

    Attributes:
        cols: columns of the pruned model's patch matrix (pruned channel * kernel + offset).
        rows: positions in ``out_keep`` (= pruned output channels) this group produces.
        in_local: the group's kept input channels as weight axis-1 positions.
    """

    cols: np.ndarray
    rows: np.ndarray
    in_local: np.ndarray


def blocks(layer: LinearLayer) -> list[Block]:
    """The layer's groups that keep at least one output, in output order."""
    g, k = layer.group, layer.kernel_size
    per_in = layer.weight.shape[1]
    per_out = layer.weight.shape[0] // g
    in_group, out_group = layer.in_keep // per_in, layer.out_keep // per_out
    out = []
    for j in range(g):
        pin, pout = np.nonzero(in_group == j)[0], np.nonzero(out_group == j)[0]
        if len(pout):
            cols = (pin[:, None] * k + np.arange(k)[None, :]).reshape(-1)
            out.append(Block(cols, pout, layer.in_keep[pin] % per_in))
    return out


def _block_weight(layer: LinearLayer, block: Block) -> np.ndarray:
    """Original weight of a block, ``[rows, cols]`` in float64."""
    w = layer.weight[layer.out_keep[block.rows]][:, block.in_local]
    return w.reshape(len(block.rows), -1).astype(np.float64)


class BlockEquations:
    """Streamed normal equations, one :class:`NormalEquations` per block.

    ``add(a, t)`` takes the full pruned patch rows ``a`` and the target rows ``t`` of the
    kept outputs (columns in ``out_keep`` order); memory does not grow with rows.
    """

    def __init__(self, layer: LinearLayer) -> None:
        self.blocks = blocks(layer)
        self.equations = [NormalEquations(len(b.cols), len(b.rows)) for b in self.blocks]

    @property
    def rows(self) -> int:
        return self.equations[0].rows if self.equations else 0

    def add(self, a: np.ndarray, t: np.ndarray) -> None:
        for block, eq in zip(self.blocks, self.equations, strict=True):
            eq.add(a[:, block.cols], t[:, block.rows])


def solve_blocks(
    eqs: BlockEquations, layer: LinearLayer, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fit of every block; returns the pruned ``(weight [out_kept, cols per group],
    bias [out_kept])`` (reshape the weight to the node's kernel layout to write it)."""
    per_group = len(eqs.blocks[0].cols) if eqs.blocks else 0
    weight = np.zeros((len(layer.out_keep), per_group))
    bias = layer.bias[layer.out_keep].astype(np.float64).copy()
    for block, eq in zip(eqs.blocks, eqs.equations, strict=True):
        if len(block.cols) != per_group:
            raise ValueError("groups keep different numbers of input channels")
        w, b = solve_lsq(eq, _block_weight(layer, block), bias[block.rows], ridge)
        weight[block.rows], bias[block.rows] = w, b
    return weight, bias


def grouped_compensated_bias(layer: LinearLayer, column_means: np.ndarray) -> np.ndarray:
    """Bias compensation per group: each kept output absorbs the mean contribution of the
    removed input channels *of its own group*.

    Args:
        column_means: mean of every patch column of the *original* input (all ``Cin``
            channels, ``Cin * kernel`` columns, channel-major).
    """
    k, per_in = layer.kernel_size, layer.weight.shape[1]
    per_out = layer.weight.shape[0] // layer.group
    means = column_means.reshape(-1, k)
    bias = layer.bias[layer.out_keep].astype(np.float64).copy()
    for block in blocks(layer):
        j = int(layer.out_keep[block.rows[0]] // per_out)
        removed = np.setdiff1d(np.arange(per_in), block.in_local)
        if not len(removed):
            continue
        w = layer.weight[layer.out_keep[block.rows]][:, removed].reshape(len(block.rows), -1)
        bias[block.rows] += w.astype(np.float64) @ means[j * per_in + removed].reshape(-1)
    return bias
