"""Calibration inputs synthesised from the model itself, for jobs given no data.

::

    arrays, info = synthesize(model, samples=32, steps=100, seed=0)

Why: without data, the default job's accuracy guard compared the pruned model with the
original on N(0, 1) noise, and noise says little about what a network does on real
inputs. Measured: PP-OCRv5's direction classifier, pruned to 51% accuracy on real text
lines, kept an output cosine of 0.99 with the original on noise; the digits example pruned
with ``lsq`` (97.6% accuracy) agreed with the original on only 72% of noise inputs. Inputs
that reproduce the BatchNorm statistics the network was trained with (ZeroQ's "distilled
data", Cai et al., CVPR 2020), each pushed towards one class by the model's own classifier
(DeepInversion, Yin et al., CVPR 2020), look like real data to the features: the same two
pruned models agreed with the original on 50% and 97% of them. They also serve as
calibration data for recovery: ``lsq`` refit on them took the digits example at a 0.5
latency budget from 20.4% to 98.0% top-1 (original 98.9%).

Method: seeded N(0, 1) inputs at the planning shape; Adam on the inputs minimises, over
every BatchNormalization whose statistics are constants, the squared distance between the
per-channel mean and standard deviation of the BN's input on the batch and the running
ones (normalised by the running variance), plus, for a class-score output ``(N, K)``, a
small cross-entropy towards class ``i mod K`` for sample ``i``.

It needs BatchNorm layers (on at least :data:`BN_SHARE` of the convs: exporters that fold
BN into the convs leave nothing to match, e.g. PP-OCRv5's detector keeps 3 for 62 convs),
torch, and static input dims; :func:`unusable` says which is missing, and the caller then
falls back to noise and says why. Deterministic under ``seed`` (``torch_state``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["BN_SHARE", "METHOD", "TooSlow", "bn_statistics", "synthesize", "unusable"]

BN_SHARE = 0.5  # BatchNorm layers per conv below which the statistics say too little
CLASS_WEIGHT = 0.1  # the class term's weight beside the (summed) statistics terms
METHOD = "BatchNorm statistics matching with class targets (ZeroQ / DeepInversion)"


def bn_statistics(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{BN input tensor: (running mean, running var)}`` for every BatchNormalization whose
    statistics are constants (initializers or Constant nodes)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {
        node.input[0]: (consts[node.input[3]], consts[node.input[4]])
        for node in model.graph.node
        if node.op_type == "BatchNormalization"
        and node.input[3] in consts
        and node.input[4] in consts
    }


def _input_shapes(model: onnx.ModelProto, samples: int) -> dict[str, list[int]] | str:
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return f"input {value.name!r} is not float"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in
                value.type.tensor_type.shape.dim]  # fmt: skip
        if not dims or None in dims[1:]:
            return f"input {value.name!r} has symbolic dims besides the batch (give --input-shape)"
        shapes[value.name] = [samples, *dims[1:]]
    return shapes


def _batch_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with a symbolic batch on the inputs and outputs and no stored shapes: the
    planning shape fixes the batch at 1, and all samples run as one batch."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name for t in out.graph.initializer}
    for value in [*out.graph.input, *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and value.name not in inits:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del out.graph.value_info[:]
    return out


def unusable(model: onnx.ModelProto) -> str | None:
    """Why inputs cannot be synthesised for ``model`` (None: they can, given torch)."""
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    bns = len(bn_statistics(model))
    if bns < 2 or bns < BN_SHARE * convs:
        return (f"the model keeps BatchNorm statistics for {bns} of its {convs} convs "
                f"(folded at export): too few to synthesise inputs from")  # fmt: skip
    shapes = _input_shapes(model, 1)
    return shapes if isinstance(shapes, str) else None


def synthesize(
    model: onnx.ModelProto,
    *,
    samples: int = 32,
    steps: int = 100,
    seed: int = 0,
    threads: int = 1,
    time_limit: float | None = None,
    lr: float = 0.1,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``samples`` inputs per model input, and what the synthesis did (``info``).

    Raises:
        UserError: torch is missing (``require_torch``), or the converter lacks an op.
        TooSlow: the activations of ``samples`` inputs would exceed :data:`MEMORY_LIMIT`,
            or the first step shows the steps cannot finish in ``time_limit``.
        ValueError: :func:`unusable` gives a reason.
    """
    from onnx_hwprune.runtime.distill import fold_static_shapes, require_torch, torch_state

    torch = require_torch("synthesising calibration inputs (no --calib given)")
    from onnx_hwprune.runtime.torch_convert import OnnxModule

    reason = unusable(model)
    if reason:
        raise ValueError(reason)
    need = samples * activation_bytes(model)
    if need > MEMORY_LIMIT:
        limit = f"limit {MEMORY_LIMIT / 1e9:.0f} GB; give --calib DATA"
        raise TooSlow(f"synthesising {samples} inputs would hold about {need / 1e9:.1f} GB "
                      f"of activations ({limit})")  # fmt: skip
    model = _batch_free(model)
    shapes = _input_shapes(model, samples)
    rng = np.random.default_rng(seed)
    start = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    stats = bn_statistics(model)
    with torch_state(torch, seed, threads):
        module = OnnxModule(fold_static_shapes(model, start), fold_bn=False).eval()
        xs = [torch.tensor(start[n], requires_grad=True) for n in module.input_names]
        objective = _Objective(torch, module, stats, model)
        info = _optimise(torch, xs, objective, steps, time_limit, lr)
        arrays = {n: x.detach().numpy().copy() for n, x in zip(module.input_names, xs, strict=True)}
    info.update(method=METHOD, samples=samples, bn_layers=len(stats),
                class_targets=objective.classes)  # fmt: skip
    return arrays, info


