"""From a user's ONNX model to the working IR (an onnx-graphsurgeon ``Graph``) and back.

``load_graph`` normalises what real exporters produce so that the passes see one shape of
graph: opset upgraded to at least :data:`MIN_OPSET` (Split sizes, Slice bounds, Pad and
Resize all take inputs from opset 13 on, so handlers need one form only); constant weight
subgraphs (Constant, ConstantOfShape, Identity, Cast, Reshape/Unsqueeze of initializers)
folded into initializers; shapes inferred with symbolic dimensions kept.
Quantization nodes (QuantizeLinear/DequantizeLinear) are never folded: folding them would
silently turn an int8 model into a float one. Their Conv then has a non-constant weight and
its channel groups freeze.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import shape_inference, version_converter

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx._io import ModelSource, read_model
from onnx_hwprune.frontends.onnx._validate import check_shape_overrides

__all__ = [
    "MIN_OPSET",
    "default_opset",
    "load_graph",
    "normalize_model",
    "export_model",
    "verify_model",
]

log = logging.getLogger(__name__)

MIN_OPSET = 13
_NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@contextlib.contextmanager
def _quiet_graphsurgeon() -> Iterator[None]:
    """onnx-graphsurgeon logs warnings to stdout; keep them out of the user's terminal."""
    logger = gs.logger.G_LOGGER
    saved = logger.severity
    logger.severity = logger.ERROR
    # Folding runs onnxruntime sessions whose optimizer warns about harmless things.
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logger.severity = saved
        ort.set_default_logger_severity(2)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UserError("model has no default-domain opset import")


def normalize_model(
    source: ModelSource, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> onnx.ModelProto:
    """Read, validate, upgrade the opset, fix input shapes, fold weights, infer shapes."""
    model = read_model(source)
    _check(model)
    model = _upgrade_opset(model)
    if input_shapes:
        _set_input_shapes(model, input_shapes)
    model = _fold(model)
    return _infer(model)


def load_graph(
    source: ModelSource, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> gs.Graph:
    """The working IR of a model: normalised (see module docstring), topologically sorted."""
    model = normalize_model(source, input_shapes)
    with _quiet_graphsurgeon():
        graph = gs.import_onnx(model)
    graph.toposort()
    _name_nodes(graph)
    _reject_dynamic_channels(graph)
    return graph


def _name_nodes(graph: gs.Graph) -> None:
    """Unique names for every node: reports, profiles and plans refer to nodes by name,
    and many exporters leave names empty or repeat them."""
    taken = {node.name for node in graph.nodes if node.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            name, k = f"{node.op}_{index}", 0
            while name in taken:
                k += 1
                name = f"{node.op}_{index}_{k}"
            node.name = name
            taken.add(name)
        seen.add(node.name)


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise UserError(f"invalid ONNX model: {first}") from None


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise UserError(f"cannot upgrade opset {opset} to {MIN_OPSET}: {exc}") from None
    log.info("upgraded opset %d -> %d", opset, MIN_OPSET)
    return upgraded


def _set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    inputs = {i.name: i for i in model.graph.input}
    # Names, ranks, channels and the size limit are checked there; "" is the sole input.
    for name, dims in check_shape_overrides(model, shapes).items():
        tensor_type = inputs[name].type.tensor_type
        tensor_type.shape.ClearField("dim")
        for d in dims:
            tensor_type.shape.dim.add().dim_value = int(d)


def _has_foldable_nodes(model: onnx.ModelProto) -> bool:
    """Any node computed from constants alone (or a Shape of a static tensor)?

    The fold is a full import/export round trip that copies every weight; models
    exported with plain initializers (most of them) skip it.
    """
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in _NEVER_FOLD:
            continue
        if node.op_type == "Shape" or all(not i or i in constant for i in node.input):
            return True
    return False


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    if not _has_foldable_nodes(model):
        return model
    with _quiet_graphsurgeon():
        graph = gs.import_onnx(model)
        graph.fold_constants(
            fold_shapes=True,
            size_threshold=None,
            should_exclude_node=lambda node: node.op in _NEVER_FOLD,
        )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return gs.export_onnx(graph, do_type_check=False)


def _infer(model: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """Shapes inferred in place, on a weightless skeleton of the model.

    onnx's C++ inference works on a serialized copy of its input; it needs the dims of
    the weights, never their values (only small shape-computing constants, kept whole),
    so the skeleton saves two copies of every weight: a 100 MB model would otherwise
    peak at several times its size here.
    """
    _fix_ir_version(model)
    try:
        inferred = shape_inference.infer_shapes(
            _skeleton(model), check_type=False, strict_mode=strict, data_prop=True
        )
    except Exception as exc:  # shape inference raises InferenceError or bare C++ errors
        if strict:
            raise
        raise UserError(f"shape inference failed: {str(exc).splitlines()[0]}") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for dst, src in zip(model.graph.output, inferred.graph.output, strict=True):
        dst.CopyFrom(src)
    return model


_SKELETON_KEEP_BYTES = 4096  # shape-computing constants (Reshape targets...) are smaller


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large initializers reduced to name, type and dims."""
    sk = onnx.ModelProto(ir_version=model.ir_version)
    sk.opset_import.extend(model.opset_import)
    graph = sk.graph
    graph.name = model.graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(model.graph, field))
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= _SKELETON_KEEP_BYTES:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return sk


def _fix_ir_version(model: onnx.ModelProto) -> None:
    """Keep the model's IR version unless its opsets need a newer one.

    onnx >= 1.23 writes IR 14 by default, which onnxruntime 1.31 cannot read, so never let
    a helper choose the IR version for us.
    """
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed)


def _reject_dynamic_channels(graph: gs.Graph) -> None:
    for tensor in graph.inputs:
        shape = tensor.shape
        if shape is not None and len(shape) >= 3 and not isinstance(shape[1], int):
            raise UserError(
                f"input {tensor.name!r} has a dynamic channel dimension {shape[1]!r}; "
                f"fix it with --input-shape {tensor.name}:1,C,H,W"
            )


def export_model(graph: gs.Graph, ir_version: int | None = None) -> onnx.ModelProto:
    """The IR back to ONNX, with shapes re-inferred from scratch (stale ones dropped)."""
    with _quiet_graphsurgeon():
        model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    if ir_version is not None:
        model.ir_version = ir_version
    return _infer(model)


def verify_model(model: onnx.ModelProto) -> None:
    """The promise made about every model we write: what ``check_model(full_check=True)``
    checks (the checker, then strict shape inference), with inference on a skeleton.

    Raises:
        RuntimeError: a bug in a pass produced an invalid model (not a user error).
    """
    try:
        onnx.checker.check_model(model)
        shape_inference.infer_shapes(
            _skeleton(model), check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as exc:
        raise RuntimeError(f"pruned model is invalid: {exc}") from exc


def with_static_inputs(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy whose inputs have concrete shapes: a symbolic batch becomes ``batch``.

    Latency is measured at a concrete shape; any other symbolic dimension (spatial size of
    a detector) must be fixed by the user, since guessing it would measure the wrong layers.
    """
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        concrete = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if concrete[1:] and None in concrete[1:]:
            raise UserError(
                f"input {value.name!r} has symbolic dimensions {[d.dim_param for d in dims]}; "
                f"latency needs concrete ones: --input-shape {value.name}:1,C,H,W"
            )
        if concrete and concrete[0] is None:
            concrete[0] = batch
        shapes[value.name] = concrete
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _set_input_shapes(copy, shapes)
    del copy.graph.value_info[:]
    return _infer(copy)
