"""Is this model one onnxruntime can run? Checked before any work starts.

The onnx checker passes models that onnxruntime refuses: an opset from the future, a Conv
whose weight has the wrong in-channels, an ``--input-shape`` whose channel count the first
layer does not take. Each would otherwise be pruned, written and only fail on deployment.
So the input (with the shape overrides applied) is loaded in onnxruntime and run once on
zeros at batch 1; the first line of onnxruntime's reason becomes the error.

Shape overrides are also bounded: each input may hold at most :data:`MAX_INPUT_ELEMENTS`
elements (1 GiB of float32), so a typo such as ``input:1,1,100000,100000`` is refused
instead of allocating 37 GiB per tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx._io import ModelSource, read_model

__all__ = ["MAX_INPUT_ELEMENTS", "check_runs_in_onnxruntime", "check_shape_overrides"]

MAX_INPUT_ELEMENTS = 2**28
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_CPP_LOCATION = re.compile(r"/onnxruntime_src/\S+:\d+ [^(]*\(.*?\) (?=[A-Z])")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (IR 3 models also list their initializers as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def _ort_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _CPP_LOCATION.sub("", _ORT_PREFIX.sub("", text))
    return text[:300]


def check_opset(model: onnx.ModelProto) -> None:
    """Refuse an opset newer than the installed onnx knows (onnxruntime checks its own)."""
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise UserError(
                f"model uses opset {imp.version}; the installed onnx {onnx.__version__} "
                f"supports opsets up to {newest}"
            )


def check_shape_overrides(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Resolve a bare shape (key ``""``) to the single input; check names, ranks, channels,
    size. Returns the overrides keyed by input name."""
    real = [i.name for i in graph_inputs(model)]
    inputs = {i.name: i for i in model.graph.input}  # IR 3: weights are inputs too
    resolved: dict[str, tuple[int, ...]] = {}
    for name, dims in shapes.items():
        if name == "":
            if len(real) != 1:
                raise UserError(
                    f"a bare --input-shape needs a single-input model; name one of {sorted(real)}"
                )
            name = real[0]
        if name not in inputs:
            raise UserError(f"--input-shape names unknown input {name!r}; inputs: {sorted(real)}")
        _check_dims(name, tuple(int(d) for d in dims), inputs[name])
        resolved[name] = tuple(int(d) for d in dims)
    return resolved


def _check_dims(name: str, dims: tuple[int, ...], value: onnx.ValueInfoProto) -> None:
    have = value.type.tensor_type.shape.dim
    if len(have) and len(have) != len(dims):
        raise UserError(f"--input-shape {name}: rank {len(dims)} given, model has rank {len(have)}")
    if len(have) >= 3 and have[1].HasField("dim_value") and have[1].dim_value != dims[1]:
        raise UserError(
            f"--input-shape {name}: {dims[1]} channels given, the model takes {have[1].dim_value}"
        )
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise UserError(
            f"--input-shape {name}: {math.prod(dims)} elements; the limit is "
            f"{MAX_INPUT_ELEMENTS} (2**28) per input"
        )


def check_runs_in_onnxruntime(
    source: ModelSource, shapes: Mapping[str, Sequence[int]] | None = None
) -> None:
    """Load ``source`` in onnxruntime (CPU) and run it once on zeros at batch 1.

    Raises:
        UserError: with onnxruntime's reason, on one line.
    """
    model = read_model(source)
    check_opset(model)
    resolved = check_shape_overrides(model, shapes or {})
    for value in graph_inputs(model):
        if value.name in resolved:
            _set_dims(value, resolved[value.name])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the reason is raised; logged errors would be more lines
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = _zero_feeds(session)
        if feeds is not None:
            session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own pybind classes (Fail, InvalidGraph...)
        raise UserError(f"onnxruntime cannot run this model: {_ort_reason(exc)}") from None


def _set_dims(value: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _zero_feeds(session: ort.InferenceSession) -> dict[str, np.ndarray] | None:
    """Zeros for every input at batch 1; None when another dim is symbolic (load only)."""
    feeds = {}
    for arg in session.get_inputs():
        shape = list(arg.shape)
        if shape and not isinstance(shape[0], int):
            shape[0] = 1
        if not all(isinstance(d, int) for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
            return None
        dtype = _NUMPY_TYPES.get(arg.type)
        if dtype is None:
            return None
        feeds[arg.name] = np.zeros(shape, dtype)
    return feeds


_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}
