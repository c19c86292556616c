"""Layer signatures: everything about a prunable layer's latency except its channel counts.

Two layers with equal :class:`LayerSignature` cost the same at the same (in, out) channel
counts on a given device, so they share measurements (LOCP's "latency sharing"): ResNet-50
has 53 convolutions but only about 20 signatures.

Example: the second 3x3 conv of ResNet-50's first stage, followed by BatchNorm and Relu,
gives ``LayerSignature(op="Conv", kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
dilations=(1, 1), group_kind="dense", input_hw=(56, 56), bias=True, activation="Relu")``
with ``in_channels=64, out_channels=64``; the BatchNorm is folded into a bias, as every
deployment runtime does.

Channel axes by ``group_kind``:
- ``dense``: in and out vary independently.
- ``depthwise``: ``group == in_channels``; out = in * ``multiplier``; one tied axis.
- ``grouped``: ``groups`` groups (1 < groups < in), each of ``in_per_group`` in and
  ``out_per_group`` out channels at full size. Pruning keeps the group count and narrows
  every group (the channel-group analysis couples position b of every group), so in and
  out stay multiples of ``groups``. Older profiles (``groups`` = 0) took the group count
  from ``in_per_group``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass, field

import onnx_graphsurgeon as gs

__all__ = [
    "LAYER_OPS",
    "Layer",
    "LayerSignature",
    "clamps_at_zero",
    "extract_layers",
    "int8_layout",
    "layer_shapes",
]

logger = logging.getLogger(__name__)

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
"""The layer ops: what the cost models price and the planners count channels of."""
# Ops that a deployment runtime fuses into the preceding conv/gemm (as the epilogue).
_FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh")
# Ops that pass a tensor to a graph output without changing its channel count.
_PASS_THROUGH = ("Relu", "Clip", "Softmax", "Flatten", "Reshape", "Sigmoid", "Identity")


@dataclass(frozen=True)
class LayerSignature:
    """Hashable, JSON-able description of a layer minus its channel counts.

    Attributes:
        op: ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.
        kernel, strides, pads, dilations: as in ONNX (pads begin..., end...); empty for
            Gemm/MatMul.
        group_kind: ``dense`` | ``depthwise`` | ``grouped``.
        multiplier: depthwise channel multiplier (out = in * multiplier).
        in_per_group, out_per_group: channels per group for ``grouped``.
        input_hw: spatial input size (H, W) for convs; extra leading dims for MatMul.
        batch: batch size.
        dtype: element type name, e.g. ``float32``.
        bias: a bias (or folded BatchNorm) is added.
        activation: fused activation op type or ``""``; ``activation_params`` its
            attributes (Clip min/max, LeakyRelu alpha...).
        output_padding: ConvTranspose only.
        groups: the group count of a ``grouped`` conv (0 elsewhere).
        layout: ``nhwc`` for an int8 conv that onnxruntime runs as its channels-last
            QLinearConv (see :func:`int8_layout`), ``""`` elsewhere. Its micro-benchmark
            is that bare kernel; the int8 profiles stored before it was set timed a QDQ
            model with its own quantize, transposes and dequantize, which the network
            pays once, not per layer, so they stay apart under their old keys.
    """

    op: str
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group_kind: str = "dense"
    multiplier: int = 1
    in_per_group: int = 0
    out_per_group: int = 0
    input_hw: tuple[int, ...] = ()
    batch: int = 1
    dtype: str = "float32"
    bias: bool = False
    activation: str = ""
    activation_params: tuple[float, ...] = ()
    output_padding: tuple[int, ...] = field(default=())
    groups: int = 0
    layout: str = ""

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists); ``groups`` and ``layout`` only
        where set, so the keys of every other signature (and the profiles stored under
        them) stay valid."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if k not in ("groups", "layout") or v
        }

    @classmethod
    def from_dict(cls, data: dict) -> LayerSignature:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def key(self) -> str:
        """Canonical JSON text: the database key and the sharing key."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """One human line, e.g. ``Conv 3x3 s1 dense 56x56 +Relu``."""
        k = "x".join(map(str, self.kernel)) or "fc"
        s = "s" + "x".join(map(str, sorted(set(self.strides)))) if self.strides else ""
        hw = "x".join(map(str, self.input_hw))
        act = f" +{self.activation}" if self.activation else ""
        return f"{self.op} {k} {s} {self.group_kind} {hw} b{self.batch}{act}".replace("  ", " ")

    def axes(self) -> tuple[str, ...]:
        """Channel axes that vary independently: ``("in", "out")`` or ``("ch",)``."""
        return ("in", "out") if self.group_kind == "dense" else ("ch",)


@dataclass(frozen=True)
class Layer:
    """One prunable layer of a graph.

    Attributes:
        node: the node's name in the graph.
        signature: its :class:`LayerSignature`.
        in_channels, out_channels: its channel counts in the unpruned graph.
        in_prunable, out_prunable: False where the axis touches a graph input or output
            (a conservative rule until the channel-group analysis decides).
    """

    node: str
    signature: LayerSignature
    in_channels: int
    out_channels: int
    in_prunable: bool = True
    out_prunable: bool = True


def extract_layers(graph: gs.Graph) -> list[Layer]:
    """Prunable layers of ``graph`` (shapes must be inferred), in graph order.

    Conv (dense, grouped, depthwise), ConvTranspose, and Gemm/MatMul whose weight is a
    constant. Layers whose input shape is unknown are skipped with a log line.
    """
    graph_inputs = {t.name for t in graph.inputs}
    graph_outputs = {t.name for t in graph.outputs}
    layers = []
    for node in graph.nodes:
        layer = _layer_of(node, graph_inputs, graph_outputs)
        if layer is not None:
            layers.append(layer)
    return layers


def _layer_of(node: gs.Node, graph_inputs: set[str], graph_outputs: set[str]) -> Layer | None:
    if node.op not in LAYER_OPS:
        return None
    if len(node.inputs) < 2 or _weight(node) is None:
        return None
    x = node.inputs[0]
    if x.shape is None or any(not isinstance(d, int) for d in x.shape):
        logger.info("skipping %s: input shape unknown (%s)", node.name, x.shape)
        return None
    if node.op in ("Conv", "ConvTranspose"):
        sig, cin, cout = _conv_signature(node)
    else:
        sig, cin, cout = _matmul_signature(node)
        if sig is None:
            return None
    last, sig = _fused_epilogue(node, sig)
    sig = _replace(sig, layout=int8_layout(sig))
    return Layer(
        node=node.name,
        signature=sig,
        in_channels=cin,
        out_channels=cout,
        in_prunable=x.name not in graph_inputs,
        out_prunable=not _reaches_output(last, graph_outputs),
    )


class _WeightInfo:
    """Shape and element type of a layer's weight (``.shape``/``.ndim``/``.dtype``)."""

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        self.shape, self.ndim, self.dtype = shape, len(shape), dtype


