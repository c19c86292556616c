"""Run the recovery a pruning job asked for (``--recover``) and say what it bought.

- ``bias``, ``lsq``: :func:`onnx_hwprune.recovery.recover` (``RecoverPass``, no training).
- ``distill``: ``lsq`` first (a good, cheap starting point), then :func:`distill.distill`
  bounded by ``--recover-steps`` / ``--recover-time`` on four fifths of the samples; the
  result is kept only if it beats ``lsq`` on the fifth held back.
- ``auto``: :func:`recover_auto.choose_recovery` over the three.

Every run reports its method, seconds, the calibration samples it read, and the agreement
of the result with the original (``recover_auto.fidelity``: argmax, content positions of
a CTC sequence, or ``1 - relative MSE``) before and after; for ``bias``/``lsq``/``distill``
measured on the calibration samples themselves (seen in fitting: optimistic), for
``auto`` on held-back ones.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import onnx

from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.runtime.recover_auto import (
    BatchFactory,
    choose_recovery,
    fidelity,
    split_factory,
)

__all__ = ["run_recovery"]

logger = logging.getLogger(__name__)

MIN_SAMPLES_TO_HOLD_BACK = 10  # below this, distillation trains on all and is not checked


def _samples(factory: BatchFactory) -> int:
    return sum(len(next(iter(b.values()))) for b in factory())


def _methods(opts: PruneOptions, source, groups, plan) -> dict[str, Any]:
    from onnx_hwprune.recovery import recover

    def layerwise(name: str):
        def run(start: onnx.ModelProto, factory: BatchFactory):
            model = recover(source, start, groups, plan, factory, method=name, ridge=opts.ridge)
            return model, {"samples": _samples(factory)}

        return run

    def distilled(start: onnx.ModelProto, factory: BatchFactory):
        from onnx_hwprune.runtime.distill import WriteBackMismatch, distill

        try:
            model, info = distill(source, start, factory, steps=opts.recover_steps,
                                  time_limit=opts.recover_time,
                                  progress=_progress_line())  # fmt: skip
        except WriteBackMismatch as exc:  # PP-OCRv5 rec: 3.2e-4 on its softmax after training
            logger.warning("distillation discarded, the model before it is kept: %s", exc)
            return start, {"discarded": str(exc), "samples": _samples(factory)}
        return model, info.to_json()

    return {"bias": layerwise("bias"), "lsq": layerwise("lsq"), "distill": distilled}


def _progress_line():
    """A progress line on a terminal's stderr (nothing when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return None

    def show(step: int, total: int, loss: float, seconds: float) -> None:
        sys.stderr.write(f"\rdistill: step {step}/{total}  loss {loss:.4g}  {seconds:.0f}s ")
        if step == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def run_recovery(
    opts: PruneOptions,
    source: onnx.ModelProto,
    pruned: onnx.ModelProto,
    groups: ChannelGroups,
    plan: Plan,
    factory: BatchFactory,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``(recovered model, report section)`` for ``opts.resolved_recover()``."""
    method = opts.resolved_recover()
    methods = _methods(opts, source, groups, plan)
    if method == "auto":
        if not _has_torch():
            methods.pop("distill")
        drop = opts.max_accuracy_drop  # points; choose_recovery takes a fraction
        max_drop = None if drop is None else drop / 100.0
        model, report = choose_recovery(source, pruned, methods, factory, max_drop)
        section = report.to_json()
        if "distill" not in methods:
            section["note"] = "distill not tried: PyTorch is not installed"
        return model, section
    before, t0 = fidelity(source, pruned, factory), time.monotonic()
    if method == "distill":
        model, info = _distill_checked(methods, source, pruned, factory)
    else:
        model, info = methods[method](pruned, factory)
    # "seconds" is the whole recovery (for distill: lsq + training; "lsq_seconds" the first).
    section = {**info, "method": method, "seconds": round(time.monotonic() - t0, 2)}
    section["agreement_on_calibration"] = [
        round(before, 4),
        round(fidelity(source, model, factory), 4),
    ]
    return model, section


def _distill_checked(methods, source, pruned, factory) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``lsq`` on every sample, then distillation on four fifths of them; the distilled
    weights are kept only if they agree better with the original on the held-back fifth.
    Training that the time bound cut short can make a model worse (PP-OCRv5 rec at 0.7:
    9 steps in 300 s took CER from 4.14% after ``lsq`` to 5.63%)."""
    t0 = time.monotonic()
    start, _ = methods["lsq"](pruned, factory)
    lsq_seconds = round(time.monotonic() - t0, 2)
    if _samples(factory) < MIN_SAMPLES_TO_HOLD_BACK:
        model, info = methods["distill"](start, factory)
        return model, {**info, "lsq_seconds": lsq_seconds, "held_back": 0}
    fit, held = split_factory(factory)
    model, info = methods["distill"](start, fit)
    info.update(lsq_seconds=lsq_seconds, held_back=_samples(held))
    if "discarded" in info:
        return model, info
    kept, trained = fidelity(source, start, held), fidelity(source, model, held)
    info["held_back_agreement"] = {"lsq": round(kept, 4), "distill": round(trained, 4)}
    if trained < kept:
        info["discarded"] = f"held-back agreement {trained:.4f} below lsq's {kept:.4f}"
        logger.warning("distillation discarded, the lsq model is kept: %s", info["discarded"])
        return start, info
    return model, info


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
