"""Elementwise ops: unary activations, and binary/variadic arithmetic with broadcasting.

Unary ops couple channel c of input and output. Binary ops couple every operand that
carries the full channel axis (a residual Add, the Mul of squeeze-excite); a constant
operand with a per-channel axis (``[1,C,1,1]``, a decomposed BatchNorm) becomes a
parameter space and is sliced with the channels; an operand broadcast over channels
(size 1 on that axis) is not coupled.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnx_hwprune.passes.analysis._context import CoupleContext, const_values, static_shape
from onnx_hwprune.passes.analysis._registry import register
from onnx_hwprune.passes.analysis.handlers._base import Handler, couple_passthrough, used

__all__ = ["UnaryHandler", "PReluHandler", "BroadcastHandler", "UNARY_OPS", "BROADCAST_OPS"]

UNARY_OPS = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Softsign",
    "Mish",
    "ThresholdedRelu",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Clip",
    "Identity",
    "Cast",
    "Dropout",
)
BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean")


@register(*UNARY_OPS)
class UnaryHandler(Handler):
    """One data input (Clip's min/max and Dropout's ratio are scalars), same-shape output.

    Dropout's optional mask output has the data's shape, so it is coupled too.
    """

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        if sy is None:
            return
        for extra in node.outputs[1:]:
            if used(extra):
                sm = ctx.act(extra, node, "act_out", produced=True)
                if sm is not None:
                    ctx.union(sy, sm)


@register("PRelu")
class PReluHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        sy = couple_passthrough(node, ctx, node.inputs[0], node.outputs[0])
        if sy is None:
            return
        slope = node.inputs[1]
        if const_values(slope) is None:
            ctx.freeze_node(node, "slope is not a constant")
            return
        out_rank = len(static_shape(node.outputs[0]) or [])
        ss = ctx.broadcast_param(slope, node, out_rank, ctx.size(sy))
        if ss is not None:
            ctx.union(sy, ss)


@register(*BROADCAST_OPS)
class BroadcastHandler(Handler):
    def couple(self, node: gs.Node, ctx: CoupleContext) -> None:
        out = node.outputs[0]
        shape = static_shape(out)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            ctx.freeze_node(node, f"channel size of {out.name} is unknown")
            return
        sy = ctx.act(out, node, "act_out", produced=True)
        for operand in node.inputs:
            self._couple_operand(node, ctx, operand, sy, len(shape))

    @staticmethod
    def _couple_operand(
        node: gs.Node, ctx: CoupleContext, operand: gs.Tensor, sy: int, out_rank: int
    ) -> None:
        channels = ctx.size(sy)
        if const_values(operand) is not None:
            sp = ctx.broadcast_param(operand, node, out_rank, channels)
            if sp is not None:
                ctx.union(sy, sp)
            return
        shape = static_shape(operand)
        if shape is None:
            ctx.freeze_node(node, f"shape of {operand.name} is unknown")
            return
        axis = len(shape) - out_rank + 1
        if axis < 0 or shape[axis] == 1:
            return  # broadcast over channels: shared by all of them
        if axis != 1:
            ctx.freeze_node(node, f"{operand.name} has its channels on axis {axis}, not 1")
            return
        sx = ctx.act(operand, node, "act_in")
        if sx is not None:
            ctx.union(sy, sx)

    couple_operand = _couple_operand  # shared with QLinearAdd/QLinearMul (quant.py)
