"""Raw calibration tensors for measured sensitivity (``passes/analysis/sensitivity.py``).

The pass reduces tensors itself (Gram matrices of patch rows); the runtime only runs the
model, batch by batch, with the needed tensors exposed as extra outputs, and hands each
batch's values to the pass's ``consume`` callback. Nothing is stored between batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.activations import make_session, with_extra_outputs

__all__ = ["stream_tensors", "tensor_stream_provider"]

log = logging.getLogger(__name__)

Batches = Iterable[Mapping[str, np.ndarray]]
Consume = Callable[[dict[str, np.ndarray]], None]


def stream_tensors(model, batches: Batches, names: Sequence[str], consume: Consume,
                   max_samples: int | None = None) -> int:  # fmt: skip
    """Run ``model`` on ``batches`` (at most ``max_samples`` samples, the last batch cut)
    and call ``consume({name: array})`` per batch; returns the samples seen."""
    names = list(dict.fromkeys(names))
    session = make_session(with_extra_outputs(model, names))
    seen = 0
    for batch in batches:
        n = len(next(iter(batch.values())))
        if max_samples is not None:
            n = min(n, max_samples - seen)
            batch = {k: v[:n] for k, v in batch.items()}
        if n <= 0:
            break
        try:
            values = session.run(names, dict(batch))
        except Exception as err:  # onnxruntime's exception types are not importable API
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"onnxruntime failed on a calibration batch: {text}") from None
        consume(dict(zip(names, values, strict=True)))
        seen += n
    if not seen:
        raise UserError("calibration data has zero samples")
    log.debug("streamed %d tensors over %d samples", len(names), seen)
    return seen


def tensor_stream_provider(factory: Callable[[], Batches], max_samples: int | None = None):
    """The context's ``PassContext.tensor_stream`` over ``factory()``'s batches:
    ``stream(graph, names, consume) -> samples``, one pass of the graph's model."""
    from onnx_hwprune.frontends.onnx import export_model

    def stream(graph, names: Sequence[str], consume: Consume) -> int:
        return stream_tensors(export_model(graph), factory(), names, consume, max_samples)

    return stream
