"""Calibration data: stream batches of model inputs from an npz, a folder of images or arrays.

Everything funnels into :func:`iter_calibration`, which yields ``{input name: batch}``
dicts checked against the model's inputs (names, dtypes, static dims). Memory stays
bounded by one batch: npz members are decoded row-block by row-block straight from the zip
(``np.load`` would read a whole member, even with ``mmap_mode``), images are read one batch
at a time.

The package: ``_specs.py`` (the model's inputs and the checks), ``_npz.py``, ``_images.py``
(``Preprocess``, image folders); this module ties them into batches and factories.

Example::

    model = onnx.load("digits_resnet.onnx")
    for batch in iter_calibration("digits_calib.npz", input_specs(model), batch_size=64):
        ...  # batch == {"input": float32 array [<=64, 1, 8, 8]}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib._images import IMAGE_SUFFIXES, Preprocess, iter_image_folder
from onnx_hwprune.frontends.calib._npz import iter_npz
from onnx_hwprune.frontends.calib._specs import (
    InputSpec,
    as_named,
    check_arrays,
    input_specs,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchFactory",
    "InputSpec",
    "Preprocess",
    "calib_factory",
    "input_specs",
    "iter_calibration",
]

logger = logging.getLogger(__name__)


def iter_calibration(
    source: str | Path | np.ndarray | Mapping[str, np.ndarray] | Iterable[Any],
    specs: Mapping[str, InputSpec],
    batch_size: int = 32,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    extra_keys: Collection[str] = ("label",),
) -> Iterator[dict[str, np.ndarray]]:
    """Yield checked batches ``{input name: array}`` from any supported source.

    Args:
        source: an ``.npz`` path (arrays keyed by input name), a folder of PNG/JPEG images
            (single-input models; read in sorted name order), an array (single-input
            models), a dict name -> array, or an iterable of such arrays/dicts, each
            taken as one batch.
        specs: the model's inputs, from :func:`input_specs`.
        batch_size: samples per batch (npz, folder, arrays); the model's static batch
            dim overrides it.
        preprocess: for image folders; defaults to ``Preprocess()`` sized from the model.
        limit: stop after this many samples.
        extra_keys: keys that an npz or dict may carry beyond the inputs and that are
            skipped (test sets carry ``label``).

    Raises:
        UserError: on any mismatch with the model, unreadable data, or zero samples.
    """
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise UserError(f"sample limit must be positive, got {limit}")
    batch_size = _effective_batch_size(specs, batch_size)
    batches = _open_source(source, specs, batch_size, preprocess, extra_keys)
    yield from _limited(batches, specs, limit)


def _effective_batch_size(specs: Mapping[str, InputSpec], batch_size: int) -> int:
    static = {shape[0] for shape, _ in specs.values() if shape and isinstance(shape[0], int)}
    if len(static) == 1 and batch_size != (fixed := static.pop()):
        logger.info("model has a static batch dim of %d: using it instead of %d", fixed, batch_size)
        return fixed
    return batch_size


def _open_source(
    source: Any,
    specs: Mapping[str, InputSpec],
    batch_size: int,
    preprocess: Preprocess | None,
    extra_keys: Collection[str],
) -> Iterator[dict[str, np.ndarray]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return iter_image_folder(path, specs, batch_size, preprocess)
        return iter_npz(path, specs, batch_size, extra_keys)
    if isinstance(source, (np.ndarray, Mapping)):
        arrays = as_named(source, specs, extra_keys)
        check_arrays(arrays, specs, "arrays")
        return _slice_arrays(arrays, batch_size)
    if isinstance(source, Iterable):
        return (as_named(batch, specs, extra_keys) for batch in source)
    raise UserError(f"unsupported calibration source of type {type(source).__name__}")


def _limited(
    batches: Iterator[dict[str, np.ndarray]], specs: Mapping[str, InputSpec], limit: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Check each batch, cut at ``limit`` samples, and fail if nothing came out."""
    seen = 0
    for batch in batches:
        check_arrays(batch, specs, "batch")
        if limit is not None and seen + _count(batch) > limit:
            batch = {name: array[: limit - seen] for name, array in batch.items()}
        if _count(batch) == 0:
            continue
        seen += _count(batch)
        yield batch
        if limit is not None and seen >= limit:
            return
    if seen == 0:
        raise UserError("calibration data has zero samples")


def _count(batch: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(batch.values())))


def _slice_arrays(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    total = _count(arrays)
    for start in range(0, total, batch_size):
        yield {name: array[start : start + batch_size] for name, array in arrays.items()}


BatchFactory = Callable[[], Iterable[Mapping[str, np.ndarray]]]
"""Calibration data is read several times (once per statistic or layer): a callable
returning a fresh iterable of batches each time."""


def calib_factory(
    source: Any,
    model: onnx.ModelProto,
    batch_size: int = 64,
    preprocess: Preprocess | str | None = None,
    limit: int | None = None,
) -> BatchFactory:
    """A re-iterable source of checked calibration batches for ``model``.

    ``source`` is anything ``iter_calibration`` takes (npz path, image folder, arrays,
    dict, list of batches; a one-shot generator is refused since it is read many times).
    The first batch is read at once, so bad data fails here with a :class:`UserError`
    before any work.
    """
    if isinstance(source, Iterable) and iter(source) is source:
        raise UserError("calibration data is read several times: pass a list, not a generator")
    prep = Preprocess.parse(preprocess) if isinstance(preprocess, str) else preprocess
    specs = input_specs(model)

    def factory() -> Iterable[Mapping[str, np.ndarray]]:
        return iter_calibration(source, specs, batch_size, prep, limit)

    next(iter(factory()))
    return factory
