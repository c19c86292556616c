"""Reading and writing ONNX files: one place for the rules about user files.

Rules: the input is never modified; the output is written atomically (a temporary file in
the destination folder, then ``os.replace``), serialised deterministically, so the same
input and options give a byte-identical file.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnx_hwprune._paths import atomic_write
from onnx_hwprune.errors import UserError

__all__ = ["ModelSource", "read_model", "serialize", "write_bytes_atomic"]

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def read_model(source: ModelSource) -> onnx.ModelProto:
    """Read a model from a path, serialized bytes or a ``ModelProto`` (which is copied).

    External data is loaded from beside the file when the source is a path.
    """
    if isinstance(source, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(source)
        return copy
    if isinstance(source, bytes):
        return _parse(source, "the given bytes")
    path = Path(source)
    if not path.is_file():
        raise UserError(f"input model not found: {path}")
    model = _parse(path.read_bytes(), str(path))
    if _uses_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot read external data of {path}: {reason}") from None
    return model


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise UserError(f"{what} is not an ONNX model (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"{what} is not an ONNX model (no graph or no nodes)")
    return model


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes: map fields in a fixed order."""
    return model.SerializeToString(deterministic=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write all of ``data`` or nothing, with the mode a plain ``open`` would give."""
    atomic_write(path, data)
