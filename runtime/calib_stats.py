"""Statistics over calibration data for data-driven criteria and for recovery.

Every function takes an iterable of batches (``{input name: array}``, e.g. from
``frontends.calib.iter_calibration``), runs the model(s) batch by batch with the needed
intermediate tensors exposed as extra outputs, and keeps only running sums, so memory does
not grow with the number of samples:

- :func:`collect_channel_stats`: per-channel reducers (``mean_abs``, ``apoz``,
  ``mean_square``, ``moments``) on chosen tensors of one model, in one pass;
- :func:`accumulate_normal_equations`: ``AᵀA``, ``AᵀT`` for one consumer layer, from the
  pruned model's input to it and the original model's output of it (same batches fed to
  both); at most ``max_rows`` rows per batch, picked with a fixed seed;
- :func:`patch_column_means`: exact patch-column means of consumer inputs (for bias
  compensation);
- :func:`paired_moments`: per-channel mean/var of tensors in the original and the pruned
  model (for BatchNorm refresh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.transform.recover import (
    LinearLayer,
    NormalEquations,
    output_rows,
    patch_column_sums,
    patch_rows,
    row_count,
)
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
    "accumulate_normal_equations",
    "channel_stats_provider",
    "collect_channel_stats",
    "paired_moments",
    "patch_column_means",
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


def _paired(
    a: _Runner, b: _Runner, batches: Batches
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    seen = 0
    for batch in batches:
        seen += 1
        yield a.run(batch), b.run(batch)
    if not seen:
        raise UserError("calibration data has zero samples")


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


def accumulate_normal_equations(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    layer: LinearLayer,
    tensors: tuple[str, str],
    batches: Batches,
    max_rows: int = 4096,
    seed: int = 0,
    equations: NormalEquations | None = None,
) -> NormalEquations:
    """Normal equations of one consumer: pruned input rows -> original kept output rows.

    Args:
        tensors: ``(input tensor, output tensor)`` names of the layer (same in both models).
        max_rows: rows kept per batch; more are subsampled uniformly without replacement
            by a generator seeded with ``seed`` (so the result is deterministic).
        equations: where to accumulate (anything with ``add(a, t)``, e.g. the per-group
            ``BlockEquations``); a plain one over the kept columns by default.
    """
    x_name, y_name = tensors
    rng = np.random.default_rng(seed)
    eq = equations or NormalEquations(len(layer.kept_columns()), len(layer.out_keep))
    pairs = _paired(_Runner(original, [y_name]), _Runner(pruned, [x_name]), batches)
    for orig, prun in pairs:
        x = prun[x_name]
        total = row_count(layer, x)
        rows = None if total <= max_rows else np.sort(rng.choice(total, max_rows, replace=False))
        target = output_rows(layer, orig[y_name], rows)[:, layer.out_keep]
        eq.add(patch_rows(layer, x, rows), target)
    return eq


def patch_column_means(
    model: onnx.ModelProto, layers: Mapping[str, tuple[LinearLayer, str]], batches: Batches
) -> dict[str, np.ndarray]:
    """``{key: mean of every patch column}`` of each layer's input tensor, in one pass.

    ``layers`` maps any key (a node name) to ``(layer, input tensor name)``.
    """
    runner = _Runner(model, [name for _, name in layers.values()])
    sums = {key: np.zeros(0) for key in layers}
    counts = dict.fromkeys(layers, 0)
    for batch in batches:
        values = runner.run(batch)
        for key, (layer, name) in layers.items():
            s, n = patch_column_sums(layer, values[name])
            sums[key] = sums[key] + s if counts[key] else s
            counts[key] += n
    if not any(counts.values()):
        raise UserError("calibration data has zero samples")
    return {key: sums[key] / counts[key] for key in layers}


def paired_moments(
    original: onnx.ModelProto, pruned: onnx.ModelProto, tensors: Sequence[str], batches: Batches
) -> dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """``{tensor: ((mean, var) in original, (mean, var) in pruned)}`` per channel (axis 1).

    The original's statistics cover all its channels; callers slice the kept ones.
    """
    moments_o, moments_p = ChannelMoments(), ChannelMoments()
    for orig, prun in _paired(_Runner(original, tensors), _Runner(pruned, tensors), batches):
        for name in tensors:
            moments_o(name, orig[name])
            moments_p(name, prun[name])
    return {name: (moments_o.result(name), moments_p.result(name)) for name in tensors}


def channel_stats_provider(factory: Callable[[], Batches]):
    """The context's activation provider (``PassContext.activations``) over calibration
    batches: ``provider(graph, requests) -> {reducer kind: {tensor: statistic}}``, one
    streamed pass of the graph's model over ``factory()``."""
    from onnx_hwprune.frontends.onnx import export_model

    def provide(graph, requests: Mapping[str, Sequence[str]]) -> dict[str, dict[str, np.ndarray]]:
        return collect_channel_stats(export_model(graph), factory(), requests)

    return provide