class TooSlow(RuntimeError):
    """The model is too large to synthesise inputs for within the time or memory limit."""


MEMORY_LIMIT = 4e9  # bytes of activations held for the backward pass (all samples at once)


def activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of float activations one sample produces at the model's shapes (by onnx shape
    inference; unknown shapes count 0). Synthesis runs every sample in one batch and keeps
    them for the backward pass: on the light zoo's DenseNet-121 at 224x224, 48 samples
    estimated 15.4 GB and the process peaked at 15.8 GB (then refused the run as too slow)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (ValueError, onnx.shape_inference.InferenceError):  # over 2 GB, or a bad graph
        inferred = model  # the shapes it carries (the frontend stores them)
    total = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim]  # 0: symbolic or unknown
        if tensor.elem_type == onnx.TensorProto.FLOAT and dims and all(d > 0 for d in dims[1:]):
            total += 4 * max(dims[0], 1) * int(np.prod(dims[1:]))  # a symbolic batch as 1
    return total


def _optimise(torch, xs, objective, steps: int, time_limit: float | None, lr: float) -> dict:
    optimizer = torch.optim.Adam(xs, lr=lr)
    began, losses = time.perf_counter(), []
    for _ in range(steps):
        loss = objective(xs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        spent = time.perf_counter() - began
        # Always all the steps (a step count that hangs on the machine's speed would make
        # the output hang on it too); only the first step may say it cannot finish in time.
        if time_limit is not None and len(losses) == 1 and spent * steps > time_limit:
            raise TooSlow(f"one synthesis step took {spent:.1f} s: {steps} steps would "
                          f"take over {time_limit:.0f} s (give --calib DATA)")  # fmt: skip
    with torch.no_grad():
        final = float(objective(xs))
    seconds = time.perf_counter() - began
    return {"steps": len(losses), "loss": [losses[0], final], "seconds": round(seconds, 2)}


class _Objective:
    """The loss on a batch of inputs: BN statistics terms plus the class term."""

    def __init__(self, torch, module, stats, model: onnx.ModelProto) -> None:
        self.torch, self.module = torch, module
        self.taps = list(stats)
        f32 = torch.float32
        self.stats = {n: (torch.tensor(m, dtype=f32), torch.tensor(v, dtype=f32))
                      for n, (m, v) in stats.items()}  # fmt: skip
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        self.softmax = producer.get(module.output_names[0]) == "Softmax"
        self.classes: int | None = None  # set by the first call, from the output's shape

    def __call__(self, xs) -> Any:
        torch = self.torch
        outputs, taps = self.module.tapped(*xs, taps=self.taps)
        loss = sum(self._bn_term(taps[n], *self.stats[n]) for n in self.taps)
        scores = outputs[0]
        if scores.dim() == 2 and scores.shape[1] > 1:
            self.classes = int(scores.shape[1])
            target = torch.arange(scores.shape[0]) % self.classes
            logp = torch.log(scores.clamp_min(1e-8)) if self.softmax else scores.log_softmax(1)
            loss = loss + CLASS_WEIGHT * torch.nn.functional.nll_loss(logp, target)
        return loss

    def _bn_term(self, a, mean, var) -> Any:
        dims = [d for d in range(a.dim()) if d != 1]
        mu, sd = a.mean(dims), (a.var(dims, unbiased=False) + 1e-5).sqrt()
        scale = var.sum().clamp_min(1e-12)
        return ((mu - mean) ** 2).sum() / scale + ((sd - (var + 1e-5).sqrt()) ** 2).sum() / scale
