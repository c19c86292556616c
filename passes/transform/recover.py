"""Recovery without training, as a pass on the IR: refit, bias compensation, BatchNorm.

::

    planned = Sequential([ChannelGroupAnalysis(), ChannelImportance("l1"), ...])(Module(g))
    pruned = RemoveChannels()(planned)
    ctx = PassContext(tensors=provider, seed=0)       # the runtime runs the models
    repaired = RecoverPass(planned, "lsq")(pruned, ctx)

The pass is configured with the *reference*: the original graph with its channel groups
and plan (``RemoveChannels``' input). It rewrites a copy of the pruned graph (its input
module); neither graph is modified. Methods (:data:`RECOVERY_METHODS`):

- ``lsq``: every consumer layer of a pruned group (a Conv/Gemm/MatMul that lost input
  channels, or a grouped/depthwise conv that lost channels; group by group) is refitted,
  in topological order, by ridge least squares from the *pruned* graph's input of the
  layer (as repaired so far) to the *original* graph's output of it (``_lsq.py``,
  ``_refit_grouped.py``); the intercept of the fit is the bias compensation. With
  ``downstream`` (the default) so is every later layer whose input depends on a refitted
  one: its weights are intact, but its input carries what the refits before it could not
  repair, and its own refit takes that out (PP-OCRv5's recognizer at 0.8 of its latency:
  CER 5.60% with the consumers alone, 5.11% with the 19 layers after them too, on 300
  lines; the original reads 3.40%). One pass over the data per refitted layer. At most
  ``max_rows`` patch rows per batch, subsampled with ``PassContext.seed``.
- ``bias``: bias compensation only, from one pass of the original graph.

Both then refresh every BatchNormalization that is the only reader of a changed layer's
output (one pass each, in order), so its output keeps the original's moments.

Precondition: ``PassContext.tensors`` is set. Passes never run models: the provider
(``runtime.calib_stats.tensor_stream_provider``) runs each requested graph on the same
calibration batch and yields the named tensors batch by batch; only running sums are
kept here, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx import export_model
from onnx_hwprune.passes._infra import Module, Pass, PassContext, PassError
from onnx_hwprune.passes.transform._lsq import (
    LinearLayer,
    NormalEquations,
    compensated_bias,
    layer_is_refittable,
    output_rows,
    patch_column_sums,
    patch_rows,
    refreshed_batchnorm,
    row_count,
    solve_lsq,
)
from onnx_hwprune.passes.transform._recover_ir import (
    Consumer,
    consumer_layers,
    following_batchnorm,
    set_values,
    write_bias,
    write_weight,
)
from onnx_hwprune.passes.transform._refit_grouped import (
    BlockEquations,
    grouped_compensated_bias,
    solve_blocks,
)
from onnx_hwprune.passes.transform.remove_channels import kept_positions

__all__ = [
    "RECOVERY_METHODS",
    "RecoverPass",
    # the numpy maths (``_lsq.py``), for tests and tools
    "LinearLayer",
    "NormalEquations",
    "compensated_bias",
    "layer_is_refittable",
    "output_rows",
    "patch_column_sums",
    "patch_rows",
    "refreshed_batchnorm",
    "row_count",
    "solve_lsq",
]

logger = logging.getLogger(__name__)

RECOVERY_METHODS: dict[str, str] = {
    "lsq": "refit consumer layers and the layers after them by ridge least squares + bias, "
    "then refresh BatchNorm",
    "bias": "bias compensation of removed channels only, then refresh BatchNorm",
}


class RecoverPass(Pass):
    """Rewrite the pruned graph's weights, biases and BatchNorms (see module docstring).

    Args:
        reference: the original module: graph, channel groups and the plan that pruned it.
        method: a key of :data:`RECOVERY_METHODS`.
        ridge: relative ridge strength for ``lsq`` (``λ = ridge * mean diag(AᵀA)``).
        max_rows: patch rows used per batch and layer for ``lsq``.
        refresh_bn: re-estimate BatchNorm statistics after changed layers.
        downstream: ``lsq`` also refits the layers after the consumers (module doc).
    """

    name = "Recover"

    def __init__(
        self,
        reference: Module,
        method: str = "lsq",
        ridge: float = 1e-3,
        max_rows: int = 4096,
        refresh_bn: bool = True,
        downstream: bool = True,
    ) -> None:
        if method not in RECOVERY_METHODS:
            raise ValueError(
                f"unknown recovery method {method!r}; choose from {sorted(RECOVERY_METHODS)}"
            )
        if reference.groups is None or reference.plan is None:
            raise PassError(f"{self.name} needs a reference module with groups and a plan")
        reference.plan.validate(reference.groups)
        self.reference, self.method = reference, method
        self.ridge, self.max_rows, self.refresh_bn = ridge, max_rows, refresh_bn
        self.downstream = downstream and method == "lsq"

    def run(self, mod: Module, ctx: PassContext) -> Module:
        if ctx.tensors is None:
            raise PassError(f"{self.name} needs PassContext(tensors=...) over calibration data")
        graph = mod.graph.copy()
        ref = self.reference
        kept = kept_positions(ref.groups, ref.plan)
        consumers = consumer_layers(ref.graph, kept, self.downstream)
        logger.info("recovering %d consumer layers with %s", len(consumers), self.method)
        # The reference never changes: exported once, not once per layer (an opaque
        # model the provider runs as it is; the pruned graph is re-exported as it changes).
        original = export_model(ref.graph)
        if self.method == "bias" and consumers:
            self._compensate(graph, original, consumers, ctx)
        for consumer in consumers:
            if self.method == "lsq":
                self._refit(graph, original, consumer, ctx)
            if self.refresh_bn:
                self._refresh_following_bn(graph, original, consumer, ctx)
        return mod.replace(graph=graph)

    def _compensate(
        self, graph: gs.Graph, original: Any, consumers: list[Consumer], ctx: PassContext
    ) -> None:
        """One pass of the original: exact patch-column means of every consumer's input."""
        sums: list[np.ndarray | None] = [None] * len(consumers)
        counts = [0] * len(consumers)
        names = [c.input for c in consumers]
        for (values,) in ctx.tensors([(original, names)]):
            for i, c in enumerate(consumers):
                s, n = patch_column_sums(c.layer, values[c.input])
                sums[i] = s if sums[i] is None else sums[i] + s
                counts[i] += n
        for c, s, n in zip(consumers, sums, counts, strict=True):
            write_bias(graph, c, grouped_compensated_bias(c.layer, s / n))

    def _refit(self, graph: gs.Graph, original: Any, c: Consumer, ctx: PassContext) -> None:
        """Normal equations: pruned input rows -> original kept output rows, then solve."""
        layer, rng = c.layer, np.random.default_rng(ctx.seed)
        eq = BlockEquations(layer)
        pairs = ctx.tensors([(original, [c.output]), (graph, [c.input])])
        for orig, pruned in pairs:
            x = pruned[c.input]
            total = row_count(layer, x)
            rows = None
            if total > self.max_rows:  # uniform, without replacement, seeded: deterministic
                rows = np.sort(rng.choice(total, self.max_rows, replace=False))
            target = output_rows(layer, orig[c.output], rows)[:, layer.out_keep]
            eq.add(patch_rows(layer, x, rows), target)
        weight, bias = solve_blocks(eq, layer, self.ridge)
        write_weight(graph, c, weight)
        write_bias(graph, c, bias)

    def _refresh_following_bn(
        self, graph: gs.Graph, original: Any, c: Consumer, ctx: PassContext
    ) -> None:
        bn = following_batchnorm(graph, c.output)
        if bn is None:
            return
        before, pruned = _ChannelMoments(), _ChannelMoments()
        for orig, prun in ctx.tensors([(original, [c.output]), (graph, [c.output])]):
            before.add(c.output, orig[c.output])
            pruned.add(c.output, prun[c.output])
        mu, var = before.result()
        gamma, _, mean, variance = (np.asarray(t.values) for t in bn.inputs[1:5])
        epsilon = float(bn.attrs.get("epsilon", 1e-5))
        rm, rv, g = refreshed_batchnorm(
            (mu[c.layer.out_keep], var[c.layer.out_keep]), pruned.result(),
            (mean, variance), gamma, epsilon,
        )  # fmt: skip
        written = (bn.inputs[3], bn.inputs[4], bn.inputs[1])
        for tensor, value in zip(written, (rm, rv, g), strict=True):
            set_values(tensor, value)


class _ChannelMoments:
    """Per-channel (axis 1) mean and population variance from float64 running sums."""

    def __init__(self) -> None:
        self._sum = self._square = 0.0
        self._count = 0

    def add(self, name: str, array: np.ndarray) -> None:
        if array.ndim < 2:
            raise UserError(f"tensor {name!r} has rank {array.ndim}: no channel axis 1")
        axes = (0, *range(2, array.ndim))
        self._sum = self._sum + array.sum(axis=axes, dtype=np.float64)
        self._square = self._square + np.square(array, dtype=np.float64).sum(axis=axes)
        self._count += array.size // array.shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self._sum / self._count
        return mean, np.maximum(self._square / self._count - mean**2, 0.0)
