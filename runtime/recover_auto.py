"""``--recover auto``: the cheapest recovery that keeps the pruned model faithful enough.

Methods are tried from cheap to expensive (``bias`` < ``lsq`` < ``distill``; ``distill``
starts from the ``lsq`` result). Each is fitted on the calibration samples *not* held
back (every ``holdout_every``-th sample is held back) and scored by its agreement with the
original model on the held-back ones: the fraction of samples where both predict the same
class (argmax of the first output over its class axis), the label-free proxy of accuracy.
For ``[N, T, C]`` sequences dominated by one class (a CTC recognizer's blank) it is the
agreement on the other positions (``runtime.fidelity.content_positions``), since the
blanks' share of an MSE hides misread characters; for any other output ``1 - relative
MSE``.

- With a target (``max_drop``, a fraction: 0.01 = one point), the first method whose
  agreement is at least ``1 - max_drop`` wins; if none does, the best one is kept and the
  report says the target was missed.
- Without one, ``bias`` and ``lsq`` are tried and the better is kept (``distill`` costs
  minutes; ask for it with a target or by name).

The report (:class:`AutoReport`) says which method ran, what each bought, its time and the
samples it used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.activations import make_session
from onnx_hwprune.runtime.fidelity import content_positions

__all__ = ["AutoReport", "choose_recovery", "fidelity", "split_factory"]

logger = logging.getLogger(__name__)

BatchFactory = Callable[[], Iterable[Mapping[str, np.ndarray]]]
Method = Callable[[onnx.ModelProto, BatchFactory], tuple[onnx.ModelProto, dict[str, Any]]]
ORDER = ("bias", "lsq", "distill")


def split_factory(factory: BatchFactory, every: int = 5) -> tuple[BatchFactory, BatchFactory]:
    """``(fit, held)`` factories: sample ``i`` (in reading order) is held back when
    ``i % every == 0``. Batches keep their size minus the held samples; empty ones drop."""

    def part(held: bool) -> BatchFactory:
        def batches() -> Iterable[Mapping[str, np.ndarray]]:
            start = 0
            for batch in factory():
                n = len(next(iter(batch.values())))
                mask = (np.arange(start, start + n) % every == 0) == held
                start += n
                if mask.any():
                    yield {k: v[mask] for k, v in batch.items()}

        return batches

    return part(False), part(True)


def fidelity(original: onnx.ModelProto, model: onnx.ModelProto, factory: BatchFactory) -> float:
    """Agreement of ``model`` with ``original`` on the batches (see module docstring)."""
    name_a, name_b = original.graph.output[0].name, model.graph.output[0].name
    sess_a, sess_b = make_session(original), make_session(model)
    same = total = hits = content = 0
    err = ref = 0.0
    for batch in factory():
        (a,) = sess_a.run([name_a], dict(batch))
        (b,) = sess_b.run([name_b], dict(batch))
        if a.ndim == 2 and a.shape[1] > 1:
            same += int(np.sum(a.argmax(1) == b.argmax(1)))
        if a.ndim == 3 and a.shape[1] > 1 and a.shape[2] > 1:
            for a_idx, b_idx in zip(a.argmax(2), b.argmax(2), strict=True):
                h, c = content_positions(a_idx, b_idx)
                hits, content = hits + h, content + c
        err += float(np.sum((a.astype(np.float64) - b) ** 2))
        ref += float(np.sum(np.square(a, dtype=np.float64)))
        total += len(a)
    if not total:
        raise UserError("no held-back calibration samples to score recovery on")
    if a.ndim == 2 and a.shape[1] > 1:
        return same / total
    if content:
        return hits / content
    return max(0.0, 1.0 - err / max(ref, 1e-12))


@dataclass
class AutoReport:
    """What ``auto`` tried and chose."""

    chosen: str = "none"
    target: float | None = None
    met: bool | None = None
    held_samples: int = 0
    before: float = 0.0  # fidelity of the plainly pruned model
    tried: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.chosen,
            "proxy": "agreement with the original on held-back calibration samples",
            "target_agreement": self.target,
            "target_met": self.met,
            "held_samples": self.held_samples,
            "agreement_before": round(self.before, 4),
            "tried": self.tried,
        }


def _count(factory: BatchFactory) -> int:
    return sum(len(next(iter(b.values()))) for b in factory())


def choose_recovery(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    methods: Mapping[str, Method],
    factory: BatchFactory,
    max_drop: float | None = None,
    holdout_every: int = 5,
) -> tuple[onnx.ModelProto, AutoReport]:
    """Run ``methods`` (``{name: fn(start model, fit factory) -> (model, info)}``) from
    cheap to expensive and keep the cheapest meeting ``1 - max_drop`` (module docstring).

    ``distill`` starts from the ``lsq`` model when both are given.
    """
    fit, held = split_factory(factory, holdout_every)
    report = AutoReport(target=None if max_drop is None else 1.0 - max_drop)
    report.held_samples = _count(held)
    report.before = fidelity(original, pruned, held)
    order = [m for m in ORDER if m in methods and (m != "distill" or max_drop is not None)]
    best, best_score, models = pruned, report.before, {}
    for name in order:
        start = models.get("lsq", pruned) if name == "distill" else pruned
        t0 = time.monotonic()
        model, info = methods[name](start, fit)
        seconds = time.monotonic() - t0
        score = fidelity(original, model, held)
        models[name] = model
        report.tried.append({"method": name, "agreement": round(score, 4),
                             "seconds": round(seconds, 2), **info})  # fmt: skip
        logger.info("recover auto: %s agreement %.4f in %.1fs", name, score, seconds)
        if score > best_score or (report.chosen == "none" and score >= best_score):
            best, best_score, report.chosen = model, score, name
        if report.target is not None and score >= report.target:
            best, report.chosen = model, name
            break
    report.met = None if report.target is None else best_score >= report.target
    return best, report
