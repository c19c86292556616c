"""Op handlers of the ONNX -> PyTorch converter (:mod:`.torch_convert`).

A handler gets a :class:`NodeInfo` (attributes, constant inputs as numpy) at conversion
time and returns ``fn(*inputs) -> list[Tensor]``, called with the node's runtime inputs
(``None`` for an empty optional input). Registration refuses duplicates. A form a handler
does not implement raises ``ValueError``/``NotImplementedError``; the converter turns it
into a clear error naming the node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

__all__ = ["OPS", "NodeInfo"]

logger = logging.getLogger(__name__)

Fn = Callable[..., list]
OPS: dict[str, Callable[[NodeInfo], Fn]] = {}


@dataclass(frozen=True)
class NodeInfo:
    """What a handler sees: node name, attributes, constant inputs, output count."""

    name: str
    attrs: dict
    consts: list[np.ndarray | None]
    n_outputs: int

    def const(self, i: int) -> np.ndarray | None:
        """Constant value of input ``i``; None if absent or not constant."""
        return self.consts[i] if i < len(self.consts) else None

    def ints(self, i: int) -> list[int] | None:
        """Constant input ``i`` as a list of Python ints (shapes, axes, pads)."""
        value = self.const(i)
        return None if value is None else [int(v) for v in value.reshape(-1)]


def _op(*names: str):
    def register(handler: Callable[[NodeInfo], Fn]) -> Callable[[NodeInfo], Fn]:
        for name in names:
            if name in OPS:
                raise ValueError(f"op {name!r} already has a handler")
            OPS[name] = handler
        return handler

    return register


def _need(value, what: str):
    if value is None:
        raise NotImplementedError(f"{what} must be a constant")
    return value


# -- elementwise ----------------------------------------------------------------------
_UNARY = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "HardSwish": F.hardswish,
    "Identity": lambda x: x,
    "Dropout": lambda x: x,  # inference
    "Sqrt": torch.sqrt,  # with Pow and ReduceMean: LayerNorm as exported op by op (SVTR)
}
_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}


def _unary(fn) -> Callable[[NodeInfo], Fn]:
    # Dropout may declare a mask output; inference never reads it.
    return lambda n: lambda x, *_: [fn(x)] + [None] * (n.n_outputs - 1)


def _binary(fn) -> Callable[[NodeInfo], Fn]:
    return lambda n: lambda a, b: [fn(a, b)]


for _name, _fn in _UNARY.items():
    _op(_name)(_unary(_fn))
for _name, _fn in _BINARY.items():
    _op(_name)(_binary(_fn))


@_op("Sum")
def _sum(n: NodeInfo) -> Fn:
    """Variadic, broadcasting elementwise sum (older exports' residual adds: the zoo)."""

    def fn(*xs):
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return [total]

    return fn


@_op("LeakyRelu")
def _leaky_relu(n: NodeInfo) -> Fn:
    alpha = float(n.attrs.get("alpha", 0.01))
    return lambda x: [F.leaky_relu(x, alpha)]


@_op("HardSigmoid")
def _hard_sigmoid(n: NodeInfo) -> Fn:
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    return lambda x: [torch.clamp(x * alpha + beta, 0.0, 1.0)]


@_op("PRelu")
def _prelu(n: NodeInfo) -> Fn:
    return lambda x, slope: [torch.where(x >= 0, x, x * slope)]


@_op("Clip")
def _clip(n: NodeInfo) -> Fn:
    lo, hi = n.const(1), n.const(2)
    lo = float(lo) if lo is not None else n.attrs.get("min")
    hi = float(hi) if hi is not None else n.attrs.get("max")
    return lambda x, *_: [torch.clamp(x, lo, hi)]


@_op("Softmax")
def _softmax(n: NodeInfo) -> Fn:
    axis = int(n.attrs.get("axis", -1))
    return lambda x: [torch.softmax(x, axis)]


# -- conv, norm, pooling ----------------------------------------------------------------
def _spatial_pads(pads: list[int], nd: int) -> tuple[list[int] | None, list[int]]:
    """(symmetric torch padding or None, F.pad list for the asymmetric case)."""
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return begin, []
    flat = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return None, flat


def _auto_pad(n: NodeInfo) -> str:
    value = n.attrs.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else value


def _conv_geometry(n: NodeInfo, nd: int) -> tuple[list[int], list[int], list[int], int]:
    if _auto_pad(n) not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"auto_pad={n.attrs['auto_pad']!r}")
    strides = list(n.attrs.get("strides", [1] * nd))
    dilations = list(n.attrs.get("dilations", [1] * nd))
    pads = list(n.attrs.get("pads", [0] * 2 * nd))
    return strides, dilations, pads, int(n.attrs.get("group", 1))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("Conv")
