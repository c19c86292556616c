"""What op handlers see: a narrow view of the coupling table and, later, of the removal.

Handlers get these contexts instead of the raw table so that every declaration goes
through one place that checks sizes and records who declared what.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._coupling import CouplingTable
from onnx_hwprune.passes.analysis._dequant import dequantize, dequantized_source, per_axis_params

__all__ = ["CoupleContext", "RewriteContext", "const_shape", "const_values", "static_shape"]


def const_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant input, or None when the tensor is computed at run time.

    A quantized weight (``DequantizeLinear`` of constants, see :mod:`._dequant`) is a
    constant: its value is the dequantized one.
    """
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    source = dequantized_source(tensor)
    return dequantize(source) if source is not None else None


def const_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of a constant (quantized or not) without computing its values."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    source = dequantized_source(tensor)
    return tuple(int(d) for d in source.inputs[0].shape) if source is not None else None


def static_shape(tensor: gs.Tensor) -> list[int | str] | None:
    shape = tensor.shape
    return list(shape) if shape is not None else None


class CoupleContext:
    """Declarations of spaces, couplings and freezes for the analysis of one graph."""

    def __init__(self, table: CouplingTable, opset: int) -> None:
        self.table = table
        self.opset = opset
        self.frozen_tensors: dict[str, list[str]] = {}

    def act(
        self, tensor: gs.Tensor, node: gs.Node, role: str, produced: bool = False
    ) -> int | None:
        """The channel space (axis 1) of an activation tensor, or None after freezing.

        Args:
            produced: the node computes this tensor and defines its channels (its
                output); a space that no producer defines is frozen.
        """
        shape = static_shape(tensor)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            self.freeze_node(node, f"channel size of {tensor.name} is unknown (shape {shape})")
            return None
        sid = self.table.space(tensor.name, 1, shape[1], is_param=False)
        self.table.declare(sid, node.name, role, produced)
        return sid

    def param(self, tensor: gs.Tensor, node: gs.Node, role: str, axis: int) -> int | None:
        """The space of axis ``axis`` of a constant input; None if it is not a constant.

        For a quantized constant the integer tensor (role ``<role>_q``) and per-channel
        scales and zero points along ``axis`` (role ``quant_param``) join the space.
        """
        shape = const_shape(tensor)
        if shape is None:
            return None
        sid = self.table.space(tensor.name, axis, shape[axis], is_param=True)
        self.table.declare(sid, node.name, role)
        source = dequantized_source(tensor)
        if source is not None:
            self._couple_dequantized(source, sid, role, axis)
        return sid

    def _couple_dequantized(self, dq: gs.Node, sid: int, role: str, axis: int) -> None:
        size = self.size(sid)
        sx = self.table.space(dq.inputs[0].name, axis, size, is_param=True)
        self.table.declare(sx, dq.name, f"{role}_q")
        self.union(sid, sx)
        for t in per_axis_params(dq, axis):
            sp = self.table.space(t.name, 0, int(np.prod(t.shape)), is_param=True)
            self.table.declare(sp, dq.name, "quant_param")
            self.union(sid, sp)

    def broadcast_param(
        self, tensor: gs.Tensor, node: gs.Node, out_rank: int, channels: int
    ) -> int | None:
        """The channel space of a constant broadcast against a rank-``out_rank`` tensor.

        Numpy broadcasting aligns shapes on the right, so output axis 1 is constant axis
        ``rank - out_rank + 1``. A constant of size 1 there (or without that axis) is
        shared by all channels and is no space at all.
        """
        values = const_values(tensor)
        if values is None:
            return None
        axis = values.ndim - out_rank + 1
        if axis < 0 or values.shape[axis] == 1:
            return None
        if values.shape[axis] != channels:
            self.freeze_node(
                node, f"{tensor.name} broadcasts {values.shape[axis]} onto {channels} channels"
            )
            return None
        return self.param(tensor, node, "const", axis)

    def union(
        self, a: int, b: int, a_idx: np.ndarray | None = None, b_idx: np.ndarray | None = None
    ) -> None:
        self.table.union(a, b, a_idx, b_idx)

    def size(self, sid: int) -> int:
        return self.table.spaces[sid].size

    def freeze_node(self, node: gs.Node, reason: str) -> None:
        """Freeze every channel space on the node's inputs and outputs."""
        full = f"{node.op} {node.name}: {reason}"
        for tensor in [*node.inputs, *node.outputs]:
            if tensor.name:
                self.freeze_tensor(tensor, full)

    def freeze_tensor(self, tensor: gs.Tensor, reason: str) -> None:
        reasons = self.frozen_tensors.setdefault(tensor.name, [])
        if reason not in reasons:
            reasons.append(reason)


class RewriteContext:
    """What a handler needs to fix a node after channels were removed.

    Attributes:
        kept: for each pruned space ``(tensor, axis)``, the sorted positions it keeps.
        sizes: the original size of every space ``(tensor, axis)`` the analysis saw.
    """

    def __init__(
        self, kept: Mapping[tuple[str, int], np.ndarray], sizes: Mapping[tuple[str, int], int]
    ) -> None:
        self.kept = kept
        self.sizes = sizes

    def kept_of(self, tensor: gs.Tensor, axis: int = 1) -> np.ndarray | None:
        """Kept positions of a space, or None when the space is unchanged."""
        return self.kept.get((tensor.name, axis))

    def old_size(self, tensor: gs.Tensor, axis: int = 1) -> int | None:
        return self.sizes.get((tensor.name, axis))

    def new_size(self, tensor: gs.Tensor, axis: int = 1) -> int | None:
        kept = self.kept_of(tensor, axis)
        return len(kept) if kept is not None else self.old_size(tensor, axis)

    def changed(self, tensor: gs.Tensor, axis: int = 1) -> bool:
        return (tensor.name, axis) in self.kept

    @staticmethod
    def set_const_input(node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give ``node`` a private constant: shape constants may be shared between nodes
        whose channel counts change differently, so they are never edited in place."""
        node.inputs[index] = gs.Constant(f"{node.name}/hwprune_in{index}", np.asarray(values))
