"""Stream intermediate activations of an ONNX model through caller-supplied reducers.

Importance criteria (mean |activation|, APoZ) need statistics over the whole calibration
set, but storing every activation of every batch does not scale. So the model is run once
per batch with the chosen tensors exposed as extra graph outputs, and each tensor is handed
to reducers that keep only running sums::

    mean_abs, apoz = ChannelMeanAbs(), ChannelAPoZ()
    collect_activations(model, batches, ["/block1/relu/Relu_output_0"], [mean_abs, apoz])
    mean_abs.result("/block1/relu/Relu_output_0")  # float64 [C]

A reducer is any callable ``(tensor_name, array) -> None``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_hwprune.errors import UserError

__all__ = [
    "ChannelAPoZ",
    "ChannelMeanAbs",
    "ChannelReducer",
    "Reducer",
    "collect_activations",
    "make_session",
    "with_extra_outputs",
]

logger = logging.getLogger(__name__)

Reducer = Callable[[str, np.ndarray], None]


def make_session(model: onnx.ModelProto, intra_op_num_threads: int = 1) -> ort.InferenceSession:
    """Create a CPU session whose results do not depend on scheduling.

    One inter-op thread and sequential execution keep the order of floating-point
    reductions fixed; ``intra_op_num_threads`` is the user's speed/noise trade-off.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise UserError(f"onnxruntime cannot load the model: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def with_extra_outputs(model: onnx.ModelProto, tensor_names: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose graph also outputs ``tensor_names``.

    Shape inference supplies each tensor's type and shape. Where it cannot (custom ops,
    data-dependent shapes), the output is declared by name only: guessing an element type
    could be wrong, while an empty type lets onnxruntime use the type it computes.

    Raises:
        UserError: if a name is not produced by any node nor a graph input.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _check_produced(copy.graph, tensor_names)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy)
    except Exception as err:  # inference fails on some custom ops: types then stay unknown
        logger.warning("shape inference failed (%s); extra outputs get no type", err)
        inferred = copy
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input)}
    present = {v.name for v in copy.graph.output}
    for name in tensor_names:
        if name in present:
            continue
        value = copy.graph.output.add()
        if name in known:
            value.CopyFrom(known[name])
        else:
            value.name = name
        present.add(name)
    return copy


def _check_produced(graph: onnx.GraphProto, tensor_names: Sequence[str]) -> None:
    produced = {out for node in graph.node for out in node.output} | {v.name for v in graph.input}
    unknown = [name for name in tensor_names if name not in produced]
    if unknown:
        raise UserError(
            f"tensor {', '.join(map(repr, unknown))} is not produced by any node of the model"
        )


def collect_activations(
    model: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    tensor_names: Sequence[str],
    reducers: Reducer | Sequence[Reducer],
    intra_op_num_threads: int = 1,
) -> int:
    """Run ``model`` on every batch and feed each named tensor to every reducer.

    Args:
        model: the model; it is not modified.
        batches: ``{input name: array}`` dicts, e.g. from ``iter_calibration``.
        tensor_names: intermediate (or output) tensors to observe.
        reducers: one callable or several, each called as ``reducer(name, array)``.
        intra_op_num_threads: onnxruntime threads per op.

    Returns:
        The number of samples seen (sum of the batches' first dims).
    """
    reducer_list = [reducers] if callable(reducers) else list(reducers)
    session = make_session(with_extra_outputs(model, tensor_names), intra_op_num_threads)
    names = list(dict.fromkeys(tensor_names))
    samples = 0
    for batch in batches:
        try:
            values = session.run(names, dict(batch))
        except Exception as err:  # bad feeds surface as onnxruntime-specific types
            raise UserError(f"onnxruntime failed on a batch: {_first_line(err)}") from None
        for name, value in zip(names, values, strict=True):
            for reducer in reducer_list:
                reducer(name, value)
        samples += len(next(iter(batch.values())))
    logger.debug("collected %d tensors over %d samples", len(names), samples)
    return samples


class ChannelReducer(abc.ABC):
    """Base for per-channel running statistics over axis 1 (NCHW, or [N, F] features).

    Sums are kept in float64 per tensor name; subclasses say what to sum.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def __call__(self, name: str, array: np.ndarray) -> None:
        if array.ndim < 2:
            raise UserError(f"tensor {name!r} has rank {array.ndim}: no channel axis 1")
        axes = (0, *range(2, array.ndim))
        partial = self._reduce(array, axes)
        self._sums[name] = self._sums.get(name, 0) + partial
        self._counts[name] = self._counts.get(name, 0) + array.size // array.shape[1]

    @abc.abstractmethod
    def _reduce(self, array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """This reducer's partial sum over ``axes`` of one batch."""

    def result(self, name: str) -> np.ndarray:
        """The per-channel statistic of ``name``, float64 [C]."""
        if name not in self._sums:
            raise KeyError(f"no data reduced for tensor {name!r}")
        return self._sums[name] / self._counts[name]

    def results(self) -> dict[str, np.ndarray]:
        return {name: self.result(name) for name in self._sums}


class ChannelMeanAbs(ChannelReducer):
    """Per-channel mean of ``|x|`` over the batch and spatial positions."""

    def _reduce(self, array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return np.abs(array).sum(axis=axes, dtype=np.float64)


class ChannelAPoZ(ChannelReducer):
    """Per-channel Average Percentage of Zeros: the fraction of exact zeros (after ReLU)."""

    def _reduce(self, array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return (array == 0).sum(axis=axes, dtype=np.float64)
