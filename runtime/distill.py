"""Label-free distillation: train the pruned model to behave like the original.

::

    repaired, info = distill(original, pruned, factory, steps=300, seed=0)

The pruned ONNX model is converted to PyTorch (``runtime/torch_convert.py``, BatchNorm
kept unfolded so that every trained tensor is one initializer of the graph), and trained
with Adam to match the *original* model's outputs, computed by onnxruntime on the same
augmented calibration batch (the teacher labels whatever input it is shown, so any
augmentation is label-consistent). Where an output is a Softmax, its input (the logits) is
matched instead: probabilities saturate and give no gradient once the student is
confidently wrong (KL divergence on the logits is an option, ``softmax_loss``). Optional
feature matching adds the kept channels of chosen intermediate tensors.

Trained: Conv/ConvTranspose/Gemm weights and biases, constant MatMul weights, BatchNorm
scale and shift (running statistics stay: with a few hundred samples re-estimating them
is noisier than keeping them), PRelu slopes, and the constant operand of an Add that
follows a MatMul (a bias). Nothing else (Clip bounds, shapes) moves.

A step's batch runs through torch in passes of :data:`MICRO_BATCH` samples whose gradients
add up to the batch's (the same step, several times faster on CPU for large inputs), on
channels-last tensors.

Deterministic under ``seed``: batch order and augmentation come from a numpy generator,
torch's RNG is forked and seeded, deterministic algorithms and a fixed thread count are
set for the duration and restored afterwards. Bounded by ``steps`` and ``time_limit``
(whichever comes first). The trained weights are written back into a copy of the pruned
graph, and the written-back model is checked against the trained module in onnxruntime.

torch is an optional extra: without it :func:`require_torch` raises a one-line
:class:`UserError` naming the extra to install.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.activations import make_session, with_extra_outputs

__all__ = [
    "TORCH_EXTRA", "DistillResult", "WriteBackMismatch", "distill", "distill_targets",
    "require_torch", "torch_state",
]  # fmt: skip

logger = logging.getLogger(__name__)

TORCH_EXTRA = "pip install 'onnx-hwprune[torch]'"
WRITE_BACK_TOLERANCE = 1e-4
# Samples per forward/backward pass; a batch is split into such chunks and their gradients
# summed, which is the same step. Large batches run several times slower per sample on CPU
# (PP-OCRv5 rec at 48x320, one thread: 281 ms per sample at 64, 76 ms at 16, interleaved,
# median of 5; cls and det did not change): big activations miss every cache and each fresh
# allocation is page-faulted in. tools/bench_distill_speed.py measures it.
MICRO_BATCH = 16
ROUNDING_FACTOR = 10.0  # see _check_write_back
_TRAINED_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "PRelu": (1,)}
_TRAINED_INPUTS["BatchNormalization"] = (1, 2)

BatchFactory = Callable[[], Iterable[Mapping[str, np.ndarray]]]
Progress = Callable[[int, int, float, float], None]  # step, total steps, loss, seconds


def require_torch(feature: str = "--recover distill") -> Any:
    """The torch module, or a one-line :class:`UserError` naming the extra."""
    try:
        import torch
    except ImportError:
        raise UserError(f"{feature} needs PyTorch: {TORCH_EXTRA}") from None
    return torch


@dataclass
class DistillResult:
    """What a distillation run did: steps, seconds, samples seen, loss first/last."""

    steps: int = 0
    seconds: float = 0.0
    samples: int = 0
    loss: list[float] = field(default_factory=list)  # [first step's, mean of the last 10]
    write_back_error: float = 0.0
    converter_error: float = 0.0  # the same comparison before training: float rounding

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "samples": self.samples,
            "loss": [round(v, 6) for v in self.loss],
            "write_back_error": self.write_back_error,
            "converter_error": self.converter_error,
        }


def distill_targets(model: onnx.ModelProto) -> list[str]:
    """Tensors to match: each graph output, or the input of the Softmax that produces it
    (through Reshape/Flatten/Identity, as exporters wrap it)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for value in model.graph.output:
        name, node = value.name, producer.get(value.name)
        while node is not None and node.op_type in ("Reshape", "Flatten", "Identity"):
            node = producer.get(node.input[0])
        out.append(node.input[0] if node is not None and node.op_type == "Softmax" else name)
    return list(dict.fromkeys(out))


