"""Lossless coding of one weight tensor's bytes: a registry of schemes, best one chosen.

Pure maths on numpy arrays (no onnx): :mod:`onnx_hwprune.compress` cuts the tensors out
of a model and calls :func:`encode_best` / :func:`decode`.

Schemes (every one is exact; the smallest output wins, per tensor, and its name is
stored with the tensor):

- ``raw``: the bytes as they are (tiny tensors, incompressible ones).
- ``zstd``: zstandard level 19 (9 above 1 MB, see ``_BIG``), the general-purpose coder.
- ``shuffle-zstd``: byte planes first (byte 0 of every element, then byte 1...), then
  zstd. The sign/exponent bytes of float32 weights repeat a few values; mixed with the
  noisy mantissa bytes zstd sees none of that redundancy.
- ``ans-hist``: int8/uint8 values entropy-coded with rANS (``constriction``) under the
  tensor's exact histogram (256 counts stored). Quantized weights are i.i.d. to a first
  approximation; this is within a fraction of a bit of their order-0 entropy, where
  zstd's Huffman stage pays whole bits per symbol and block headers.
- ``ans-laplace`` / ``ans-gauss``: the same with a quantized Laplace (Gaussian) model
  fitted per output channel (axis 0): two float32 per channel instead of a histogram.
  Per-tensor quantization (ddddocr's ``common_old``) leaves every channel its own width;
  a per-channel model codes each in its own few bits.

- ``ans-clustered``: channels grouped into 8 clusters by their spread, one histogram
  per cluster, rANS within each. Per-channel int8 weights differ in shape even when
  MinMax gave each the full range; on PP-OCRv5 det the order-0 entropy falls from 5.10
  to 4.91 bits per weight with 8 clusters (measured), for 8 histograms of overhead.

Why no kernel dictionary or zero-run format: measured on the zoo and OCR models, exact
repeats of int8 3x3 kernels and runs of zeros are rare after pruning (pruning removes the
dead channels these formats are built for); the entropy coders capture the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zstandard

__all__ = ["SCHEMES", "Coded", "decode", "encode_best"]

_ZSTD_LEVEL = 19
# zstd -19 runs at ~0.2 MB/s on near-random int8 weights here (43 s for PP-OCR's 8 MB
# LSTM matrix, measured); above this size the candidate uses a faster level, and the
# entropy coders (which win on such data anyway) carry the result.
_BIG = 1 << 20
_ZSTD_LEVEL_BIG = 9


@dataclass(frozen=True)
class Coded:
    """One coded tensor: the scheme that won and its payload."""

    scheme: str
    payload: bytes


@dataclass(frozen=True)
class Scheme:
    """``encode(values) -> payload or None`` (None: not applicable); ``decode(payload,
    dtype, shape) -> bytes``. ``values`` keeps the tensor's dtype and shape."""

    encode: Callable[[np.ndarray], bytes | None]
    decode: Callable[[bytes, np.dtype, tuple[int, ...]], bytes]


def _zstd(data: bytes) -> bytes:
    level = _ZSTD_LEVEL if len(data) <= _BIG else _ZSTD_LEVEL_BIG
    return zstandard.ZstdCompressor(level=level, write_checksum=False).compress(data)


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


def _shuffle(values: np.ndarray) -> bytes | None:
    size = values.dtype.itemsize
    if size == 1:
        return None
    planes = values.reshape(-1).view(np.uint8).reshape(-1, size).T
    return _zstd(np.ascontiguousarray(planes).tobytes())