def _weight(node: gs.Node) -> _WeightInfo | None:
    """The weight of ``node``: a constant, or a quantized constant behind a
    DequantizeLinear (QDQ models). A quantized weight's dtype is its integer type
    (``int8``), so int8 layers get their own signatures and staircases."""
    w = node.inputs[1]
    if isinstance(w, gs.Constant):
        return _WeightInfo(tuple(int(d) for d in w.shape), str(w.dtype))
    dq = w.inputs[0] if len(w.inputs) == 1 else None
    if dq is None or dq.op != "DequantizeLinear" or not isinstance(dq.inputs[0], gs.Constant):
        return None
    q = dq.inputs[0]
    return _WeightInfo(tuple(int(d) for d in q.shape), str(q.dtype))


def _conv_signature(node: gs.Node) -> tuple[LayerSignature, int, int]:
    x, w = node.inputs[0], _weight(node)
    nd = w.ndim - 2
    group = int(node.attrs.get("group", 1))
    cin = int(x.shape[1])
    cout = int(w.shape[0]) if node.op == "Conv" else int(w.shape[1]) * group
    kind, mult, ipg, opg, groups = "dense", 1, 0, 0, 0
    if group > 1 and group == cin:
        kind, mult = "depthwise", max(1, cout // cin)
    elif group > 1:
        kind, ipg, opg, groups = "grouped", cin // group, cout // group, group
    sig = LayerSignature(
        op=node.op,
        kernel=tuple(int(k) for k in w.shape[2:]),
        strides=tuple(node.attrs.get("strides", [1] * nd)),
        pads=tuple(node.attrs.get("pads", [0] * 2 * nd)),
        dilations=tuple(node.attrs.get("dilations", [1] * nd)),
        group_kind=kind,
        multiplier=mult,
        in_per_group=ipg,
        out_per_group=opg,
        input_hw=tuple(int(d) for d in x.shape[2:]),
        batch=int(x.shape[0]),
        dtype=str(w.dtype),
        bias=len(node.inputs) > 2,
        output_padding=tuple(node.attrs.get("output_padding", ())),
        groups=groups,
    )
    return sig, cin, cout


def _matmul_signature(node: gs.Node):
    x, w = node.inputs[0], _weight(node)
    if w.ndim != 2:
        return None, 0, 0
    trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0)) == 1
    cin, cout = (w.shape[1], w.shape[0]) if trans_b else (w.shape[0], w.shape[1])
    lead = tuple(int(d) for d in x.shape[:-1])
    sig = LayerSignature(
        op=node.op,
        input_hw=lead[1:],
        batch=lead[0] if lead else 1,
        dtype=str(w.dtype),
        bias=node.op == "Gemm" and len(node.inputs) > 2,
    )
    return sig, int(cin), int(cout)