def _conv(n: NodeInfo) -> Fn:
    nd = len(_need(n.const(1), "Conv weight").shape) - 2
    if _auto_pad(n).startswith("SAME"):
        return _same_conv(n, nd)
    strides, dilations, pads, group = _conv_geometry(n, nd)
    sym, flat = _spatial_pads(pads, nd)
    conv = _CONV[nd]

    def run(x, w, b=None):
        if flat:
            x = F.pad(x, flat)
        return [conv(x, w, b, strides, sym or 0, dilations, group)]

    return run


def _same_conv(n: NodeInfo, nd: int) -> Fn:
    """auto_pad SAME_*: the pads depend on the input size, so they are resolved per call."""
    from onnx_hwprune.frontends.onnx._pads import explicit_pads

    kernel = tuple(n.const(1).shape[2:])
    strides = list(n.attrs.get("strides", [1] * nd))
    dilations = list(n.attrs.get("dilations", [1] * nd))
    group, mode, conv = int(n.attrs.get("group", 1)), _auto_pad(n), _CONV[nd]

    def run(x, w, b=None):
        pads = explicit_pads(mode, tuple(x.shape[2:]), kernel, tuple(strides), tuple(dilations))
        _, flat = _spatial_pads(list(pads), nd)
        x = F.pad(x, flat) if flat else F.pad(x, [p for p in reversed(pads[:nd]) for _ in (0, 1)])
        return [conv(x, w, b, strides, 0, dilations, group)]

    return run


@_op("ConvTranspose")
def _conv_transpose(n: NodeInfo) -> Fn:
    nd = len(_need(n.const(1), "ConvTranspose weight").shape) - 2
    strides, dilations, pads, group = _conv_geometry(n, nd)
    sym, _ = _spatial_pads(pads, nd)
    if sym is None or "output_shape" in n.attrs:
        raise NotImplementedError("asymmetric pads / output_shape")
    out_pad = list(n.attrs.get("output_padding", [0] * nd))
    conv = _CONV_T[nd]
    return lambda x, w, b=None: [conv(x, w, b, strides, sym, out_pad, group, dilations)]


@_op("BatchNormalization")
def _batch_norm(n: NodeInfo) -> Fn:
    eps = float(n.attrs.get("epsilon", 1e-5))
    return lambda x, s, b, m, v: [F.batch_norm(x, m, v, s, b, False, 0.0, eps)]


@_op("InstanceNormalization")
def _instance_norm(n: NodeInfo) -> Fn:
    eps = float(n.attrs.get("epsilon", 1e-5))
    return lambda x, s, b: [F.instance_norm(x, weight=s, bias=b, eps=eps)]


def _pool_args(n: NodeInfo) -> tuple[list[int], list[int], list[int] | None, list[int]]:
    kernel = list(n.attrs["kernel_shape"])
    nd = len(kernel)
    if n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise NotImplementedError(f"auto_pad={n.attrs['auto_pad']!r}")
    strides = list(n.attrs.get("strides", [1] * nd))
    sym, flat = _spatial_pads(list(n.attrs.get("pads", [0] * 2 * nd)), nd)
    return kernel, strides, sym, flat


@_op("MaxPool")
def _max_pool(n: NodeInfo) -> Fn:
    kernel, strides, sym, flat = _pool_args(n)
    ceil, dil = bool(n.attrs.get("ceil_mode", 0)), list(n.attrs.get("dilations", [1] * len(kernel)))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]

    def run(x):
        if flat:
            x = F.pad(x, flat, value=-math.inf)
        return [pool(x, kernel, strides, sym or 0, dil, ceil)] + [None] * (n.n_outputs - 1)

    return run


@_op("AveragePool")
def _avg_pool(n: NodeInfo) -> Fn:
    kernel, strides, sym, flat = _pool_args(n)
    if flat:
        raise NotImplementedError("asymmetric pads")
    ceil, incl = bool(n.attrs.get("ceil_mode", 0)), bool(n.attrs.get("count_include_pad", 0))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    return lambda x: [pool(x, kernel, strides, sym, ceil, incl)]


@_op("GlobalAveragePool")
def _global_avg_pool(n: NodeInfo) -> Fn:
    return lambda x: [x.mean(tuple(range(2, x.dim())), keepdim=True)]


@_op("GlobalMaxPool")
def _global_max_pool(n: NodeInfo) -> Fn:
    return lambda x: [x.amax(tuple(range(2, x.dim())), keepdim=True)]


@_op("ReduceMean")
def _reduce_mean(n: NodeInfo) -> Fn:
    axes = n.attrs.get("axes") or n.ints(1)
    keep = bool(n.attrs.get("keepdims", 1))
    return lambda x, *_: [x.mean(tuple(axes) if axes else tuple(range(x.dim())), keepdim=keep)]


# -- linear algebra ---------------------------------------------------------------------
@_op("Gemm")
def _gemm(n: NodeInfo) -> Fn:
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    ta, tb = int(n.attrs.get("transA", 0)), int(n.attrs.get("transB", 0))

    def run(a, b, c=None):
        a, b = (a.t() if ta else a), (b.t() if tb else b)
        y = a @ b if alpha == 1.0 else (a @ b) * alpha
        return [y if c is None else y + (c if beta == 1.0 else c * beta)]

    return run