def _unshuffle(payload: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    planes = np.frombuffer(_unzstd(payload), np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).tobytes()


def _symbols(values: np.ndarray) -> np.ndarray | None:
    """int8/uint8 values as ANS symbols 0..255, or None for other types."""
    if values.dtype == np.int8:
        return values.reshape(-1).astype(np.int32) + 128
    if values.dtype == np.uint8:
        return values.reshape(-1).astype(np.int32)
    return None


def _values(symbols: np.ndarray, dtype: np.dtype) -> bytes:
    offset = 128 if dtype == np.int8 else 0
    return (symbols.astype(np.int32) - offset).astype(dtype).tobytes()


def _constriction(model: str):
    """The model class and the rANS coder of ``constriction`` (imported when first used:
    its stream API lives in attributes of the compiled module, not in subpackages)."""
    import constriction

    return getattr(constriction.stream.model, model), constriction.stream.stack.AnsCoder


def _ans_words(coder) -> bytes:
    return np.asarray(coder.get_compressed(), dtype=np.uint32).tobytes()


def _hist_encode(values: np.ndarray) -> bytes | None:
    Categorical, AnsCoder = _constriction("Categorical")

    symbols = _symbols(values)
    if symbols is None:
        return None
    counts = np.bincount(symbols, minlength=256).astype(np.uint32)
    coder = AnsCoder()
    coder.encode_reverse(symbols, Categorical(counts.astype(np.float64), perfect=False))
    table = _zstd(counts.tobytes())
    return struct.pack("<I", len(table)) + table + _ans_words(coder)


def _hist_decode(payload: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    Categorical, AnsCoder = _constriction("Categorical")

    (size,) = struct.unpack_from("<I", payload)
    counts = np.frombuffer(_unzstd(payload[4 : 4 + size]), np.uint32)
    coder = AnsCoder(np.frombuffer(payload[4 + size :], np.uint32))
    model = Categorical(counts.astype(np.float64), perfect=False)
    return _values(coder.decode(model, int(np.prod(shape))), dtype)


def _channel_params(symbols: np.ndarray, channels: int, family: str) -> np.ndarray:
    """float32 ``[means, scales]`` per channel (stored, so encoder and decoder agree)."""
    rows = symbols.reshape(channels, -1).astype(np.float64)
    if family == "laplace":
        means = np.median(rows, axis=1)
        scales = np.mean(np.abs(rows - means[:, None]), axis=1)
    else:
        means, scales = rows.mean(axis=1), rows.std(axis=1)
    return np.stack([means, np.maximum(scales, 0.05)]).astype(np.float32)


def _model(family: str):
    model, _ = _constriction("QuantizedLaplace" if family == "laplace" else "QuantizedGaussian")
    return model(0, 255)


def _channel_encode(family: str) -> Callable[[np.ndarray], bytes | None]:
    def encode(values: np.ndarray) -> bytes | None:
        _, AnsCoder = _constriction("Categorical")

        symbols = _symbols(values)
        if symbols is None or values.ndim < 2 or values.shape[0] < 2:
            return None
        channels = values.shape[0]
        params = _channel_params(symbols, channels, family)
        per = symbols.size // channels
        means, scales = (np.repeat(p.astype(np.float64), per) for p in params)
        coder = AnsCoder()
        coder.encode_reverse(symbols, _model(family), means, scales)
        return struct.pack("<I", channels) + params.tobytes() + _ans_words(coder)

    return encode


def _channel_decode(family: str) -> Callable[[bytes, np.dtype, tuple[int, ...]], bytes]:
    def decode(payload: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
        _, AnsCoder = _constriction("Categorical")

        (channels,) = struct.unpack_from("<I", payload)
        params = np.frombuffer(payload, np.float32, 2 * channels, 4).reshape(2, channels)
        words = np.frombuffer(payload[4 + params.nbytes :], np.uint32)
        per = int(np.prod(shape)) // channels
        means, scales = (np.repeat(p.astype(np.float64), per) for p in params)
        symbols = AnsCoder(words).decode(_model(family), means, scales)
        return _values(symbols, dtype)

    return decode


_CLUSTERS = 8


def _clusters(rows: np.ndarray) -> np.ndarray:
    """Channel -> cluster id by the channel's spread (quantiles of the std over channels)."""
    sd = rows.astype(np.float64).std(axis=1)
    edges = np.quantile(sd, np.linspace(0, 1, _CLUSTERS + 1)[1:-1])
    return np.searchsorted(edges, sd).astype(np.uint8)


def _clustered_encode(values: np.ndarray) -> bytes | None:
    symbols = _symbols(values)
    if symbols is None or values.ndim < 2 or values.shape[0] < 2 * _CLUSTERS:
        return None
    Categorical, AnsCoder = _constriction("Categorical")
    rows = symbols.reshape(values.shape[0], -1)
    cluster = _clusters(rows)
    counts = np.stack(
        [np.bincount(rows[cluster == k].ravel(), minlength=256) for k in range(_CLUSTERS)]
    )
    coder = AnsCoder()
    for k in reversed(range(_CLUSTERS)):  # a stack: decoded in forward order
        if counts[k].any():
            model = Categorical(counts[k].astype(np.float64), perfect=False)
            coder.encode_reverse(rows[cluster == k].ravel(), model)
    table = _zstd(cluster.tobytes() + counts.astype(np.uint32).tobytes())
    return struct.pack("<I", len(table)) + table + _ans_words(coder)


def _clustered_decode(payload: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    Categorical, AnsCoder = _constriction("Categorical")
    (size,) = struct.unpack_from("<I", payload)
    table = _unzstd(payload[4 : 4 + size])
    channels = shape[0]
    cluster = np.frombuffer(table[:channels], np.uint8)
    counts = np.frombuffer(table[channels:], np.uint32).reshape(_CLUSTERS, 256)
    coder = AnsCoder(np.frombuffer(payload[4 + size :], np.uint32))
    rows = np.zeros((channels, int(np.prod(shape)) // channels), np.int32)
    for k in range(_CLUSTERS):
        members = cluster == k
        if counts[k].any():
            model = Categorical(counts[k].astype(np.float64), perfect=False)
            rows[members] = coder.decode(model, int(members.sum()) * rows.shape[1]).reshape(
                -1, rows.shape[1]
            )
    return _values(rows, dtype)


SCHEMES: dict[str, Scheme] = {
    "raw": Scheme(lambda v: v.tobytes(), lambda p, d, s: p),
    "zstd": Scheme(lambda v: _zstd(v.tobytes()), lambda p, d, s: _unzstd(p)),
    "shuffle-zstd": Scheme(_shuffle, _unshuffle),
    "ans-hist": Scheme(_hist_encode, _hist_decode),
    "ans-laplace": Scheme(_channel_encode("laplace"), _channel_decode("laplace")),
    "ans-gauss": Scheme(_channel_encode("gauss"), _channel_decode("gauss")),
    "ans-clustered": Scheme(_clustered_encode, _clustered_decode),
}


def encode_best(values: np.ndarray, schemes: tuple[str, ...] | None = None) -> Coded:
    """The smallest exact coding of ``values`` among ``schemes`` (default: all).

    Every candidate is decoded again and compared with the input before it may win, so
    a coder bug costs compression, never data. Ties go to the earlier scheme.
    """
    raw = np.ascontiguousarray(values).tobytes()
    best = Coded("raw", raw)
    for name in schemes or tuple(SCHEMES):
        payload = SCHEMES[name].encode(np.ascontiguousarray(values))
        if payload is None or len(payload) >= len(best.payload):
            continue
        if decode(Coded(name, payload), values.dtype, values.shape) == raw:
            best = Coded(name, payload)
    return best


def decode(coded: Coded, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The original bytes of a tensor coded by :func:`encode_best`."""
    if coded.scheme not in SCHEMES:
        raise ValueError(f"unknown weight coding {coded.scheme!r}")
    return SCHEMES[coded.scheme].decode(coded.payload, np.dtype(dtype), tuple(shape))