def _fused_epilogue(node: gs.Node, sig: LayerSignature) -> tuple[gs.Node, LayerSignature]:
    """Fold a following BatchNormalization/Add-bias and activation into the signature."""
    last = node
    users = _sole_users(last)
    if users and users[0].op == "BatchNormalization":
        last, sig = users[0], _replace(sig, bias=True)
        users = _sole_users(last)
    if users and users[0].op in _FUSED_ACTIVATIONS:
        act = users[0]
        params = tuple(
            float(v.values) for v in act.inputs[1:] if isinstance(v, gs.Constant)
        ) + tuple(float(v) for k, v in sorted(act.attrs.items()) if isinstance(v, float))
        last, sig = act, _replace(sig, activation=act.op, activation_params=params)
    return last, sig


def int8_layout(sig: LayerSignature) -> str:
    """``nhwc`` where onnxruntime's CPU provider runs the layer as its channels-last int8
    QLinearConv: an int8 Conv whose activation is absent or clamps at zero, which the
    output QuantizeLinear absorbs (zero point 0). The network transposes to channels-last
    once at its input and keeps int8 between layers; other activations keep a float
    kernel between a dequantize and a quantize."""
    if sig.op != "Conv" or sig.dtype not in ("int8", "uint8"):
        return ""
    return "nhwc" if clamps_at_zero(sig) or not sig.activation else ""


def clamps_at_zero(sig: LayerSignature) -> bool:
    """Relu, or Clip from 0, after the layer: calibration gives the output quantizer zero
    point 0 there, which lets onnxruntime drop the activation into its int8 kernel (with
    any other zero point it keeps the activation, and a float kernel, between a
    dequantize and a quantize), as quantize_static's output does."""
    params = sig.activation_params
    return sig.activation == "Relu" or (sig.activation == "Clip" and (params or (0.0,))[0] == 0)


def _sole_users(node: gs.Node) -> list[gs.Node]:
    out = node.outputs[0]
    return list(out.outputs) if len(out.outputs) == 1 else []


def _reaches_output(node: gs.Node, graph_outputs: set[str]) -> bool:
    """True if ``node``'s output flows to a graph output through channel-preserving ops."""
    for _ in range(8):
        out = node.outputs[0]
        if out.name in graph_outputs:
            return True
        users = list(out.outputs)
        if len(users) != 1 or users[0].op not in _PASS_THROUGH:
            return False
        node = users[0]
    return False


def _replace(sig: LayerSignature, **changes) -> LayerSignature:
    return dataclasses.replace(sig, **changes)


def layer_shapes(sig: LayerSignature, in_ch: int, out_ch: int):
    """(input shape, weight shape, group) of the layer at (in_ch, out_ch).

    Never divides by zero: a grouped layer's group count is reduced to a common divisor
    of the counts asked for (any count a pruned model can have is a multiple of it)."""
    if sig.op in ("Gemm", "MatMul"):
        x = (sig.batch, *sig.input_hw, in_ch)
        w = (out_ch, in_ch) if sig.op == "Gemm" else (in_ch, out_ch)
        return x, w, 1
    group = 1
    if sig.group_kind == "depthwise":
        group, out_ch = in_ch, in_ch * sig.multiplier
    elif sig.group_kind == "grouped":
        group = sig.groups or max(1, in_ch // max(1, sig.in_per_group))
        group = math.gcd(group, in_ch, out_ch) or 1
    group = max(1, group)
    x = (sig.batch, in_ch, *sig.input_hw)
    if sig.op == "Conv":
        w = (out_ch, in_ch // group, *sig.kernel)
    else:
        w = (in_ch, out_ch // group, *sig.kernel)
    return x, w, group
