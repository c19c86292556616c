"""ONNX -> PyTorch for the CNNs onnx-hwprune emits, so the ``cudnn`` backend can run them.

Why our own converter and not onnx2torch: the graphs we time are small and regular (the
model builders' families, their pruned variants, one-layer micro-benchmarks), a table of
about 35 ops covers them, and the GPU machine then needs no extra wheel. An op outside
the table raises :class:`UnsupportedOpError`; nothing is guessed.

Each op handler runs once at conversion time with the node's attributes and its constant
inputs (shapes, pads, scales, split sizes) as numpy arrays, and returns a closure over
tensors. Shape-like values are thus plain Python at run time: no device-to-host copy in
``forward``, which keeps the module capturable as a CUDA graph.

Deployment runtimes fold a BatchNormalization that follows a Conv into the Conv's weights
(onnxruntime does; the micro-benchmarks assume it), so :func:`~.bn_fold.fold_batchnorm`
does the same here before conversion.

Example::

    module = OnnxModule(onnx_model).eval()
    (logits,) = module(torch.randn(1, 3, 32, 32))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime._torch_ops import OPS, NodeInfo
from onnx_hwprune.runtime.bn_fold import fold_batchnorm

__all__ = ["OnnxModule", "UnsupportedOpError", "supported_ops"]

logger = logging.getLogger(__name__)


class UnsupportedOpError(UserError):
    """The graph holds an op (or an op form) the converter does not implement."""


def supported_ops() -> list[str]:
    """Op types the converter implements."""
    return sorted(OPS)


@dataclass(frozen=True)
class _Step:
    fn: Callable[..., list]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class OnnxModule(torch.nn.Module):
    """A ``torch.nn.Module`` that runs an ONNX graph op by op.

    Float constants become buffers (so ``.to(device)`` moves them); integer constants stay
    on the host, as the handlers only read them at conversion time.

    Args:
        model: the ONNX model (opset 11+; static or symbolic batch).
        fold_bn: fold Conv -> BatchNormalization pairs first, as deployments do.
    """

    def __init__(self, model: onnx.ModelProto, *, fold_bn: bool = True):
        super().__init__()
        model = fold_batchnorm(model) if fold_bn else model
        graph = model.graph
        consts = _constants(graph)
        used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
        self._names: dict[str, str] = {}
        for i, (name, value) in enumerate(consts.items()):
            if value.dtype.kind == "f" and name in used:
                self.register_buffer(f"c{i}", torch.from_numpy(np.array(value)))
                self._names[name] = f"c{i}"
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        self._steps = [_compile(node, consts) for node in graph.node if node.op_type != "Constant"]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs in graph order."""
        env = self._run(inputs)
        return tuple(env[n] for n in self.output_names)

    def tapped(
        self, *inputs: torch.Tensor, taps: list[str]
    ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """Outputs in graph order and the intermediate tensors named in ``taps``."""
        env = self._run(inputs)
        return tuple(env[n] for n in self.output_names), {n: env[n] for n in taps}

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor | None]:
        env: dict[str, torch.Tensor | None] = dict(zip(self.input_names, inputs, strict=True))
        env[""] = None
        for name, buf in self._names.items():
            env[name] = getattr(self, buf)
        for step in self._steps:
            results = step.fn(*(env.get(n) for n in step.inputs))
            env.update(zip(step.outputs, results, strict=True))
        return env


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next(a for a in node.attribute)
            if attr.name != "value":
                raise UnsupportedOpError(f"Constant {node.name!r}: only 'value' is supported")
            consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _compile(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> _Step:
    handler = OPS.get(node.op_type)
    if handler is None:
        raise UnsupportedOpError(
            f"node {node.name!r}: op {node.op_type} is not supported by the ONNX->torch "
            f"converter (supported: {', '.join(supported_ops())})"
        )
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    info = NodeInfo(node.name, attrs, [consts.get(n) for n in node.input], len(node.output))
    try:
        fn = handler(info)
    except (ValueError, NotImplementedError) as exc:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): {exc}") from None
    return _Step(fn, tuple(node.input), tuple(node.output))
