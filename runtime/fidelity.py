"""How far the pruned model's outputs moved from the original's, on the data at hand.

Run after every pruning job so that a destroyed model is never written silently: on the
calibration data when given, else on seeded synthetic N(0, 1) inputs at the planning
shape (labelled as such in the report: synthetic inputs say whether the function
changed, not what the accuracy is). Measures on the first output: the top-1 agreement of
the class scores (per position for sequences and maps, see ``_class_axis``), the mean
cosine similarity of each sample's output with the original's, and for sequences
(``N, T, C``: CTC logits) the agreement on *content* positions (see ``content_positions``).

Why the third: a text recognizer fed noise (or a line with margins) predicts its blank at
almost every position. A pruned PP-OCRv5 recognizer that reads nothing right any more
(CER 100%) still agreed at 95% of the positions and kept a cosine of 0.94 on synthetic
inputs, because the blanks dominate both; on the positions where either model predicts
something else it agreed at 0%.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

__all__ = [
    "content_positions",
    "output_fidelity",
    "synthetic_batches",
    "worst_agreement",
    "FIDELITY_FLOOR",
]

FIDELITY_FLOOR = 0.9  # below this cosine (agreement: 0.8), the summary warns loudly
_SAMPLES = 16
DOMINANT = 0.8  # share of positions the background must hold for content agreement


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def synthetic_batches(model: onnx.ModelProto, seed: int = 0) -> list[dict[str, np.ndarray]] | None:
    """``_SAMPLES`` batches of one N(0, 1) sample per float input, or None where an input
    has a symbolic dim besides the batch (no shape to draw at)."""
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = value.type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
        if None in dims[1:] or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return None
        shapes[value.name] = [1, *dims[1:]]
    rng = np.random.default_rng(seed)
    return [
        {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        for _ in range(_SAMPLES)
    ]


def _class_axis(scores: np.ndarray) -> int | None:
    """Where the per-position class scores are: (N, C) and (N, T, C) sequences (CTC
    recognizers) on the last axis, (N, C, H, W) segmentation maps on axis 1; None for
    single-channel maps and anything else (cosine only)."""
    if scores.ndim in (2, 3) and scores.shape[-1] > 1:
        return scores.ndim - 1
    if scores.ndim == 4 and scores.shape[1] > 1:
        return 1
    return None


def content_positions(a_idx: np.ndarray, b_idx: np.ndarray) -> tuple[int, int]:
    """``(agreeing, content)`` positions of one sample's (T,) top-1 class indices.

    The background is the class the original predicts most often in the sample (the CTC
    blank); a content position is one where either model predicts anything else, and it
    agrees when both predict the same class there (a Jaccard index of the content). Only
    samples whose background covers :data:`DOMINANT` of the positions count: elsewhere
    (a detector's box head, argmax over coordinates) the per-position agreement is not
    hidden by one class, and the measure would only add noise."""
    values, counts = np.unique(a_idx, return_counts=True)
    if counts.max() < DOMINANT * len(a_idx):  # no dominant class: top-1 agreement suffices
        return 0, 0
    background = values[counts.argmax()]
    content = (a_idx != background) | (b_idx != background)
    return int((content & (a_idx == b_idx)).sum()), int(content.sum())


def output_fidelity(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    limit: int = 256,
) -> dict:
    """``{"samples", "cosine", "top1_agreement" (None unless scores), "content_agreement"
    and "content_positions" (None and 0 unless sequences with content)}``."""
    a_sess, b_sess = _session(original), _session(pruned)
    cos, agree, seen, hits, content = [], [], 0, 0, 0
    for batch in batches:
        a = np.asarray(a_sess.run(None, dict(batch))[0], np.float64)
        b = np.asarray(b_sess.run(None, dict(batch))[0], np.float64)
        n = a.shape[0] if a.ndim else 1
        fa, fb = a.reshape(n, -1), b.reshape(n, -1)
        norm = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
        cos.extend(np.where(norm > 0, (fa * fb).sum(axis=1) / np.maximum(norm, 1e-30), 1.0))
        axis = _class_axis(a)
        if axis is not None:
            same = a.argmax(axis=axis) == b.argmax(axis=axis)
            agree.extend(same.reshape(n, -1).mean(axis=1))
        if a.ndim == 3 and a.shape[1] > 1 and axis == 2:
            for a_idx, b_idx in zip(a.argmax(axis=2), b.argmax(axis=2), strict=True):
                h, c = content_positions(a_idx, b_idx)
                hits, content = hits + h, content + c
        seen += n
        if seen >= limit:
            break
    return {
        "samples": seen,
        "cosine": float(np.mean(cos)) if cos else 1.0,
        "top1_agreement": float(np.mean(agree)) if agree else None,
        "content_agreement": hits / content if content else None,
        "content_positions": content,
    }


def worst_agreement(fid: Mapping) -> float:
    """The lowest of the section's cosine, top-1 agreement and content agreement."""
    measures = [fid.get("cosine", 1.0), fid.get("top1_agreement"), fid.get("content_agreement")]
    return min(m for m in measures if m is not None)


def fidelity_section(
    original: onnx.ModelProto, pruned: onnx.ModelProto, factory, label: str | None = None
) -> dict | None:
    """The report's ``fidelity`` section: measured on ``factory()`` batches (calibration
    data, described by ``label``) or on random inputs; None where neither is possible.
    ``warning`` is set when agreement or cosine falls under :data:`FIDELITY_FLOOR`."""
    real_data = factory is not None and label is None
    if factory is not None:
        batches, label = factory(), label or "the calibration data"
    else:
        batches = synthetic_batches(original)
        label = f"{_SAMPLES} synthetic N(0,1) inputs (no data given)"
        if batches is None:
            return None
    section = {"data": label, **output_fidelity(original, pruned, batches)}
    # Top-1 agreement on few samples moves in big steps (1 of 16 = 6%): a looser floor.
    agree, content = section["top1_agreement"], section["content_agreement"]
    worst = min(
        section["cosine"],
        1.0 if agree is None else agree + 0.1,
        1.0 if content is None else content + 0.1,
    )
    if worst < FIDELITY_FLOOR:
        hint = (
            "" if real_data else (" or give data: --calib DATA (--recover lsq is then the default)")
        )
        section["warning"] = (
            f"the pruned model's outputs moved far from the original's ({100 * worst:.1f}% "
            f"< {100 * FIDELITY_FLOOR:.0f}%): accuracy is likely lost. Prune less "
            f"(--latency-budget nearer 1, a lower --ratio){hint}, and check with --eval"
        )
    return section
