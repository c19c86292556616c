"""The ``mali`` target's cost models from ONNX models: the analytic estimate of
``cost_models/mali.py``, or, when the profile database holds a board's measurements of
the model, the measured model rebuilt from them (nothing is measured here).

Kept in ``runtime/`` because it loads ONNX models and replays the profiler; the model
itself (``cost_models/mali.py``) is plain arithmetic on layer signatures.
"""

from __future__ import annotations

import logging

from onnx_hwprune.cost_models.mali import (
    _FUSED,
    MaliCostModel,
    MaliGpu,
    analytic_from_layers,
)
from onnx_hwprune.cost_models.signature import LAYER_OPS
from onnx_hwprune.runtime.backend import RecordedBackend

__all__ = ["analytic_cost_model", "mali_cost_model", "measured_cost_model"]

logger = logging.getLogger(__name__)


def analytic_cost_model(source, gpu: str | MaliGpu = "mali-g72-mp12") -> MaliCostModel:
    """The analytic model of ``source`` (path or ``ModelProto``; batch 1 where symbolic)."""
    from onnx_hwprune.runtime.profiler import load_model_and_layers

    model, layers = load_model_and_layers(_static(source))
    others = sum(1 for n in model.graph.node if n.op_type not in LAYER_OPS | _FUSED)
    return analytic_from_layers(layers, others, gpu)


def _static(source):
    import onnx

    from onnx_hwprune.frontends.onnx import with_static_inputs

    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    return with_static_inputs(model)


def mali_cost_model(source, db=None, gpu: str | MaliGpu = "mali-g72-mp12", target: str = "mali"):
    """Measured model from ``db`` when a board's measurements cover ``source``; else the
    analytic estimate. Callers tell them apart by ``provenance`` / ``source``."""
    measured = measured_cost_model(source, db, target) if db is not None else None
    if measured is not None:
        logger.info("mali: using board measurements %s", measured.fingerprint_hash)
        return measured
    return analytic_cost_model(source, gpu)


class _NotStored(Exception):
    """A point the database does not hold (the stored board cannot be asked)."""


def measured_cost_model(source, db, target: str = "mali"):
    """A ``NetworkCostModel`` rebuilt purely from ``db`` for the first board stored under
    ``target`` whose measurements cover every layer, or ``None`` when none does.

    The staircase search is replayed against the stored points, so it needs the points
    a default ``profile`` run measured; a calibration stored with them is reused, else
    the residual is the analytic one and the per-layer scales are 1.
    """
    from onnx_hwprune.cost_models.network import assemble_cost_model
    from onnx_hwprune.runtime.profiler import load_model_and_layers, model_key, profile_layers

    model, layers = load_model_and_layers(_static(source))
    for _, fp_hash, fingerprint in db.devices(target):
        board = RecordedBackend(
            fingerprint, fingerprint_hash=fp_hash, missing=lambda h=fp_hash: _NotStored(h)
        )
        try:
            staircases = profile_layers(layers, board, target, db)
        except _NotStored:
            continue
        cal = dict(db.get_calibration(target, fp_hash, model_key(model)) or {})
        cal.setdefault("residual_ms", analytic_cost_model(source).residual_ms)
        return assemble_cost_model(target, fp_hash, layers, staircases, cal)
    return None
