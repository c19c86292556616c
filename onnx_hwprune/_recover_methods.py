"""Run the recovery a pruning job asked for (``--recover``) and say what it bought.

- ``bias``, ``lsq``: :func:`onnx_hwprune.recovery.recover` (``RecoverPass``, no training).
- ``distill``: ``lsq`` first (a good, cheap starting point), then :func:`distill.distill`
  bounded by ``--recover-steps`` / ``--recover-time``.
- ``auto``: :func:`recover_auto.choose_recovery` over the three.

Every run reports its method, seconds, the calibration samples it read, and the agreement
of the result with the original (argmax, or ``1 - relative MSE`` for non-class outputs)
before and after; for ``bias``/``lsq``/``distill`` measured on the calibration samples
themselves (seen in fitting: optimistic), for ``auto`` on held-back ones.
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
from onnx_hwprune.runtime.recover_auto import BatchFactory, choose_recovery, fidelity

__all__ = ["run_recovery"]

logger = logging.getLogger(__name__)


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
        start, lsq_info = methods["lsq"](pruned, factory)
        lsq_seconds = round(time.monotonic() - t0, 2)
        model, info = methods["distill"](start, factory)
        info["lsq_seconds"] = lsq_seconds
    else:
        model, info = methods[method](pruned, factory)
    # "seconds" is the whole recovery (for distill: lsq + training; "lsq_seconds" the first).
    section = {**info, "method": method, "seconds": round(time.monotonic() - t0, 2)}
    section["agreement_on_calibration"] = [
        round(before, 4),
        round(fidelity(source, model, factory), 4),
    ]
    return model, section


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
