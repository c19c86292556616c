"""Layer methods of the graph builder: one method per ONNX op (or small op pattern).

Every method takes tensor names, creates its weights with the builder's generator (He
init for convolutions and fully-connected layers; BatchNormalization with random
positive variance and random mean/scale/bias so it is never an identity) and returns the
name of its output tensor, whose static shape is recorded in ``self.shapes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import helper

from ._core import Dim, GraphCore, _conv_out

__all__ = ["GraphBuilder"]


class GraphBuilder(GraphCore):
    """Deterministic ONNX graph builder; see the module docstring of ``_core``."""

    # -------------------------------------------------------------- conv layers
    def conv(
        self,
        x: str,
        cout: int,
        k: int,
        stride: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = True,
        dilation: int = 1,
        name: str = "conv",
    ) -> str:
        """Conv2d with a square kernel; ``pad`` defaults to 'same' for stride 1."""
        n, cin, h, w = self.shapes[x]
        pad = dilation * (k - 1) // 2 if pad is None else pad
        if cin % groups or cout % groups:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by groups {groups}")
        node = self._unique(name)
        wname = self.param(
            node, "weight", self.he((cout, cin // groups, k, k), cin // groups * k * k)
        )
        inputs = [x, wname]
        if bias:
            inputs.append(self.param(node, "bias", self.small((cout,))))
        shape = [
            n,
            cout,
            _conv_out(h, k, stride, pad, dilation),
            _conv_out(w, k, stride, pad, dilation),
        ]
        return self.op(
            "Conv",
            inputs,
            shape,
            node=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
            dilations=[dilation, dilation],
        )

    def conv_transpose(
        self, x: str, cout: int, k: int = 2, stride: int = 2, name: str = "upconv"
    ) -> str:
        """ConvTranspose2d without padding (k == stride doubles the spatial size)."""
        n, cin, h, w = self.shapes[x]
        node = self._unique(name)
        wname = self.param(node, "weight", self.he((cin, cout, k, k), cin * k * k // stride**2))
        bname = self.param(node, "bias", self.small((cout,)))
        shape = [n, cout, (h - 1) * stride + k, (w - 1) * stride + k]
        return self.op(
            "ConvTranspose",
            [x, wname, bname],
            shape,
            node=node,
            kernel_shape=[k, k],
            strides=[stride, stride],
        )

    def bn(self, x: str, name: str = "bn", gain: float = 1.0) -> str:
        """BatchNormalization with random scale/bias/mean and positive variance.

        ``gain`` multiplies the random scale; residual branches use a small gain so that
        activations do not double at every Add of a deep ResNet.
        """
        c = self.channels(x)
        node = self._unique(name)
        params = [
            self.param(node, "scale", gain * self.rng.uniform(0.5, 1.5, c)),
            self.param(node, "bias", self.small((c,), 0.1)),
            self.param(node, "mean", self.small((c,), 0.1)),
            self.param(node, "var", self.rng.uniform(0.5, 1.5, c)),
        ]
        return self.op("BatchNormalization", [x, *params], self.shapes[x], node=node, epsilon=1e-5)

    def instance_norm(self, x: str, name: str = "instnorm") -> str:
        """InstanceNormalization with random per-channel scale and bias."""
        c = self.channels(x)
        node = self._unique(name)
        scale = self.param(node, "scale", self.rng.uniform(0.5, 1.5, c))
        bias = self.param(node, "bias", self.small((c,), 0.1))
        return self.op("InstanceNormalization", [x, scale, bias], self.shapes[x], node=node)

    # -------------------------------------------------------------- activations
    def unary(self, op_type: str, x: str, name: str | None = None, **attrs: object) -> str:
        """Any shape-preserving single-input op (Relu, Tanh, Identity, ...)."""
        return self.op(op_type, [x], self.shapes[x], name=name, **attrs)

    def relu(self, x: str, name: str = "relu") -> str:
        """Relu."""
        return self.unary("Relu", x, name)

    def sigmoid(self, x: str, name: str = "sigmoid") -> str:
        """Sigmoid."""
        return self.unary("Sigmoid", x, name)

    def hardswish(self, x: str, name: str = "hardswish") -> str:
        """HardSwish (opset >= 14)."""
        if self.opset < 14:
            raise ValueError("HardSwish needs opset >= 14")
        return self.unary("HardSwish", x, name)

    def relu6(self, x: str, name: str = "relu6") -> str:
        """Clip(x, 0, 6) with min/max given as scalar initializer inputs."""
        node = self._unique(name)
        lo = self.param(node, "min", np.array(0.0, dtype=np.float32))
        hi = self.param(node, "max", np.array(6.0, dtype=np.float32))
        return self.op("Clip", [x, lo, hi], self.shapes[x], node=node)

    def silu(self, x: str, name: str = "silu") -> str:
        """x * Sigmoid(x), the way exporters write SiLU/Swish."""
        return self.mul(x, self.sigmoid(x, f"{name}.sigmoid"), f"{name}.mul")

    def prelu(self, x: str, name: str = "prelu") -> str:
        """PRelu with a per-channel slope of shape [C, 1, 1]."""
        node = self._unique(name)
        slope = self.param(node, "slope", self.rng.uniform(0.05, 0.3, (self.channels(x), 1, 1)))
        return self.op("PRelu", [x, slope], self.shapes[x], node=node)

    # ------------------------------------------------------------- elementwise
    def binary(self, op_type: str, a: str, b: str, name: str | None = None) -> str:
        """Elementwise op of two tensors of the same shape (or a broadcast constant)."""
        return self.op(op_type, [a, b], self.shapes[a], name=name)

    def add(self, a: str, b: str, name: str = "add") -> str:
        """Elementwise Add (residual connections)."""
        return self.binary("Add", a, b, name)

    def mul(self, a: str, b: str, name: str = "mul") -> str:
        """Elementwise Mul (e.g. an SE gate)."""
        return self.binary("Mul", a, b, name)

    def channel_const(self, x: str, op_type: str, name: str) -> str:
        """``op_type`` (Add/Sub/Mul/Div) of x with a random [1, C, 1, 1] constant."""
        c = self.channels(x)
        node = self._unique(name)
        if op_type in ("Mul", "Div"):
            values = self.rng.uniform(0.5, 1.5, (1, c, 1, 1))
        else:
            values = self.small((1, c, 1, 1), 0.1)
        return self.op(op_type, [x, self.param(node, "value", values)], self.shapes[x], node=node)

    # ------------------------------------------------------------ channel ops
    def concat(self, xs: Sequence[str], axis: int = 1, name: str = "concat") -> str:
        """Concat along ``axis`` (channels by default)."""
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(int(self.shapes[t][axis]) for t in xs)
        return self.op("Concat", list(xs), shape, name=name, axis=axis)

    def split(self, x: str, sizes: Sequence[int], axis: int = 1, name: str = "split") -> list[str]:
        """Split (opset >= 13 form, sizes as an int64 input); returns one name per part."""
        if sum(sizes) != self.shapes[x][axis]:
            raise ValueError(f"{name}: sizes {list(sizes)} do not sum to dim {axis} of {x}")
        node = self._unique(name)
        sizes_name = self.ints(node, "sizes", sizes)
        outs = [f"{node}.{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, sizes_name], outs, node, axis=axis))
        for out, size in zip(outs, sizes, strict=True):
            shape = list(self.shapes[x])
            shape[axis] = size
            self.shapes[out] = shape
        return outs

    def slice(self, x: str, start: int, end: int, axis: int = 1, name: str = "slice") -> str:
        """Slice [start, end) along one axis with constant starts/ends/axes inputs."""
        node = self._unique(name)
        bounds = [
            self.ints(node, r, [v]) for r, v in (("starts", start), ("ends", end), ("axes", axis))
        ]
        shape = list(self.shapes[x])
        shape[axis] = end - start
        return self.op("Slice", [x, *bounds], shape, node=node)

    def transpose(self, x: str, perm: Sequence[int], name: str = "transpose") -> str:
        """Transpose with a constant permutation."""
        shape = [self.shapes[x][p] for p in perm]
        return self.op("Transpose", [x], shape, name=name, perm=list(perm))

    def reshape(self, x: str, shape: Sequence[Dim], name: str = "reshape") -> str:
        """Reshape to a constant target; a str entry (the batch) is written as 0 (copy)."""
        target = [0 if isinstance(d, str) else d for d in shape]
        node = self._unique(name)
        return self.op("Reshape", [x, self.ints(node, "shape", target)], list(shape), node=node)

    def flatten(self, x: str, name: str = "flatten") -> str:
        """Flatten(axis=1): N x C x H x W -> N x (C*H*W)."""
        n, *rest = self.shapes[x]
        return self.op("Flatten", [x], [n, int(np.prod(rest))], name=name, axis=1)

    # ---------------------------------------------------------------- pooling
    def _pool(self, op_type: str, x: str, k: int, stride: int | None, pad: int, name: str) -> str:
        n, c, h, w = self.shapes[x]
        stride = stride or k
        shape = [n, c, _conv_out(h, k, stride, pad), _conv_out(w, k, stride, pad)]
        return self.op(
            op_type,
            [x],
            shape,
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def maxpool(
        self, x: str, k: int = 2, stride: int | None = None, pad: int = 0, name: str = "maxpool"
    ) -> str:
        """MaxPool with a square kernel (stride defaults to the kernel)."""
        return self._pool("MaxPool", x, k, stride, pad, name)

    def avgpool(
        self, x: str, k: int = 2, stride: int | None = None, pad: int = 0, name: str = "avgpool"
    ) -> str:
        """AveragePool with a square kernel (stride defaults to the kernel)."""
        return self._pool("AveragePool", x, k, stride, pad, name)

    def gap(self, x: str, name: str = "gap") -> str:
        """GlobalAveragePool: N x C x 1 x 1."""
        n, c, _, _ = self.shapes[x]
        return self.op("GlobalAveragePool", [x], [n, c, 1, 1], name=name)

    def reduce_mean(self, x: str, name: str = "reducemean") -> str:
        """ReduceMean over H and W with keepdims=1 (axes as attribute before opset 18)."""
        n, c, _, _ = self.shapes[x]
        if self.opset >= 18:
            node = self._unique(name)
            axes = self.ints(node, "axes", [2, 3])
            return self.op("ReduceMean", [x, axes], [n, c, 1, 1], node=node, keepdims=1)
        return self.op("ReduceMean", [x], [n, c, 1, 1], name=name, axes=[2, 3], keepdims=1)

    def pad(self, x: str, p: int, name: str = "pad") -> str:
        """Zero Pad of ``p`` on each spatial border (N and C untouched)."""
        node = self._unique(name)
        pads = self.ints(node, "pads", [0, 0, p, p, 0, 0, p, p])
        n, c, h, w = self.shapes[x]
        return self.op("Pad", [x, pads], [n, c, h + 2 * p, w + 2 * p], node=node)

    def resize(self, x: str, scale: int = 2, name: str = "resize") -> str:
        """Nearest-neighbour Resize by an integer factor, scales [1, 1, s, s]."""
        node = self._unique(name)
        scales = self.param(node, "scales", np.array([1, 1, scale, scale], dtype=np.float32))
        n, c, h, w = self.shapes[x]
        return self.op(
            "Resize", [x, "", scales], [n, c, h * scale, w * scale], node=node, mode="nearest"
        )

    # ---------------------------------------------------------- dense layers
    def gemm(self, x: str, out_features: int, name: str = "fc") -> str:
        """Gemm with transB=1 (weight [out, in]) and a bias, like torch's Linear."""
        n, fin = self.shapes[x]
        node = self._unique(name)
        wname = self.param(node, "weight", self.he((out_features, fin), fin))
        bname = self.param(node, "bias", self.small((out_features,)))
        return self.op("Gemm", [x, wname, bname], [n, out_features], node=node, transB=1)

    def matmul(self, x: str, out_features: int, name: str = "matmul") -> str:
        """MatMul with a constant [in, out] weight (no bias)."""
        n, fin = self.shapes[x]
        node = self._unique(name)
        wname = self.param(node, "weight", self.he((fin, out_features), fin))
        return self.op("MatMul", [x, wname], [n, out_features], node=node)

    # ------------------------------------------------------------- patterns
    def conv_bn(
        self,
        x: str,
        cout: int,
        k: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        name: str = "conv",
        gain: float = 1.0,
    ) -> str:
        """Conv (no bias) + BatchNormalization + optional activation, torchvision style."""
        y = self.conv(x, cout, k, stride, groups=groups, bias=False, name=name)
        y = self.bn(y, name=self._rename(name, "bn"), gain=gain)
        if act is None:
            return y
        return getattr(self, act)(y, name=self._rename(name, act))

    @staticmethod
    def _rename(conv_name: str, kind: str) -> str:
        """``conv1`` -> ``bn1``; ``stem`` -> ``stem.bn``: names that read as the layer."""
        return conv_name.replace("conv", kind) if "conv" in conv_name else f"{conv_name}.{kind}"