def softmax_axes(model: onnx.ModelProto) -> dict[str, tuple[int, bool]]:
    """``{logits: (axis, flattened)}`` for each :func:`distill_targets` tensor that feeds a
    Softmax: the axis it normalises, and whether (opset < 13) it normalises every axis from
    there on as one."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    targets = set(distill_targets(model))
    out = {}
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.input[0] in targets:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            out[node.input[0]] = (axis, opset < 13)
    return out


def trainable_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the float initializers distillation trains (see module docstring)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        positions: Sequence[int] = _TRAINED_INPUTS.get(node.op_type, ())
        if node.op_type == "MatMul":
            positions = (0, 1)
        elif node.op_type == "Add":
            follows_matmul = any(
                producer.get(i) is not None and producer[i].op_type == "MatMul" for i in node.input
            )
            positions = (0, 1) if follows_matmul else ()
        names += [node.input[i] for i in positions if i < len(node.input)]
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    return [n for n in dict.fromkeys(names) if n in inits and inits[n].data_type in float_types]


def distill(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    factory: BatchFactory,
    *,
    steps: int = 300,
    time_limit: float | None = None,
    lr: float = 3e-4,
    seed: int = 0,
    augment: bool = True,
    features: Mapping[str, np.ndarray] | None = None,
    softmax_loss: str = "mse",
    threads: int = 1,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, DistillResult]:
    """Train a copy of ``pruned`` to reproduce ``original`` on the calibration inputs.

    Args:
        original: the teacher (not modified); the same input names as ``pruned``.
        pruned: the student's starting point (not modified), e.g. after ``lsq``.
        factory: calibration batches, read once per epoch (see ``frontends.calib.calib_factory``).
        steps, time_limit: stop after this many Adam steps or seconds, whichever first.
        lr: Adam learning rate (scaled per tensor by Adam itself). 3e-4: on PP-OCRv5's
            direction classifier 1e-3 undid lsq's repair on 1,024 lines (README, *Recovery*).
        augment: random shifts and noise on 4-D image inputs (no flips: see _augment).
        features: ``{tensor: kept original channels}`` also matched (e.g. pruned groups'
            activations); the pruned tensor holds those channels of the original one.
        softmax_loss: how logits that feed a Softmax are matched: ``"mse"`` on the logits
            themselves, or ``"kl"``, the teacher's distribution against the student's (KL
            divergence over the Softmax's axis, :func:`_soft_target_loss`). Measured from
            the same ``lsq`` starts (1,024 rendered lines, 4/5 fitted): PP-OCRv5 cls at 0.8,
            300 steps, accuracy 98.5% by MSE, 96.0% by KL (``lsq`` 96.0%); rec at 0.8,
            900 s, CER on 300 lines 5.57% by KL at lr 1e-4 (``lsq`` 5.60%), 6.8% at 3e-4.
        threads: torch intra-op threads (fixed, for reproducibility; 1 by default since
            OpenMP threads on a busy CPU slow training down many times).
        progress: called after every step with (step, steps, loss, seconds).

    Raises:
        UserError: torch missing, or the pruned graph holds an op the converter lacks.
    """
    torch = require_torch()
    result = DistillResult()
    with torch_state(torch, seed, threads):
        first = dict(next(iter(factory())))
        shape = {k: v.shape for k, v in first.items()}
        step, params = _make_step(torch, original, pruned, first, features, threads,
                                  softmax_loss=softmax_loss)  # fmt: skip
        module, names = step.modules[step.chunk], step.names
        probe = {k: v[: step.chunk] for k, v in first.items()}
        result.converter_error = _discrepancy(torch, module, pruned, probe, names)
        optimizer = torch.optim.Adam([p for _, p in params], lr=lr)
        batches = _same_shape(factory, shape)
        _train(step, batches, optimizer, steps, time_limit, np.random.default_rng(seed),
               augment, result, progress)  # fmt: skip
        trained = {name: p.detach().cpu().numpy() for name, p in params}
        out = _write_back(pruned, trained)
        result.write_back_error = _discrepancy(torch, module, out, probe, names)
        _check_write_back(result)
    return out, result


def _same_shape(factory: BatchFactory, shape: Mapping[str, tuple]) -> BatchFactory:
    """Only the batches shaped like the first (a graph with folded shapes needs that; a
    short last batch is dropped)."""

    def batches() -> Iterable[Mapping[str, np.ndarray]]:
        return (b for b in factory() if all(b[k].shape == s for k, s in shape.items()))

    return batches


class torch_state:
    """Seeded, deterministic, fixed-thread torch for a block; the previous state after."""

    def __init__(self, torch: Any, seed: int, threads: int) -> None:
        self.torch, self.seed, self.threads = torch, seed, threads

    def __enter__(self) -> None:
        t = self.torch
        self.saved = (t.get_num_threads(), t.are_deterministic_algorithms_enabled())
        self.rng = t.random.fork_rng(devices=[])
        self.rng.__enter__()
        t.manual_seed(self.seed)
        t.set_num_threads(self.threads)
        t.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        threads, deterministic = self.saved
        self.torch.set_num_threads(threads)
        self.torch.use_deterministic_algorithms(deterministic)
        self.rng.__exit__(*exc)


_FOLDABLE = {"Shape", "Cast", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze",
             "Mul", "Add", "Sub", "Div", "Reshape", "Range", "ConstantOfShape"}  # fmt: skip


def fold_static_shapes(model: onnx.ModelProto, batch: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy where every ``Shape`` node, and every shape computation on constants after
    it, becomes an initializer (the converter wants constant shapes), with the sizes the
    tensors have on ``batch``: the result only runs on inputs of that shape.

    Exported graphs often keep ``Shape -> Slice -> Concat -> Reshape`` chains even when
    every size is known; onnxruntime gives the sizes, onnx's reference evaluator the rest.
    """
    from onnx.reference import ReferenceEvaluator

    probed = [n.input[0] for n in model.graph.node if n.op_type == "Shape"]
    if not probed:
        return model
    session = make_session(with_extra_outputs(model, probed))
    values = session.run(probed, dict(batch))
    shapes = {name: list(v.shape) for name, v in zip(probed, values, strict=True)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = {t.name for t in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        value = _fold_node(node, consts, shapes, out, ReferenceEvaluator)
        if value is None:
            keep.append(node)
            continue
        out.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        consts.add(node.output[0])
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _fold_node(node, consts, shapes, model, evaluator) -> np.ndarray | None:
    if node.op_type == "Shape" and node.input[0] in shapes and len(node.attribute) == 0:
        return np.array(shapes[node.input[0]], dtype=np.int64)
    if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
        return numpy_helper.to_array(node.attribute[0].t)  # exporters' shape constants
    if node.op_type not in _FOLDABLE or len(node.output) != 1:
        return None
    if not all(i in consts for i in node.input if i):
        return None
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if any(inits[i].dtype.kind == "f" and inits[i].size > 64 for i in node.input if i):
        return None  # arithmetic on weights is the graph's business, not a shape
    single = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(i, inits[i].dtype.num, None) for i in []],
        [onnx.helper.make_tensor_value_info(node.output[0], 0, None)],
        [numpy_helper.from_array(inits[i], i) for i in dict.fromkeys(node.input) if i],
    )  # fmt: skip
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    (value,) = evaluator(onnx.helper.make_model(single, opset_imports=opset)).run(None, {})
    return np.asarray(value)


def _trainable(module: Any, names: Sequence[str]) -> list[tuple[str, Any]]:
    """The module's buffers for ``names`` (initializer names), switched to require grad."""
    out = []
    for name in names:
        buffer = module._names.get(name)
        if buffer is None:
            continue
        tensor = getattr(module, buffer)
        tensor.requires_grad_(True)
        out.append((name, tensor))
    return out


def _make_step(torch: Any, original: onnx.ModelProto, pruned: onnx.ModelProto,
               batch: Mapping[str, np.ndarray], features: Mapping[str, np.ndarray] | None,
               threads: int, chunk: int | None = None,
               softmax_loss: str = "mse") -> tuple[_Step, list]:  # fmt: skip
    """The training step for batches shaped like ``batch`` (passes of ``chunk`` samples;
    None: :func:`_micro_batch`'s choice) and the ``(name, tensor)`` pairs it trains."""
    features = dict(features or {})
    names = distill_targets(pruned) + list(features)
    teacher = make_session(with_extra_outputs(original, names), intra_op_num_threads=threads)
    if chunk is None:
        chunk = _micro_batch(batch, teacher.run(names, dict(batch)))
    modules = _chunk_modules(torch, with_extra_outputs(pruned, names), batch, chunk)
    params = _trainable(modules[chunk], trainable_initializers(pruned))
    softmax = softmax_axes(pruned) if softmax_loss == "kl" else {}
    return _Step(torch, modules, teacher, names, features, chunk, softmax), params


def _micro_batch(batch: Mapping[str, np.ndarray], wanted: Sequence[np.ndarray]) -> int:
    """Samples per pass: :data:`MICRO_BATCH`, or the whole batch where it is smaller or
    where a matched tensor is not batch-first, so that rows cannot be told apart."""
    size = len(next(iter(batch.values())))
    if any(w.ndim == 0 or w.shape[0] != size for w in wanted):
        return size
    return min(size, MICRO_BATCH)


def _chunk_modules(torch: Any, model: onnx.ModelProto, batch: Mapping[str, np.ndarray],
                   chunk: int) -> dict[int, Any]:  # fmt: skip
    """One module per pass size (a full chunk, and the rest of the batch if the chunk does
    not divide it): the graph's shapes are folded for one size. They share one set of
    tensors, so the passes' gradients add up in the same place."""
    from onnx_hwprune.runtime.torch_convert import OnnxModule

    size = len(next(iter(batch.values())))
    modules: dict[int, Any] = {}
    for n in dict.fromkeys((chunk, size % chunk or chunk)):
        probe = {k: v[:n] for k, v in batch.items()}
        modules[n] = _channels_last(torch, OnnxModule(fold_static_shapes(model, probe),
                                                      fold_bn=False))  # fmt: skip
    first, weights = modules[chunk], {t.name for t in model.graph.initializer}
    for module in modules.values():
        for name, buffer in module._names.items():
            if name in weights:  # not the shape constants folded for this size
                module._buffers[buffer] = getattr(first, first._names[name])
    return modules


def _channels_last(torch: Any, module: Any) -> Any:
    """Image weights and activations in NHWC: mkldnn's convs and their backward run about
    20% faster so (PP-OCRv5 rec, tools/bench_distill_speed.py); results are unchanged up
    to float rounding, which the write-back check measures from this module."""
    return module.to(memory_format=torch.channels_last)


@dataclass
class _Step:
    """One Adam step's forward and backward passes, a chunk of samples at a time."""

    torch: Any
    modules: Mapping[int, Any]  # by samples per pass, sharing their tensors
    teacher: Any
    names: Sequence[str]
    features: Mapping[str, np.ndarray]
    chunk: int
    softmax: Mapping[str, tuple[int, bool]] = field(default_factory=dict)  # matched by KL

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> float:
        """Accumulate the gradients of the batch's loss; return the loss."""
        torch = self.torch
        wanted = dict(zip(self.names, self.teacher.run(self.names, dict(feeds)), strict=True))
        for name, indices in self.features.items():
            wanted[name] = wanted[name][:, indices]
        scales = {n: float(np.mean(np.square(w, dtype=np.float64))) + 1e-8
                  for n, w in wanted.items()}  # fmt: skip
        size = len(next(iter(feeds.values())))
        total = 0.0
        for lo in range(0, size, self.chunk):
            part, samples = slice(lo, lo + self.chunk), min(size, lo + self.chunk) - lo
            module = self.modules[samples]
            inputs = [_as_tensor(torch, feeds[n][part]) for n in module.input_names]
            outputs = dict(zip(module.output_names, module(*inputs), strict=True))
            part_wanted = {n: w[part] for n, w in wanted.items()}
            loss = _loss(torch, outputs, part_wanted, scales, self.softmax)
            loss = loss * samples / size  # the batch mean, in parts
            loss.backward()
            total += float(loss.detach())
        return total


def _as_tensor(torch: Any, array: np.ndarray) -> Any:
    # A read-only array is copied: torch warns on (and must not write to) a shared one.
    array = np.ascontiguousarray(array) if array.flags.writeable else np.array(array)
    tensor = torch.from_numpy(array)
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor


def _train(step: _Step, factory, optimizer, steps, time_limit, rng, augment, result,
           progress) -> None:  # fmt: skip
    """The Adam loop: one calibration batch per step, epochs until a bound is hit."""
    start, losses = time.monotonic(), []
    while result.steps < steps:
        seen = 0
        for batch in factory():
            seen += 1
            feeds = _augment(batch, rng) if augment else dict(batch)
            optimizer.zero_grad()
            losses.append(step(feeds))
            optimizer.step()
            result.steps += 1
            result.samples += len(next(iter(feeds.values())))
            result.seconds = time.monotonic() - start
            if progress is not None:
                progress(result.steps, steps, losses[-1], result.seconds)
            if result.steps >= steps or (time_limit is not None and result.seconds >= time_limit):
                result.loss = [losses[0], float(np.mean(losses[-10:]))]
                return
        if not seen:
            raise UserError("calibration data has zero samples")
    result.loss = [losses[0], float(np.mean(losses[-10:]))] if losses else []


def _loss(torch, outputs, wanted, scales, softmax):
    """Sum over matched tensors: for logits in ``softmax``, :func:`_soft_target_loss`;
    for the rest the MSE normalised by the teacher's mean square over the whole batch, so
    every tensor counts about equally whatever its scale."""
    total = 0.0
    for name, target in wanted.items():
        target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
        if name in softmax:
            total = total + _soft_target_loss(torch, outputs[name], target_t, *softmax[name])
        else:
            total = total + torch.mean((outputs[name] - target_t) ** 2) / scales[name]
    return total


def _soft_target_loss(torch, logits, target, axis: int, flattened: bool):
    """KL divergence from the teacher's Softmax to the student's, averaged over the other
    positions. The case for it: an MSE on logits weighs every class alike (PP-OCRv5's
    recognizer scores 18,385 characters at each of 40 positions), KL by the teacher's
    probability. Measured, it did not pay (``distill``'s ``softmax_loss``), so it is not
    the default."""
    if flattened:  # opset < 13: one distribution over every axis from ``axis`` on
        axis = axis % logits.ndim
        logits, target, axis = logits.flatten(start_dim=axis), target.flatten(start_dim=axis), -1
    log_q = torch.log_softmax(logits, dim=axis)
    log_p = torch.log_softmax(target, dim=axis)
    return torch.mean(torch.sum(log_p.exp() * (log_p - log_q), dim=axis))


def _augment(batch: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Image augmentation on 4-D float inputs: a random shift of up to 1/8 of each side
    (edge-padded) and Gaussian noise at 5% of the batch's standard deviation. Other inputs
    pass unchanged. No flips: a mirrored text line or oriented object lies outside the
    data the model serves, and the student spends its capacity on inputs it will never
    see (PP-OCRv5's direction classifier from 256 lines: 89.0% with flips, 95.5%
    without; ``tools/bench_distill_settings.py``)."""
    out = {}
    for name, x in batch.items():
        if x.ndim != 4 or x.dtype.kind != "f":
            out[name] = x
            continue
        x = _shift(x, rng)
        std = float(x.std()) or 1.0
        out[name] = (x + rng.normal(0.0, 0.05 * std, x.shape)).astype(x.dtype)
    return out


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[2:]
    dy, dx = max(1, h // 8), max(1, w // 8)
    padded = np.pad(x, ((0, 0), (0, 0), (dy, dy), (dx, dx)), mode="edge")
    oy, ox = int(rng.integers(0, 2 * dy + 1)), int(rng.integers(0, 2 * dx + 1))
    return padded[:, :, oy : oy + h, ox : ox + w]


def _write_back(pruned: onnx.ModelProto, trained: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    for tensor in out.graph.initializer:
        if tensor.name in trained:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            value = trained[tensor.name].astype(dtype).reshape(tuple(tensor.dims))
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return out


class WriteBackMismatch(RuntimeError):
    """The written-back ONNX model does not reproduce the trained module."""


def _discrepancy(torch, module, model: onnx.ModelProto, batch, names: Sequence[str]) -> float:
    """Largest difference between ``module`` and ``model`` in onnxruntime on ``batch``,
    relative to each tensor's largest magnitude, over ``names`` (the tensors training
    matched: the logits where a Softmax follows, whose squashing would hide an error)."""
    got = make_session(with_extra_outputs(model, names)).run(list(names), dict(batch))
    with torch.no_grad():
        inputs = [_as_tensor(torch, batch[n]) for n in module.input_names]
        outs = dict(zip(module.output_names, module(*inputs), strict=True))
    worst = 0.0
    for name, value in zip(names, got, strict=True):
        want = outs[name].numpy()
        scale = max(1e-6, float(np.abs(want).max()))
        worst = max(worst, float(np.abs(value - want).max()) / scale)
    return worst


def _check_write_back(result: DistillResult) -> None:
    """The written-back model must compute what the trained module computes: within
    :data:`WRITE_BACK_TOLERANCE`, or within :data:`ROUNDING_FACTOR` times what torch and
    onnxruntime already differed by before training, whichever is larger. Deep real
    networks differ by float rounding alone (PP-OCRv5 det's sigmoid map: 5.2e-5 before
    training, 1.6e-4 after; rec's logits 3e-6, then 3.3e-5); a weight written to the
    wrong place moves the outputs by O(1)."""
    limit = max(WRITE_BACK_TOLERANCE, ROUNDING_FACTOR * result.converter_error)
    if result.write_back_error > limit:
        raise WriteBackMismatch(
            f"distilled weights written back differ from torch by {result.write_back_error:.2e}"
            f" (before training: {result.converter_error:.2e})"
        )