@_op("MatMul")
def _matmul(n: NodeInfo) -> Fn:
    return lambda a, b: [torch.matmul(a, b)]


# -- shape ops --------------------------------------------------------------------------
@_op("Flatten")
def _flatten(n: NodeInfo) -> Fn:
    axis = int(n.attrs.get("axis", 1))
    return lambda x: [x.reshape(math.prod(x.shape[:axis]), -1)]


@_op("Reshape")
def _reshape(n: NodeInfo) -> Fn:
    shape = _need(n.ints(1), "Reshape shape")
    if n.attrs.get("allowzero", 0):
        raise NotImplementedError("allowzero=1")

    def run(x, _):
        return [x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])]

    return run


@_op("Transpose")
def _transpose(n: NodeInfo) -> Fn:
    perm = n.attrs.get("perm")
    return lambda x: [x.permute(*(perm or reversed(range(x.dim()))))]


@_op("Squeeze")
def _squeeze(n: NodeInfo) -> Fn:
    """Axes from the attribute (opset < 13) or the constant second input; none: all 1s."""
    axes = n.attrs.get("axes") or n.ints(1)

    def run(x, *_):
        return [x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x.squeeze()]

    return run


@_op("Unsqueeze")
def _unsqueeze(n: NodeInfo) -> Fn:
    axes = _need(n.attrs.get("axes") or n.ints(1), "Unsqueeze axes")

    def run(x, *_):
        rank = x.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = x.unsqueeze(axis)
        return [x]

    return run


@_op("Concat")
def _concat(n: NodeInfo) -> Fn:
    axis = int(n.attrs["axis"])
    return lambda *xs: [torch.cat(xs, axis)]


@_op("Split")
def _split(n: NodeInfo) -> Fn:
    axis = int(n.attrs.get("axis", 0))
    sizes = n.ints(1) if len(n.consts) > 1 else n.attrs.get("split")

    def run(x, *_):
        parts = sizes or [x.shape[axis] // n.n_outputs] * n.n_outputs
        return list(torch.split(x, list(parts), axis))

    return run


@_op("Slice")
def _slice(n: NodeInfo) -> Fn:
    starts, ends = _need(n.ints(1), "Slice starts"), _need(n.ints(2), "Slice ends")
    axes = n.ints(3) if len(n.consts) > 3 else None
    steps = n.ints(4) if len(n.consts) > 4 else None
    axes, steps = axes or list(range(len(starts))), steps or [1] * len(starts)
    if any(s <= 0 for s in steps):
        raise NotImplementedError("non-positive Slice steps")

    def run(x, *_):
        index = [slice(None)] * x.dim()
        for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
            index[a] = slice(s, min(e, x.shape[a]) if e >= 0 else e, st)
        return [x[tuple(index)]]

    return run


@_op("Pad")
def _pad(n: NodeInfo) -> Fn:
    pads = _need(n.ints(1), "Pad pads")
    mode = n.attrs.get("mode", b"constant")
    mode = {b"constant": "constant", b"reflect": "reflect", b"edge": "replicate"}[mode]
    value = float(n.const(2)) if n.const(2) is not None else 0.0
    half = len(pads) // 2
    flat = []
    for b, e in zip(reversed(pads[:half]), reversed(pads[half:]), strict=True):
        flat += [b, e]
    while len(flat) > 2 * (half - 2) and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # torch pads only trailing dims in reflect/replicate modes
    kwargs = {"value": value} if mode == "constant" else {}
    return lambda x, *_: [F.pad(x, flat, mode=mode, **kwargs)]


@_op("Resize")
def _resize(n: NodeInfo) -> Fn:
    mode = n.attrs.get("mode", b"nearest")
    coord = n.attrs.get("coordinate_transformation_mode", b"half_pixel")
    scales, sizes = n.const(2), n.const(3)
    if mode != b"nearest" and coord not in (b"half_pixel", b"pytorch_half_pixel", b"align_corners"):
        raise NotImplementedError(f"Resize mode={mode!r} coordinate mode={coord!r}")
    if mode == b"nearest" and (scales is None or np.any(scales != np.round(scales))):
        raise NotImplementedError("nearest Resize needs constant integer scales")
    torch_mode = {b"nearest": "nearest", b"linear": "bilinear"}[mode]
    align = (coord == b"align_corners") if torch_mode != "nearest" else None

    def run(x, *_):
        if sizes is not None and len(sizes):
            size = [int(s) for s in sizes[2:]]
            return [F.interpolate(x, size=size, mode=torch_mode, align_corners=align)]
        factors = [float(s) for s in scales[2:]]
        return [F.interpolate(x, scale_factor=factors, mode=torch_mode, align_corners=align)]

    return run
