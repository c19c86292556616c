"""Keep the model's own input and output dims in the written model.

``--input-shape`` fixes dims for measuring and planning only. Channel pruning never needs
the spatial size or the batch fixed, so the plan made on the fixed-shape graph is applied
a second time to the graph loaded with the model's own dims (dynamic batch, height,
width). Both graphs come from the same file; their channel groups must agree (same name,
same size) for the plan to carry over. Where they do not (a model whose shape arithmetic
the analysis could only follow once folded to constants), the fixed-shape result is
written and the report says why: never a silently different model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx import ModelSource, export_model, load_graph, verify_model
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.plan.plan import Plan

__all__ = ["KeptDims", "keep_model_dims", "accepted_shapes", "output_section"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptDims:
    """The model as loaded with its own dims (``source``), its groups and the pruned
    result; ``model`` is None with ``reason`` where the plan could not carry over."""

    model: onnx.ModelProto | None
    source: onnx.ModelProto | None = None
    module: Module | None = None
    reason: str = ""


def keep_model_dims(
    model: ModelSource, plan: Plan, remove: Callable[[Module], onnx.ModelProto]
) -> KeptDims:
    """``plan`` (made at fixed input shapes) applied by ``remove`` to the model at its own
    dims."""
    try:
        mod = ChannelGroupAnalysis()(Module(load_graph(model, None)), PassContext.current())
    except UserError as exc:
        return KeptDims(None, reason=f"the model cannot be analysed at its own dims: {exc}")
    sizes = {g.name: g.size for g in mod.groups.prunable}
    missing = [n for n, gp in plan.pruned_groups().items() if sizes.get(n) != gp.size]
    if missing:
        return KeptDims(
            None,
            reason=f"{len(missing)} pruned groups (e.g. {missing[0]}) differ at the model's "
            "own dims: its shape arithmetic was only followed at the fixed input shape",
        )
    planned = mod.replace(plan=plan)
    out = remove(planned)
    verify_model(out)
    return KeptDims(out, export_model(mod.graph), planned)


def output_section(written: onnx.ModelProto, kept: KeptDims | None) -> dict:
    """The written file's accepted input shapes, and whether the model's own dims were
    kept (with the reason where they were not)."""
    section: dict = {"input_shapes": accepted_shapes(written)}
    if kept is None:
        section["dims"] = "as the model declares them"
    elif kept.model is not None:
        section["dims"] = "kept: --input-shape was used for measuring and planning only"
    else:
        section["dims"] = f"fixed to --input-shape: {kept.reason}"
        log.warning("the written model accepts only the --input-shape dims: %s", kept.reason)
    return section


def accepted_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input's dims as written: an int, or the symbolic name (``?`` if none)."""
    inits = {t.name for t in model.graph.initializer}
    return {
        value.name: [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        ]
        for value in model.graph.input
        if value.name not in inits
    }
