"""Measure what pruning did to a model's predictions: top-1 accuracy and agreement.

Both stream the data in batches through onnxruntime (see ``frontends.calib``), so a test
set of any size costs one batch of memory plus one int per sample::

    result = evaluate("digits_resnet.onnx", "digits_test.npz")
    result.top1          # 0.984..., or None when the data has no ``label`` array
    agreement("pruned.onnx", "digits_resnet.onnx", "digits_test.npz")  # in [0, 1]

Predictions are the argmax over axis 1 of the model's first output (or ``output_name``),
which must be [N, classes].
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib import input_specs, iter_calibration
from onnx_hwprune.runtime.activations import make_session

__all__ = ["EvalResult", "agreement", "evaluate", "load_model"]

logger = logging.getLogger(__name__)

LABEL_KEY = "label"
ModelLike = onnx.ModelProto | str | Path
DataLike = str | Path | np.ndarray | Mapping[str, np.ndarray] | Iterable[Any]


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        num_samples: samples run through the model.
        top1: fraction of samples whose argmax equals the label; None without labels.
        predictions: the argmax per sample, int64 [num_samples].
    """

    num_samples: int
    top1: float | None
    predictions: np.ndarray


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Return ``model`` itself, or load it from a path with a one-line error if unusable."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError and friends: all mean "not ONNX"
        raise UserError(f"{path} is not a readable ONNX model ({type(err).__name__})") from None


def evaluate(
    model: ModelLike,
    data: DataLike,
    batch_size: int = 64,
    intra_op_num_threads: int = 1,
    output_name: str | None = None,
    limit: int | None = None,
) -> EvalResult:
    """Run ``model`` over ``data`` and score its top-1 accuracy against ``data['label']``.

    Args:
        model: an ONNX model or its path.
        data: an npz path, a dict of arrays, or anything ``iter_calibration`` takes;
            labels are read from the ``label`` key of an npz or dict when present.
        batch_size: samples per onnxruntime call.
        intra_op_num_threads: onnxruntime threads per op.
        output_name: the output holding the class scores; default the first output.
        limit: only the first ``limit`` samples.

    Raises:
        UserError: bad model, data that does not fit the model, bad labels.
    """
    proto = load_model(model)
    predictions = np.concatenate(
        list(_predict(proto, data, batch_size, intra_op_num_threads, output_name, limit))
    )
    labels = _labels(data, len(predictions))
    top1 = None if labels is None else float(np.mean(predictions == labels))
    return EvalResult(num_samples=len(predictions), top1=top1, predictions=predictions)


def agreement(
    model_a: ModelLike,
    model_b: ModelLike,
    inputs: DataLike,
    batch_size: int = 64,
    intra_op_num_threads: int = 1,
    limit: int | None = None,
) -> float:
    """Fraction of samples on which both models predict the same class (argmax).

    Both models must take the same inputs; the data is read once per model, so an
    iterable of batches must be re-iterable (a list, not a generator).
    """
    if isinstance(inputs, Iterator):
        raise UserError("agreement needs data it can read twice: pass a list, not a generator")
    pred_a = evaluate(model_a, inputs, batch_size, intra_op_num_threads, limit=limit).predictions
    pred_b = evaluate(model_b, inputs, batch_size, intra_op_num_threads, limit=limit).predictions
    if len(pred_a) != len(pred_b):
        raise UserError(f"the models saw {len(pred_a)} and {len(pred_b)} samples")
    return float(np.mean(pred_a == pred_b))


def _predict(
    model: onnx.ModelProto,
    data: DataLike,
    batch_size: int,
    intra_op_num_threads: int,
    output_name: str | None,
    limit: int | None,
) -> Iterator[np.ndarray]:
    """Yield the argmax predictions, int64, one array per batch."""
    session = make_session(model, intra_op_num_threads)
    outputs = [o.name for o in session.get_outputs()]
    output = output_name or outputs[0]
    if output not in outputs:
        raise UserError(f"model has no output {output!r}; it has {', '.join(outputs)}")
    for batch in iter_calibration(data, input_specs(model), batch_size, limit=limit):
        try:
            scores = session.run([output], batch)[0]
        except Exception as err:  # onnxruntime's exception types are not importable API
            raise UserError(f"onnxruntime failed on the data: {str(err).splitlines()[0]}") from None
        if scores.ndim != 2:
            raise UserError(f"output {output!r} has shape {scores.shape}; need [N, classes]")
        yield scores.argmax(axis=1).astype(np.int64)


def _labels(data: DataLike, count: int) -> np.ndarray | None:
    """Read the whole ``label`` array (one int per sample) if the data carries one."""
    labels: Any = None
    if isinstance(data, Mapping):
        labels = data.get(LABEL_KEY)
    elif isinstance(data, (str, Path)) and Path(data).is_file():
        labels = _npz_labels(Path(data))
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"'label' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) < count:
        raise UserError(f"'label' has {len(labels)} entries for {count} samples")
    return labels[:count]


def _npz_labels(path: Path) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[LABEL_KEY] if LABEL_KEY in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read 'label' from {path}: {err}") from None
