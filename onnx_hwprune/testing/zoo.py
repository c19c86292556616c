"""The "light" model zoo shipped inside the onnx package, with its weights made real.

The onnx package stores nine classic CNNs (``onnx/backend/test/data/light``) at IR 3 /
opset 9 with their weights stripped: each weight is a ``ConstantOfShape`` node fed by a
``<weight>__SHAPE`` initializer, and every initializer is also listed as a graph input.
:func:`load_light_zoo` replaces each weight (and each real float initializer, such as a
bias or BN statistic) with a random float32 initializer drawn for its role:

- Conv / Gemm weights: He normal (std sqrt(2 / fan_in));
- biases, BN bias and mean, decomposed-BN offsets (Unsqueeze -> Add): N(0, 0.05);
- BN scale and decomposed-BN scale (Unsqueeze -> Mul): U(0.5, 1.5) times a gain that
  keeps the expected activation variance constant (see ``_BN_GAIN``);
- BN variance: U(0.5, 1.5) (positive);
- the BN that ends a residual branch (its output feeds a ``Sum``/``Add``) gets its scale
  multiplied by ``RESIDUAL_GAIN``, so that ResNet-50's 16 residual Sums do not blow up.

The ConstantOfShape nodes, the ``__SHAPE`` initializers and any unused initializer are
removed, initializers are removed from ``graph.input``, the opset stays 9 (the frontend
upgrades it) and the IR version is raised to what the checker requires for that opset.
No network access: the files come from the installed onnx package.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._families_cnn import RESIDUAL_GAIN

__all__ = ["LIGHT_ZOO", "light_zoo_dir", "light_zoo_path", "load_light_zoo"]

logger = logging.getLogger(__name__)

#: Names of the light zoo models (file ``light_<name>.onnx``).
LIGHT_ZOO: tuple[str, ...] = (
    "resnet50",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "squeezenet",
    "shufflenet",
    "vgg19",
    "bvlc_alexnet",
    "zfnet512",
)
_SHAPE_SUFFIX = "__SHAPE"
_PASSTHROUGH = ("Reshape", "Unsqueeze")
_Consumers = dict[str, list[tuple[onnx.NodeProto, int]]]
# With scale ~ U(0.5, 1.5) and var ~ U(0.5, 1.5), E[scale^2] = 13/12 and E[1/var] = ln 3:
# these gains make E[(scale * gain)^2 / var] = 1, so He-scaled activations keep their
# variance through the 50-120 layers of these models instead of growing ~1.2x per layer.
_BN_GAIN = float(1.0 / np.sqrt(13 / 12 * np.log(3.0)))
_MUL_GAIN = float(1.0 / np.sqrt(13 / 12))


def light_zoo_dir() -> Path:
    """Folder of the light zoo inside the installed onnx package."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_zoo_path(name: str) -> Path:
    """Path of ``light_<name>.onnx``; raises ``KeyError`` for an unknown name."""
    if name not in LIGHT_ZOO:
        raise KeyError(f"unknown light zoo model {name!r}; known: {', '.join(LIGHT_ZOO)}")
    path = light_zoo_dir() / f"light_{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed onnx package")
    return path


def _consumers(graph: onnx.GraphProto) -> _Consumers:
    found: _Consumers = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            found[name].append((node, i))
    return found


def _role(name: str, consumers: _Consumers) -> tuple[onnx.NodeProto, int] | None:
    """First (op, input index) using ``name``, looking through Reshape/Unsqueeze."""
    uses = consumers.get(name, [])
    if not uses:
        return None
    node, index = uses[0]
    if node.op_type in _PASSTHROUGH and index == 0:
        return _role(node.output[0], consumers) or (node, index)
    return node, index


def _feeds_residual(bn: onnx.NodeProto, consumers: _Consumers) -> bool:
    return any(n.op_type in ("Sum", "Add") for n, _ in consumers.get(bn.output[0], []))


def _fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    if node.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return shape[-1] if trans_b else shape[0]
    return int(np.prod(shape[1:]))


def _draw(
    shape: tuple[int, ...],
    role: tuple[onnx.NodeProto, int] | None,
    consumers: _Consumers,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random values for a weight of ``shape`` used as ``role``."""
    node, index = role if role else (None, -1)
    op = node.op_type if node is not None else ""
    if op in ("Conv", "Gemm") and index == 1:
        std = np.sqrt(2.0 / max(_fan_in(node, shape), 1))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if op == "BatchNormalization" and index == 1:
        gain = _BN_GAIN * (RESIDUAL_GAIN if _feeds_residual(node, consumers) else 1.0)
        return rng.uniform(0.5, 1.5, shape).astype(np.float32) * np.float32(gain)
    if op == "Mul" and index == 1:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32) * np.float32(_MUL_GAIN)
    if op == "BatchNormalization" and index == 4:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if op not in ("Conv", "Gemm", "BatchNormalization", "Add", "Unsqueeze"):
        logger.warning(
            "weight of shape %s used by %s input %d: drawing N(0, 0.05)", shape, op, index
        )
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)


def _weight_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Every weight to draw, with its shape: ConstantOfShape outputs and float initializers."""
    inits = {t.name: t for t in graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]])
            shapes[node.output[0]] = tuple(int(d) for d in shape)
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and not t.name.endswith(_SHAPE_SUFFIX):
            shapes[t.name] = tuple(t.dims)
    return shapes


def _randomize(graph: onnx.GraphProto, rng: np.random.Generator) -> list[onnx.TensorProto]:
    """New initializers for every weight, drawn in graph order (deterministic)."""
    shapes = _weight_shapes(graph)
    consumers = _consumers(graph)
    drawn: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        for name in node.input:
            if name in shapes and name not in drawn:
                values = _draw(shapes[name], _role(name, consumers), consumers, rng)
                drawn[name] = numpy_helper.from_array(values.astype(np.float32, copy=False), name)
    return list(drawn.values())


def load_light_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """Loads a light zoo model with random real weights (see the module docstring).

    Args:
        name: One of :data:`LIGHT_ZOO`.
        seed: Seed of the generator that draws the weights, in graph order.

    Returns:
        A model that passes ``onnx.checker.check_model`` and runs in onnxruntime.
    """
    model = onnx.load(light_zoo_path(name))
    graph = model.graph
    weights = _randomize(graph, np.random.default_rng(seed))
    nodes = [n for n in graph.node if n.op_type != "ConstantOfShape"]
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    weight_names = {w.name for w in weights}
    kept = [t for t in graph.initializer if t.name in used and t.name not in weight_names]
    initializers = [w for w in weights if w.name in used] + kept
    init_names = {t.name for t in initializers}
    inputs = [i for i in graph.input if i.name not in init_names and i.name in used]
    dropped = len(graph.initializer) - len(kept)
    logger.debug("%s: %d weights drawn, %d initializers dropped", name, len(weights), dropped)
    del graph.node[:], graph.initializer[:], graph.input[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(model.opset_import))
    return model


#: The five networks of the latency benchmarks (``tools/``): four built in code, DenseNet-121
#: from the light zoo (its topology; weights drawn as :func:`load_light_zoo` does).
BENCHMARK_NETWORKS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16", "densenet121")


def benchmark_network(name: str, image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """One of :data:`BENCHMARK_NETWORKS` (DenseNet-121 keeps the zoo's 224x224 input)."""
    from .networks import NETWORKS

    if name == "densenet121":
        return load_light_zoo("densenet121", seed=seed)
    return NETWORKS[name](seed=seed, image_size=image_size)
