"""The report of one pruning job (``api.prune``), assembled section by section from what
the pipeline's steps left in the job: the plan and network statistics, latency predicted
and measured (the closed loop's kept round, or one interleaved timing), accuracy,
quantization, recovery, sensitivity, the output's accepted shapes, bias compensation,
synthesised data, and the fidelity check. Reads the job; changes nothing but the report.
"""

from __future__ import annotations

from typing import Any

from onnx_hwprune import _data, _latency
from onnx_hwprune._dynamic import output_section
from onnx_hwprune.passes.analysis.stats import model_stats
from onnx_hwprune.report import build_report

__all__ = ["job_report"]


def job_report(job: Any) -> dict[str, Any]:
    """The report, section by section, from what the steps of ``api.PIPELINE`` produced
    (``job``: the finished ``api._Job``)."""
    opts, mod, plan = job.opts, job.mod, job.planned.plan
    report = build_report(mod.groups, plan, model_stats(mod.graph),
                          model_stats(job.pruned_graph), opts.to_json())  # fmt: skip
    models = (job.out, job.written)
    _add_sections(report, opts, job.cost, job.backend, mod, plan, job.source, models, job.rounds)
    if job.rounds is not None:
        report["latency"]["closed_loop"] = job.rounds
    if job.pruned_float is not None:
        _add_quantize_section(report, opts, job)
    if job.recovery is not None:
        report["recovery"] = job.recovery
    if mod.sensitivity is not None:
        report["sensitivity"] = mod.sensitivity.summary()
    report["output"] = output_section(job.written, job.kept)
    if job.latency_note and "predicted" not in report.get("latency", {}):
        report.setdefault("latency", {})["note"] = job.latency_note
    if job.comp is not None:
        report["bias_compensation"] = job.comp.summary()
    if job.synthetic:
        report["synthetic_data"] = job.synthetic
    _add_fidelity(report, job.source, job.written, job.factory, job.held_back)
    return report


def _as_measured(model, source):
    """``model`` at the input shapes the job measured ``source`` at: a written model keeps
    its own dims (``--input-shape`` is for measuring and planning), which a timing run
    would fill with 1s (first seen as a 4.7x "speedup" of a pruned PP-OCRv5 cls)."""
    from onnx_hwprune.frontends.onnx import normalize_model

    weights = {t.name for t in source.graph.initializer}
    shapes = {
        i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        for i in source.graph.input
        if i.name not in weights
    }  # as random_feeds fills them
    return model if model is source else normalize_model(model, shapes)


def _add_fidelity(report: dict, source, written, factory, held_back: dict | None) -> None:
    """Checked on the calibration data, or on the held-back synthesised inputs."""
    from onnx_hwprune.runtime.fidelity import fidelity_section

    label = None
    if held_back is not None:
        n = len(next(iter(held_back.values())))
        label = f"{n} held-back inputs synthesised from the model's BatchNorm statistics"
        batches = [{k: v[i : i + 1] for k, v in held_back.items()} for i in range(n)]
        factory = lambda: batches  # noqa: E731
    section = fidelity_section(source, written, factory, label)
    if section is not None:
        report["fidelity"] = section


def _last_measured(last: dict) -> dict:
    s0, s1 = last["spreads"]
    ratio = last["measured_ms"] / last["original_ms"]
    pruned = {"median_ms": last["pruned_median_ms"], "spread": s1, "ratio": ratio,
              "ratio_spread": last["ratio_spread"]}  # fmt: skip
    return {"original": {"median_ms": last["original_ms"], "spread": s0}, "pruned": pruned}


def _add_sections(report, opts, cost, backend, mod, plan, source, models, rounds=None) -> None:
    """Latency predicted and measured (``models``: the model as planned and as written)."""
    (out, written), latency = models, {}
    if cost is not None:
        latency["predicted"] = _latency.predicted_section(cost, mod.graph, mod.groups, plan)
    if opts.measure and backend is not None and rounds:  # the loop's last measurement
        latency["measured"] = _last_measured(next(r for r in rounds if r.get("kept")))
    elif opts.measure and backend is not None:
        latency["measured"] = _latency.measured_section(
            backend, {"original": source, "pruned": out}
        )
    if latency:
        report["latency"] = latency
    if opts.eval_data is not None:
        report["accuracy"] = _data.accuracy_section(opts, source, written)


def _add_quantize_section(report, opts, job) -> None:
    """What was quantized how, and, where the job measures, the float original, the pruned
    float model and the written int8 model timed in one run: the closed loop compares int8
    forms only, and int8 is not always faster (PP-OCRv5 cls ran 1.8x slower in int8: its
    hard-swish arithmetic stays float between a dequantize and a quantize)."""
    from onnx_hwprune.runtime.quantize import quantization_summary

    report["quantize"] = quantization_summary(opts.quantize)
    if opts.measure and job.backend is not None:
        models = {"original": job.source, "pruned_float": job.pruned_float,
                  "pruned_int8": job.written}  # fmt: skip
        static = {name: _as_measured(model, job.source) for name, model in models.items()}
        report["quantize"]["measured"] = _latency.measured_section(job.backend, static)
    if opts.eval_data is not None:
        report["accuracy"] = _data.accuracy_section(opts, job.source, job.written,
                                                    job.pruned_float)  # fmt: skip
