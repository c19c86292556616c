"""The ONNX frontend: user files in, working IR (onnx-graphsurgeon Graph) out, and back."""

from onnx_hwprune.frontends.onnx._graph import (
    MIN_OPSET,
    default_opset,
    export_model,
    load_graph,
    normalize_model,
    verify_model,
    with_static_inputs,
)
from onnx_hwprune.frontends.onnx._io import (
    ModelSource,
    read_model,
    serialize,
    write_bytes_atomic,
)
from onnx_hwprune.frontends.onnx._shapes import parse_input_shapes
from onnx_hwprune.frontends.onnx._validate import (
    MAX_INPUT_ELEMENTS,
    check_runs_in_onnxruntime,
    check_shape_overrides,
)

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "check_runs_in_onnxruntime",
    "check_shape_overrides",
    "MIN_OPSET",
    "ModelSource",
    "default_opset",
    "export_model",
    "load_graph",
    "normalize_model",
    "parse_input_shapes",
    "read_model",
    "serialize",
    "verify_model",
    "with_static_inputs",
    "write_bytes_atomic",
]
