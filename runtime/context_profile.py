"""Time whole pruned networks under onnxruntime's per-node profiler: in-context points.

Which networks is decided above the runtime (``onnx_hwprune/context_configs.py``: the
original, a stair cut and one count of each alignment class); this module times them.

Each run gives every layer a point ``(in, out, ms)`` (:mod:`~.node_profile` attributes
fused kernels, and the layout reorders onnxruntime inserts, to their layer). What the
residual still grows by over the full configuration (reorders next to a node no layer
owns) is shared among the layers of that configuration whose in-channel class is off
the aligned one, in proportion to their time, so the penalty lands on the layers that
cause it.

Each configuration's per-node times are scaled to its whole-network latency measured
with the timing protocol (all configurations interleaved), as :mod:`~.node_profile` does
for the original: under load the profiler's per-node medians are biased (seen here at
load 7 on 2 cores: a configuration at 61% of the original's wall time summed to 24-37% of
its per-node time), the interleaved wall-time ratios are not. The per-node runs are
interleaved too where the backend can (``node_times_many``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnx_hwprune.cost_models.context import ContextPoint, alignment_class
from onnx_hwprune.cost_models.signature import Layer, extract_layers

__all__ = ["measure_context"]

logger = logging.getLogger(__name__)

NodeTimes = Callable[[dict[str, onnx.ModelProto]], dict[str, dict[str, float]]]
"""``node_times({config: model}) -> {config: {node: ms}}``, ideally in interleaved rounds."""
WallTimes = Callable[[dict[str, onnx.ModelProto]], dict[str, float]]
"""``wall_times({config: model}) -> {config: ms}``: the timing protocol, interleaved."""


def measure_context(
    model: onnx.ModelProto,
    layers: Sequence[Layer],
    configs: Mapping[str, onnx.ModelProto],
    node_times: NodeTimes,
    wall_times: WallTimes,
) -> list[ContextPoint]:
    """In-context points of every layer in ``model`` (as ``full``) and in each pruned
    network of ``configs`` (see module doc)."""
    names = [layer.node for layer in layers]
    full = {layer.node: (layer.in_channels, layer.out_channels) for layer in layers}
    runs = {"full": (model, full)}
    for name, pruned in configs.items():
        cut = extract_layers(gs.import_onnx(pruned))
        runs[name] = (pruned, {x.node: (x.in_channels, x.out_channels) for x in cut})
    return _profile_runs(runs, names, full, node_times, wall_times)


def _profile_runs(runs, names, full, node_times, wall_times) -> list[ContextPoint]:
    from onnx_hwprune.runtime.node_profile import attribute_to_layers

    points, base_residual = [], None
    models = {config: m for config, (m, _) in runs.items()}
    times, walls = node_times(models), wall_times(models)
    for config, (m, counts) in runs.items():
        node_ms = times[config]
        ctx = attribute_to_layers(m, node_ms, names, walls[config])
        layer_ms = dict(ctx.layer_ms)
        if base_residual is None:
            base_residual = ctx.residual_ms
        _share_reorders(layer_ms, counts, full, ctx.residual_ms - base_residual)
        points += [ContextPoint(config, n, *counts[n], ms) for n, ms in layer_ms.items()
                   if n in counts and ms > 0]  # fmt: skip
        logger.info("in context %s: %.3f ms (%.3f ms profiled)", config, walls[config],
                    sum(node_ms.values()))  # fmt: skip
    return points


def _off_class(count: int, full: int) -> bool:
    return alignment_class(count, full) < alignment_class(full, full)


def _share_reorders(layer_ms: dict, counts: dict, full: dict, extra: float) -> None:
    """Give the residual's growth to the layers whose in-channel class is off-aligned."""
    off = [n for n in layer_ms if n in counts and _off_class(counts[n][0], full[n][0])]
    weight = sum(layer_ms[n] for n in off)
    if extra <= 0 or weight <= 0:
        return
    for n in off:
        layer_ms[n] += extra * layer_ms[n] / weight
