"""What a model expects of its inputs, and the checks every calibration batch passes."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError

__all__ = [
    "Dim",
    "InputSpec",
    "as_named",
    "check_arrays",
    "check_keys",
    "check_spec",
    "input_specs",
    "single_input",
]

Dim = int | str | None
InputSpec = tuple[tuple[Dim, ...], np.dtype]
"""(shape, dtype) of one model input; a dim is an int, or a str/None when dynamic."""


def input_specs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """Return ``{name: (shape, dtype)}`` for the model's real inputs, in graph order.

    Graph inputs that are also initializers (IR < 4 models list weights as inputs) are
    not inputs a user feeds, so they are left out.
    """
    weights = {t.name for t in model.graph.initializer}
    specs: dict[str, InputSpec] = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(_dim(d) for d in tensor_type.shape.dim)
        specs[value.name] = (dims, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return specs


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def single_input(specs: Mapping[str, InputSpec], what: str) -> str:
    if len(specs) != 1:
        raise UserError(
            f"{what} can only feed a single-input model; this one has inputs "
            f"{', '.join(specs)}: give a dict or an npz keyed by input name"
        )
    return next(iter(specs))


def as_named(
    batch: Any, specs: Mapping[str, InputSpec], extra_keys: Collection[str]
) -> dict[str, np.ndarray]:
    """Turn one array or mapping into ``{input name: array}``, checking the key set."""
    if isinstance(batch, np.ndarray):
        return {single_input(specs, "a bare array"): batch}
    if not isinstance(batch, Mapping):
        raise UserError(f"calibration batch must be an array or a dict, got {type(batch).__name__}")
    check_keys(batch.keys(), specs, extra_keys, "calibration data")
    return {name: np.asarray(batch[name]) for name in specs}


def check_keys(
    keys: Iterable[str], specs: Mapping[str, InputSpec], extra_keys: Collection[str], what: str
) -> None:
    keys = set(keys)
    missing = [name for name in specs if name not in keys]
    if missing:
        raise UserError(
            f"{what} lacks input {', '.join(map(repr, missing))}; "
            f"the model expects {', '.join(map(repr, specs))}"
        )
    unknown = sorted(keys - set(specs) - set(extra_keys))
    if unknown:
        raise UserError(
            f"{what} has unknown key {', '.join(map(repr, unknown))}; "
            f"the model's inputs are {', '.join(map(repr, specs))}"
        )


def check_spec(name: str, shape: tuple[int, ...], dtype: np.dtype, spec: InputSpec) -> None:
    """Raise if ``shape``/``dtype`` do not fit the model input ``name`` (dim 0 is free)."""
    want_shape, want_dtype = spec
    if dtype != want_dtype:
        raise UserError(
            f"input {name!r}: dtype {dtype}, the model expects {np.dtype(want_dtype)} "
            f"(convert with .astype(np.{np.dtype(want_dtype).name}))"
        )
    rank_ok = not want_shape or len(shape) == len(want_shape)
    dims_ok = rank_ok and all(
        not isinstance(w, int) or w == g or i == 0
        for i, (w, g) in enumerate(zip(want_shape, shape, strict=False))
    )
    if not dims_ok:
        want = "[" + ", ".join("?" if not isinstance(w, int) else str(w) for w in want_shape) + "]"
        raise UserError(f"input {name!r}: shape {list(shape)}, the model expects {want}")


def check_arrays(
    arrays: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], what: str
) -> None:
    for name, array in arrays.items():
        check_spec(name, array.shape, array.dtype, specs[name])
    counts = {name: len(array) for name, array in arrays.items() if array.ndim}
    if len(set(counts.values())) > 1:
        raise UserError(f"{what} have different sample counts per input: {counts}")
