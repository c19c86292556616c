"""The two providers through which passes get numbers from calibration data.

Passes never run models; they ask the ``PassContext``, and these run the model(s) batch by
batch (``{input name: array}``, e.g. from ``frontends.calib.iter_calibration``) with the
needed intermediate tensors exposed as extra outputs. Nothing is kept across batches but
running sums (or, for raw tensors, nothing at all), so memory does not grow with the
number of samples:

- :func:`channel_stats_provider` (``PassContext.activations``): per-channel reducers
  (``mean_abs``, ``apoz``, ``mean_square``, ``moments``) on chosen tensors of one graph,
  in one pass (:func:`collect_channel_stats`);
- :func:`tensor_stream_provider` (``PassContext.tensors``): raw tensors of one or several
  graphs, all run on the same batch, yielded batch by batch (recovery's refit needs the
  original's output and the pruned graph's input of a layer side by side).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.activations import (
    ChannelAPoZ,
    ChannelMeanAbs,
    ChannelReducer,
    make_session,
    with_extra_outputs,
)

__all__ = [
    "REDUCERS",
    "Batches",
    "ChannelMean",
    "ChannelMeanSquare",
    "ChannelMoments",
    "channel_stats_provider",
    "collect_channel_stats",
    "tensor_stream_provider",
]

logger = logging.getLogger(__name__)

Batches = Iterable[Mapping[str, np.ndarray]]


class ChannelMeanSquare(ChannelReducer):
    """Per-channel mean of ``x²`` over the batch and spatial positions."""

    def _reduce(self, array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return np.square(array, dtype=np.float64).sum(axis=axes)


class ChannelMean(ChannelReducer):
    """Per-channel mean of ``x`` over the batch and spatial positions."""

    def _reduce(self, array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return array.sum(axis=axes, dtype=np.float64)


class ChannelMoments:
    """Per-channel mean and (population) variance, from float64 running sums."""

    def __init__(self) -> None:
        self._first, self._second = ChannelMean(), ChannelMeanSquare()

    def __call__(self, name: str, array: np.ndarray) -> None:
        self._first(name, array)
        self._second(name, array)

    def result(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mean = self._first.result(name)
        return mean, np.maximum(self._second.result(name) - mean**2, 0.0)


REDUCERS: dict[str, type] = {
    "mean_abs": ChannelMeanAbs,
    "apoz": ChannelAPoZ,
    "mean_square": ChannelMeanSquare,
    "moments": ChannelMoments,
}
"""Reducer kinds a criterion can request, by name."""


class _Runner:
    """One session of ``model`` with ``names`` exposed; ``run(batch) -> {name: array}``."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str]) -> None:
        self.names = list(dict.fromkeys(names))
        self.session = make_session(with_extra_outputs(model, self.names))

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.names, dict(batch))
        except Exception as err:  # onnxruntime's exception types are not importable API
            raise UserError(f"onnxruntime failed on a calibration batch: {_line(err)}") from None
        return dict(zip(self.names, values, strict=True))


def _line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _streamed(
    runners: Sequence[_Runner], batches: Batches, max_samples: int | None = None
) -> Iterator[tuple[dict[str, np.ndarray], ...]]:
    seen = 0
    for batch in _limited(batches, max_samples):
        seen += 1
        yield tuple(runner.run(batch) for runner in runners)
    if not seen:
        raise UserError("calibration data has zero samples")


def _limited(batches: Batches, max_samples: int | None) -> Iterator[Mapping[str, np.ndarray]]:
    """At most ``max_samples`` samples of ``batches`` (the last batch cut)."""
    left = max_samples
    for batch in batches:
        if left is None:
            yield batch
            continue
        n = min(left, len(next(iter(batch.values()))))
        if n <= 0:
            return
        yield {k: v[:n] for k, v in batch.items()}
        left -= n


def collect_channel_stats(
    model: onnx.ModelProto, batches: Batches, requests: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, np.ndarray]]:
    """One pass: ``{reducer kind: {tensor: per-channel statistic}}``.

    Args:
        model: the model the tensors belong to.
        batches: calibration batches.
        requests: ``{reducer kind (see REDUCERS): tensor names}``.
    """
    unknown = sorted(set(requests) - set(REDUCERS))
    if unknown:
        raise ValueError(f"unknown reducer {unknown}; choose from {sorted(REDUCERS)}")
    reducers = {kind: REDUCERS[kind]() for kind in requests}
    runner = _Runner(model, [t for names in requests.values() for t in names])
    seen = 0
    for batch in batches:
        values = runner.run(batch)
        for kind, names in requests.items():
            for name in names:
                reducers[kind](name, values[name])
        seen += 1
    if not seen:
        raise UserError("calibration data has zero samples")
    return {kind: {n: reducers[kind].result(n) for n in names} for kind, names in requests.items()}


def channel_stats_provider(factory: Callable[[], Batches]):
    """The context's activation provider (``PassContext.activations``) over calibration
    batches: ``provider(graph, requests) -> {reducer kind: {tensor: statistic}}``, one
    streamed pass of the graph's model over ``factory()``."""
    from onnx_hwprune.frontends.onnx import export_model

    def provide(graph, requests: Mapping[str, Sequence[str]]) -> dict[str, dict[str, np.ndarray]]:
        return collect_channel_stats(export_model(graph), factory(), requests)

    return provide


def tensor_stream_provider(factory: Callable[[], Batches], max_samples: int | None = None):
    """The context's tensor provider (``PassContext.tensors``) over calibration batches:
    ``provider([(graph, names), ...])`` -> an iterator of ``({name: array}, ...)``, one
    tuple per batch of ``factory()`` (at most ``max_samples`` samples), every graph run on
    that batch. Each graph is exported when the provider is called, so a pass sees the
    graph as it is at that moment; a graph given already exported
    (``frontends.onnx.export_model``) is run as it is."""
    from onnx_hwprune.frontends.onnx import export_model

    def provide(requests: Sequence[tuple[Any, Sequence[str]]]):
        runners = [_Runner(_model(graph, export_model), names) for graph, names in requests]
        return _streamed(runners, factory(), max_samples)

    return provide


def _model(graph: Any, export: Callable[[Any], onnx.ModelProto]) -> onnx.ModelProto:
    return graph if isinstance(graph, onnx.ModelProto) else export(graph)
