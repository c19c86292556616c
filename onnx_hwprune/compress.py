"""Lossless weight compression of a written model: ``OUT.onnx`` -> ``OUT.hwz`` and back.

``save(onnx_bytes, path)`` writes a ``.hwz`` file; ``load(path)`` returns the
``ModelProto`` whose ``SerializeToString()`` is byte-identical to the saved bytes
(``load_bytes`` returns the bytes themselves).

How: the initializers' ``raw_data`` fields are located in the serialized bytes by
walking the protobuf wire format (model field 7 = graph, graph field 5 = initializer,
tensor field 9 = raw_data). Each is coded on its own by the best scheme of
:mod:`onnx_hwprune._weight_codec` (entropy coding of int8 values, byte planes for
float32...); everything else (graph, small tensors, the framing of the cut-out fields)
is one zstd stream. Loading stitches the pieces back, checks the SHA-256 of the whole
and parses.

File layout: ``b"HWZ1"``, u32 header length, zstd(JSON header), skeleton payload,
tensor payloads in order. The header lists, per coded tensor, its byte range in the
model, dtype, shape, scheme and payload length.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import zstandard

from onnx_hwprune._weight_codec import Coded, decode, encode_best
from onnx_hwprune.errors import UserError

__all__ = [
    "MAGIC",
    "CompressionStats",
    "compress_bytes",
    "decompress_bytes",
    "load",
    "load_bytes",
    "save",
]

MAGIC = b"HWZ1"
_MIN_TENSOR_BYTES = 256  # smaller tensors ride in the skeleton: a header entry costs more


@dataclass(frozen=True)
class CompressionStats:
    """Sizes in bytes: the model, its coded tensors' raw bytes, their coded size, the
    ``.hwz`` file; ``schemes`` counts the tensors each scheme won."""

    model_bytes: int
    weight_bytes: int
    coded_weight_bytes: int
    file_bytes: int
    schemes: dict[str, int]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, value start, value end)`` of the length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _raw_data_ranges(buf: bytes) -> list[tuple[int, int] | None]:
    """For each graph initializer, in order, the byte range of its raw_data (or None)."""
    ranges: list[tuple[int, int] | None] = []
    for number, start, end in _fields(buf, 0, len(buf)):
        if number != 7:
            continue
        for inner, t_start, t_end in _fields(buf, start, end):
            if inner == 5:
                raw = [(s, e) for n, s, e in _fields(buf, t_start, t_end) if n == 9]
                ranges.append(raw[-1] if raw else None)
    return ranges


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return np.dtype(np.uint8)
    return dtype if dtype.kind in "iufb" else np.dtype(np.uint8)


def _segments(data: bytes, model: onnx.ModelProto) -> list[dict]:
    ranges = _raw_data_ranges(data)
    if len(ranges) != len(model.graph.initializer):
        raise ValueError("initializer count differs between wire walk and parse")
    segments = []
    for tensor, span in zip(model.graph.initializer, ranges, strict=True):
        if span is None or span[1] - span[0] < _MIN_TENSOR_BYTES:
            continue
        dtype = _np_dtype(tensor).newbyteorder("<")
        shape = [int(d) for d in tensor.dims]
        if int(np.prod(shape)) * dtype.itemsize != span[1] - span[0]:
            dtype, shape = np.dtype(np.uint8), [span[1] - span[0]]
        segments.append({"start": span[0], "end": span[1], "dtype": dtype.str, "shape": shape})
    return segments


def compress_bytes(data: bytes) -> tuple[bytes, CompressionStats]:
    """A serialized ONNX model -> the ``.hwz`` bytes (see the module docstring)."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    segments = _segments(data, model)
    skeleton, payloads, pos = bytearray(), [], 0
    schemes: dict[str, int] = {}
    for seg in segments:
        skeleton += data[pos : seg["start"]]
        values = np.frombuffer(data[seg["start"] : seg["end"]], np.dtype(seg["dtype"]))
        coded = encode_best(values.reshape(seg["shape"]))
        seg.update(scheme=coded.scheme, length=len(coded.payload))
        payloads.append(coded.payload)
        schemes[coded.scheme] = schemes.get(coded.scheme, 0) + 1
        pos = seg["end"]
    skeleton += data[pos:]
    zc = zstandard.ZstdCompressor(level=19, write_checksum=False)
    skeleton_z = zc.compress(bytes(skeleton))
    header = {
        "version": 1,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "skeleton": len(skeleton_z),
        "tensors": segments,
    }
    head = zc.compress(json.dumps(header, sort_keys=True).encode())
    blob = b"".join([MAGIC, struct.pack("<I", len(head)), head, skeleton_z, *payloads])
    weight = sum(s["end"] - s["start"] for s in segments)
    stats = CompressionStats(len(data), weight, sum(map(len, payloads)), len(blob), schemes)
    return blob, stats


def decompress_bytes(blob: bytes) -> bytes:
    """The exact model bytes a ``.hwz`` blob was made from (checked by SHA-256)."""
    if blob[:4] != MAGIC:
        raise UserError("not an onnx-hwprune compressed model (bad magic)")
    (head_len,) = struct.unpack_from("<I", blob, 4)
    dz = zstandard.ZstdDecompressor()
    header = json.loads(dz.decompress(blob[8 : 8 + head_len]))
    pos = 8 + head_len
    skeleton = dz.decompress(blob[pos : pos + header["skeleton"]])
    pos += header["skeleton"]
    out, sk = bytearray(), 0
    for seg in header["tensors"]:
        gap = seg["start"] - len(out)
        out += skeleton[sk : sk + gap]
        sk += gap
        coded = Coded(seg["scheme"], blob[pos : pos + seg["length"]])
        out += decode(coded, np.dtype(seg["dtype"]), tuple(seg["shape"]))
        pos += seg["length"]
    out += skeleton[sk:]
    if len(out) != header["size"] or hashlib.sha256(out).hexdigest() != header["sha256"]:
        raise UserError("compressed model is corrupt (checksum mismatch)")
    return bytes(out)


def save(data: bytes | onnx.ModelProto, path: str | os.PathLike) -> CompressionStats:
    """Write the ``.hwz`` of a serialized model (or of ``model.SerializeToString()``)."""
    from onnx_hwprune.frontends.onnx import write_bytes_atomic

    if isinstance(data, onnx.ModelProto):
        data = data.SerializeToString()
    blob, stats = compress_bytes(data)
    write_bytes_atomic(path, blob)
    return stats


def load_bytes(path: str | os.PathLike) -> bytes:
    """The model bytes stored in a ``.hwz`` file."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decompress_bytes(blob)


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """The model stored in a ``.hwz`` file; its serialization is the saved bytes."""
    model = onnx.ModelProto()
    model.ParseFromString(load_bytes(path))
    return model
