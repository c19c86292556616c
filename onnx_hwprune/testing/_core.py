"""A small, deterministic ONNX graph builder used by the model families and networks.

The builder tracks the static shape of every tensor it creates, so that each layer can
size its weights from its input (``conv(x, cout, k)`` reads ``cin`` from ``x``) and so
that constants such as Reshape targets can be computed (``C*H*W``) rather than typed.

Example::

    g = GraphBuilder("tiny", seed=0)  # the subclass in _graph.py
    x = g.input(3, 32, 32)
    with g.scope("stem"):
        y = g.relu(g.bn(g.conv(x, 8, 3)))
    model = g.build(y)

Node names are dotted scopes (``stem.conv``), tensors are named after the node that
produces them, initializers after their node and role (``stem.conv.weight``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Dim", "GraphCore", "IR_VERSION"]

#: onnxruntime 1.31 reads at most IR 13 while onnx 1.23 writes 14 by default.
IR_VERSION = 10

Dim = int | str


def _conv_out(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


class GraphCore:
    """Core of the builder: names, shapes, initializers, nodes; layers live in _graph.py.

    Args:
        name: Graph name.
        seed: Seed of the ``numpy`` generator that draws every weight, in build order.
        opset: Default-domain opset (13 or newer).
        batch: Batch dimension: an int, or a string for a symbolic dimension.
    """

    def __init__(self, name: str, seed: int = 0, opset: int = 17, batch: Dim = 1) -> None:
        if opset < 13:
            raise ValueError(f"opset {opset} < 13 is not supported by the builders")
        self.name = name
        self.opset = opset
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.shapes: dict[str, list[Dim]] = {}
        self._scopes: list[str] = []
        self._used: set[str] = set()

    # ----------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefixes the names of nodes created inside the block with ``name.``."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _unique(self, base: str) -> str:
        name = ".".join([*self._scopes, base])
        candidate, i = name, 1
        while candidate in self._used:
            candidate, i = f"{name}_{i}", i + 1
        self._used.add(candidate)
        return candidate

    def channels(self, x: str) -> int:
        """Returns the (static) channel count of an NCHW or NC tensor."""
        return int(self.shapes[x][1])

    def param(self, owner: str, role: str, array: np.ndarray) -> str:
        """Adds an initializer named ``<owner>.<role>`` (floats stored as float32)."""
        name = f"{owner}.{role}"
        if name in self._used:
            raise ValueError(f"initializer name {name!r} already used")
        self._used.add(name)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.shapes[name] = list(array.shape)
        return name

    def ints(self, owner: str, role: str, values: Sequence[int]) -> str:
        """Adds an int64 1-D initializer (shapes, sizes, axes) named ``<owner>.<role>``."""
        return self.param(owner, role, np.array(list(values), dtype=np.int64))

    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        """He-normal weights: std sqrt(2 / fan_in)."""
        std = np.sqrt(2.0 / fan_in)
        return (self.rng.standard_normal(tuple(shape), dtype=np.float32) * std).astype(np.float32)

    def small(self, shape: Sequence[int], std: float = 0.05) -> np.ndarray:
        """Small centred values, for biases and offsets."""
        return (self.rng.standard_normal(tuple(shape), dtype=np.float32) * std).astype(np.float32)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        shape: Sequence[Dim],
        name: str | None = None,
        node: str | None = None,
        **attrs: object,
    ) -> str:
        """Adds one node with a single output of the given shape; returns the output name.

        ``name`` is a base name made unique in the current scope; ``node`` is a full name
        already reserved with ``_unique`` (used when weights are named before the node).
        """
        node_name = node or self._unique(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [node_name], node_name, **attrs))
        self.shapes[node_name] = list(shape)
        return node_name

    def input(self, channels: int, height: int, width: int, name: str = "input") -> str:
        """Declares the NCHW float input."""
        shape = [self.batch, channels, height, width]
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        self.shapes[name] = shape
        self._used.add(name)
        return name

    def build(self, output: str, doc: str = "") -> onnx.ModelProto:
        """Renames ``output`` to ``"output"`` and returns the finished model (IR 10)."""
        for node in self.nodes:
            for i, name in enumerate(node.output):
                if name == output:
                    node.output[i] = "output"
            for i, name in enumerate(node.input):
                if name == output:
                    node.input[i] = "output"
        out = helper.make_tensor_value_info("output", TensorProto.FLOAT, self.shapes[output])
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, [out], initializer=self.initializers
        )
        graph.doc_string = doc
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="onnx-hwprune.builders",
        )
        model.ir_version = IR_VERSION
        return model
