"""``profile --verify``: do the stored points still hold on this machine?

A sample of the model's stored points is timed again, in the way it was measured
(interleaved, rescaled by the layer's stored full-size point as anchor, drift-checked),
and compared with the stored value. A point *holds* when the two agree within
``tolerance``. Points that moved are re-flagged ``noisy``, so the next profiling run
measures them again before anything plans on them. Points whose re-check drifted are
counted apart: the machine, not the profile, was unsteady then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from onnx_hwprune.cost_models.network import layer_key
from onnx_hwprune.cost_models.profile_db import QUALITY_NOISY, ProfileDB
from onnx_hwprune.runtime.backend import Backend
from onnx_hwprune.runtime.drift import DriftConfig, DriftGuard
from onnx_hwprune.runtime.microbench import time_points
from onnx_hwprune.runtime.timing import TimingConfig

__all__ = ["VerifyResult", "verify_profile"]


@dataclass
class VerifyResult:
    """Outcome of a verification: points checked, held, moved (with both values), and
    points whose re-check drifted (inconclusive)."""

    checked: int = 0
    held: int = 0
    inconclusive: int = 0
    moved: list[tuple[str, tuple[int, int], float, float]] = field(default_factory=list)

    def line(self, tolerance: float) -> str:
        """One summary line for the CLI."""
        return (
            f"verify: {self.held} of {self.checked} stored points still hold "
            f"(within {tolerance:.0%}); {len(self.moved)} moved and will be re-measured"
            f"; {self.inconclusive} inconclusive (machine drifted during the check)"
        )


def verify_profile(
    layers, backend: Backend, target: str, db: ProfileDB, *, sample: int = 20,
    tolerance: float = 0.10, timing: TimingConfig | None = None, seed: int = 0,
) -> VerifyResult:  # fmt: skip
    """Re-time up to ``sample`` stored points of ``layers`` and compare (see module doc)."""
    fp = backend.fingerprint_hash()
    candidates = []
    for layer in {layer_key(l): l for l in layers}.values():  # noqa: E741
        full = (layer.in_channels, layer.out_channels)
        stored = db.get_all(target, fp, layer.signature)
        if full not in stored:
            continue
        candidates += [(layer.signature, full, p, m) for p, m in sorted(stored.items())
                       if p != full and p[0] <= full[0] and p[1] <= full[1]]  # fmt: skip
    picked = random.Random(seed).sample(candidates, min(sample, len(candidates)))
    result, guard = VerifyResult(), DriftGuard(backend, DriftConfig())
    try:
        for sig, full, point, old in picked:
            anchor = (full, db.get_all(target, fp, sig)[full].median_ms)
            new = time_points(backend, sig, [point], timing or TimingConfig(), anchor, guard)
            _judge(result, db, target, fp, sig, point, old, new[point], tolerance)
    finally:
        guard.close()
    return result


def _judge(result, db, target, fp, sig, point, old, new, tolerance) -> None:
    result.checked += 1
    if new.quality == "drifted":
        result.inconclusive += 1
    elif abs(new.median_ms / old.median_ms - 1) <= tolerance:
        result.held += 1
    else:
        result.moved.append((sig.describe(), point, old.median_ms, new.median_ms))
        db.set_quality(target, fp, sig, point, QUALITY_NOISY)
