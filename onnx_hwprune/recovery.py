"""Data-driven pruning on ONNX models: channel scores and recovery without training.

::

    batches = calib_factory("digits_calib.npz", original, batch_size=64)  # frontends.calib
    scores = data_importance(original, groups, "reconstruction", batches)
    plan = uniform_plan(groups, scores, 0.5)
    pruned = export_model(remove_channels(graph, groups, plan))
    repaired = recover(original, pruned, groups, plan, batches, method="lsq")

``original`` is the model the channel groups were computed on (``normalize_model(src)`` or
``export_model(graph)``: tensor and node names must match the groups), ``pruned`` the
model ``remove_channels`` made from it. Calibration data is read several times, so it is
passed as a *factory*: a callable returning a fresh iterable of batches each time.

These compose the passes (``DataImportance``, ``RecoverPass``: the rules are theirs) with
the runtime's providers, which run the models (``runtime.calib_stats``). The models given
are never modified; the result is a new model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_hwprune.frontends.calib import BatchFactory
from onnx_hwprune.frontends.onnx import export_model
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.data_importance import DataImportance
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform.recover import RECOVERY_METHODS, RecoverPass
from onnx_hwprune.runtime.calib_stats import channel_stats_provider, tensor_stream_provider

__all__ = ["RECOVERY_METHODS", "data_importance", "recover"]


def _graph(model: onnx.ModelProto | gs.Graph) -> gs.Graph:
    return model if isinstance(model, gs.Graph) else gs.import_onnx(model)


def data_importance(
    model: onnx.ModelProto | gs.Graph,
    groups: ChannelGroups,
    criterion: str,
    calib_batches_factory: BatchFactory,
) -> dict[str, np.ndarray]:
    """Scores ``{group name: float64 [size]}`` (higher = keep) for a data criterion.

    Args:
        model: the model (or graph) ``groups`` was computed on.
        criterion: a key of ``passes.analysis.data_importance.DATA_CRITERIA``.
        calib_batches_factory: see ``frontends.calib.calib_factory``; read once.

    Raises:
        UserError: unusable calibration data.
    """
    ctx = PassContext(activations=channel_stats_provider(calib_batches_factory))
    return dict(DataImportance(criterion)(Module(_graph(model), groups), ctx).scores)


def recover(
    original: onnx.ModelProto | gs.Graph,
    pruned: onnx.ModelProto,
    groups: ChannelGroups,
    plan: Plan,
    calib_batches_factory: BatchFactory,
    method: str = "lsq",
    ridge: float = 1e-3,
    max_rows: int = 4096,
    seed: int = 0,
    refresh_bn: bool = True,
    downstream: bool = True,
) -> onnx.ModelProto:
    """A repaired copy of ``pruned`` (:class:`passes.transform.recover.RecoverPass`).

    Args:
        original: the unpruned model (or graph) ``groups`` and ``plan`` refer to.
        pruned: ``export_model(remove_channels(graph, groups, plan))``; not modified.
        ridge: relative ridge strength for ``lsq`` (``λ = ridge * mean diag(AᵀA)``).
        max_rows: patch rows used per batch and layer for ``lsq`` (subsampled with ``seed``).
        refresh_bn: re-estimate BatchNorm statistics after changed layers.
        downstream: ``lsq`` also refits every layer after a refitted one (see
            ``passes/transform/recover.py``); False refits the consumers only.

    Raises:
        UserError: unusable calibration data; ValueError: unknown method.
    """
    reference = Module(_graph(original), groups, plan=plan)
    recover_pass = RecoverPass(reference, method, ridge, max_rows, refresh_bn, downstream)
    ctx = PassContext(seed=seed, tensors=tensor_stream_provider(calib_batches_factory))
    graph = recover_pass(Module(gs.import_onnx(pruned)), ctx).graph
    # The model-level fields (IR version, opsets, metadata) stay those of ``pruned``.
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    out.graph.CopyFrom(export_model(graph).graph)
    return out
