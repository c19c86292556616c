"""Post-training int8 quantization with onnxruntime's own quantizer.

The tool does not quantize by itself: ``onnxruntime.quantization.quantize_static`` does,
on the model with its BatchNorms folded into their convs (``bn_fold.py``),
in QDQ format with per-channel int8 weights and uint8 activations (onnxruntime's
recommended U8S8 pair on x86; its CPU provider fuses each DequantizeLinear -> op ->
QuantizeLinear into an int8 kernel), calibrated with MinMax on the same calibration
batches that drove pruning and recovery.

onnxruntime's quantizer reads and writes files and is not given a seed; MinMax
calibration has no randomness, so the same model and batches give the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError

__all__ = ["QUANTIZE_SCHEMES", "quantize_int8", "quantization_summary", "qdq_for_planning"]

log = logging.getLogger(__name__)

BatchFactory = Callable[[], Iterable[Mapping[str, np.ndarray]]]

QUANTIZE_SCHEMES: dict[str, str] = {
    "int8": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, "
    "MinMax calibration on --calib",
}


def quantization_summary(scheme: str) -> dict[str, Any]:
    """What the report records about the quantization (one source of truth)."""
    if scheme not in QUANTIZE_SCHEMES:
        raise UserError(f"unknown quantization {scheme!r}; choose from {sorted(QUANTIZE_SCHEMES)}")
    return {
        "scheme": scheme,
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, per tensor",
        "calibration": "MinMax",
    }


class _Reader:
    """A ``CalibrationDataReader`` over the job's calibration batches (duck-typed: the
    quantizer only calls ``get_next``; ``rewind`` reads them again)."""

    def __init__(self, factory: BatchFactory, names: set[str]) -> None:
        self._factory, self._names = factory, names
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {k: v for k, v in batch.items() if k in self._names}

    def rewind(self) -> None:
        self._it = iter(self._factory())


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer warns through the root logger ("consider pre-processing",
    "axis out of range" for 1-D BatchNorm weights it then quantizes per tensor): advice
    for its own users, noise in ours. Dropped for the call only, then restored."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quantize_int8(model: onnx.ModelProto, factory: BatchFactory) -> onnx.ModelProto:
    """``model`` quantized to int8 (see the module docstring); ``model`` is not modified.

    Raises:
        UserError: onnxruntime's quantizer refused the model.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Reader, CalibrationDataReader):
        pass

    from onnx_hwprune.runtime.bn_fold import fold_batchnorm

    names = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    with tempfile.TemporaryDirectory(prefix="hwprune-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        # Folded first, as deployed: quantize_static would quantize each BatchNorm as an
        # op of its own and leave it in float between a dequantize and a quantize.
        src.write_bytes(fold_batchnorm(model).SerializeToString())
        try:
            with _quiet_root_logger():
                quantize_static(
                    str(src),
                    str(dst),
                    Reader(factory, names),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                )
        except Exception as exc:  # the quantizer raises bare Exceptions and ValueErrors
            raise UserError(f"onnxruntime could not quantize the model: {exc}") from None
        out = onnx.load(str(dst))
    log.info("quantized to int8: %d nodes", len(out.graph.node))
    return out


def qdq_for_planning(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The int8 (QDQ) form of a static-shaped ``model``, for planning against int8 kernels.

    Quantized like ``--quantize int8`` does it, on two batches of N(0, 1) inputs in place
    of the calibration data: the scales decide values, not which kernel runs or how fast.
    Layer node names are kept by the quantizer, so the cost model's layers are the float
    graph's layers with int8 signatures.
    """
    rng = np.random.default_rng(seed)
    weights = {t.name for t in model.graph.initializer}
    shapes = {
        i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in weights
    }
    batches = [
        {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(2)
    ]
    return quantize_int8(model, lambda: iter(batches))
