"""The data-driven steps of a pruning job: calibration batches, data criteria, recovery
and accuracy evaluation. A thin layer over ``recovery`` (the passes with the runtime's
providers) and ``runtime.evaluate``."""

from __future__ import annotations

from typing import Any

import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.options import PruneOptions
from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan

__all__ = [
    "activations", "calibration", "recover_model", "quantize_model", "accuracy_section",
    "tensors",
]  # fmt: skip


def calibration(opts: PruneOptions, source: onnx.ModelProto):
    """A factory of calibration batches, or None; bad data fails here, before any work."""
    if opts.calib is None:
        if opts.criterion in DATA_CRITERIA:
            raise UserError(f"--criterion {opts.criterion} needs calibration data (--calib)")
        return None
    if opts.resolved_recover() == "distill":  # fail before any work, not after planning
        from onnx_hwprune.runtime.distill import require_torch

        require_torch()
    from onnx_hwprune.frontends.calib import calib_factory

    return calib_factory(opts.calib, source, opts.calib_batch, opts.preprocess, opts.calib_limit)


def activations(factory):
    """The activation provider passes read from ``PassContext.activations``."""
    from onnx_hwprune.runtime.calib_stats import channel_stats_provider

    return channel_stats_provider(factory)


def tensors(factory, max_samples: int | None = None):
    """The raw tensor provider passes read from ``PassContext.tensors``."""
    from onnx_hwprune.runtime.calib_stats import tensor_stream_provider

    return tensor_stream_provider(factory, max_samples)


def recover_model(
    opts: PruneOptions,
    source: onnx.ModelProto,
    pruned: onnx.ModelProto,
    groups: ChannelGroups,
    plan: Plan,
    factory,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The recovered model and what recovery did (``_recover_methods.py``)."""
    from onnx_hwprune._recover_methods import run_recovery

    return run_recovery(opts, source, pruned, groups, plan, factory)


def quantize_model(opts: PruneOptions, model: onnx.ModelProto, factory) -> onnx.ModelProto:
    from onnx_hwprune.runtime.quantize import quantization_summary, quantize_int8

    quantization_summary(opts.quantize)  # an unknown scheme fails before the work
    return quantize_int8(model, factory)


def accuracy_section(
    opts: PruneOptions,
    source: onnx.ModelProto,
    pruned: onnx.ModelProto,
    pruned_float: onnx.ModelProto | None = None,
) -> dict[str, Any]:
    """Top-1 before and after on ``--eval`` data (agreement with the original if unlabelled).

    With ``--quantize``, ``pruned`` is the int8 model and ``pruned_float`` the pruned
    model before quantization; its top-1 is reported too, so each step's cost shows.
    """
    from onnx_hwprune.runtime.evaluate import agreement, evaluate

    before, after = evaluate(source, opts.eval_data), evaluate(pruned, opts.eval_data)
    section: dict[str, Any] = {"data": str(opts.eval_data), "samples": after.num_samples}
    if after.top1 is not None:
        section["top1"] = [before.top1, after.top1]
        if pruned_float is not None:
            section["top1_pruned_float"] = evaluate(pruned_float, opts.eval_data).top1
    section["agreement"] = agreement(source, pruned, opts.eval_data)
    return section
