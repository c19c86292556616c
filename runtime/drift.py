"""Drift guard: notice when the machine's speed changed while a group was being measured.

A shared machine changes speed under our feet (another tenant starts, the CPU clocks
down). Interleaving and anchoring (:mod:`.timing`, :mod:`.microbench`) cancel a change
that hits a whole group evenly, but not one that happens *during* a group, nor a machine
that is simply slower than when the profile started. So around every measurement group
the guard re-times two things, before and after the group:

- a fixed **reference kernel** (a small Conv, the same on every run and every target), and
- the group's **anchor** (the layer's full-size point) when there is one.

A group *drifted* when either moved between before and after by more than ``threshold``
plus the two checks' own spreads (a change the checks' noise cannot explain), or when the
reference is slower than the session's baseline by more than ``baseline_threshold``. The
baseline is the *lower quartile* of the session's reference readings, not the fastest: on
a loaded machine the fastest reading is one lucky moment, and measured against it nearly
every group counted as drifted (379 of 530 points, load average 4) and was timed twice.

A group that moved *during* its timing is discarded and measured again, at most
``retries`` times (the change may have passed). A group that ran steadily but slower than
the baseline is not redone: the machine is still in that state, and timing it again
would cost the same and read the same. Either way the points of a group that still
drifted are stored with quality ``drifted`` and are never final: the next run measures
them again first (see :data:`QUALITIES`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from onnx_hwprune.cost_models.profile_db import QUALITY_CLEAN, QUALITY_DRIFTED, QUALITY_NOISY
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.timing import Timing, TimingConfig, measure

__all__ = ["DriftConfig", "DriftGuard", "quality_of", "reference_signature"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the guard.

    Attributes:
        threshold: relative speed change (reference or anchor) during a group, beyond the
            checks' own IQR/median spreads, that marks the group drifted.
        baseline_threshold: how much slower than the session's fastest reference reading
            the machine may run before groups count as drifted (the fastest reading of a
            noisy timer is biased low, hence wider than ``threshold``).
        noisy_spread: a point whose IQR/median exceeds this is stored as ``noisy``.
        retries: how many times a drifted group is measured again before giving up.
        check: the (short) timing protocol of the before/after checks.
    """

    threshold: float = 0.10
    baseline_threshold: float = 0.25
    noisy_spread: float = 0.10
    retries: int = 1
    check: TimingConfig = TimingConfig(warmup_s=0.01, min_repeat_s=0.005, rounds=3)


def reference_signature() -> LayerSignature:
    """The fixed reference kernel: a 3x3 Conv, 32 -> 32 channels on 28x28, with ReLU."""
    return LayerSignature(
        op="Conv", kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
        input_hw=(28, 28), activation="Relu",
    )  # fmt: skip


def quality_of(timing: Timing, drifted: bool, config: DriftConfig) -> str:
    """``drifted`` beats ``noisy`` beats ``clean``."""
    if drifted:
        return QUALITY_DRIFTED
    return QUALITY_NOISY if timing.spread > config.noisy_spread else QUALITY_CLEAN


class DriftGuard:
    """Re-times the reference kernel (and an anchor) around measurement groups.

    One guard lives for one profiling session; its baseline is the fastest reference
    reading it has seen, so "the machine is slower than when we started" is caught even
    when a whole group ran in the slow phase.
    """

    def __init__(self, backend: Backend, config: DriftConfig | None = None):
        self.backend = backend
        self.config = config or DriftConfig()
        self._reference: Runnable | None = None
        self.readings: list[float] = []  # the reference's medians, this session
        self.discarded = 0  # groups measured again because they drifted
        self.redone: set = set()  # (signature, point) measured in this session: not again
        self._last: tuple | None = None  # (anchor key, the latest check's timings)

    def _reference_runnable(self) -> Runnable:
        if self._reference is None:
            from onnx_hwprune.runtime.microbench import build_layer_model

            self._reference = self.backend.prepare(build_layer_model(reference_signature(), 32, 32))
        return self._reference

    def check(self, anchor: Runnable | None = None) -> dict[str, Timing]:
        """Time the reference (and ``anchor``) now: {"reference": t, "anchor": t}."""
        reference = self._reference_runnable()
        samplers: dict[str, Callable[[int], float]] = {"reference": reference.sample}
        if anchor is not None:
            samplers["anchor"] = anchor.sample
        got = measure(samplers, self.config.check)
        self.readings.append(got["reference"].median_ms)
        return got

    @property
    def baseline_ms(self) -> float | None:
        """The lower quartile of the reference readings so far (the fastest of few)."""
        if not self.readings:
            return None
        ordered = sorted(self.readings)
        return ordered[(len(ordered) - 1) // 4]

    def check_before(self, key, anchor: Runnable | None = None) -> dict[str, Timing]:
        """The check before a group: the previous group's after-check when it timed the
        same anchor ``key`` (nothing ran in between but preparing sessions), else a new
        one. Chaining halves the guard's cost: consecutive groups share one check."""
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        return self.check(anchor)

    def check_after(self, key, anchor: Runnable | None = None) -> dict[str, Timing]:
        """The check after a group; remembered as the next group's before-check."""
        got = self.check(anchor)
        self._last = (key, got)
        return got

    def drifted(self, before: dict[str, Timing], after: dict[str, Timing]) -> str | None:
        """Why the group drifted: ``"moved"`` (the speed changed between ``before`` and
        ``after``), ``"slow"`` (steady, but slower than the baseline), or None."""
        for key in before:
            b, a = before[key], after[key]
            t = self.config.threshold + b.spread + a.spread
            ratio = a.median_ms / b.median_ms if b.median_ms > 0 else 1.0
            if not 1 / (1 + t) <= ratio <= 1 + t:
                logger.info("drift: %s moved %.2fx during a group", key, ratio)
                return "moved"
        slowest = max(before["reference"].median_ms, after["reference"].median_ms)
        base = self.baseline_ms
        if base and slowest > base * (1 + self.config.baseline_threshold):
            logger.info("drift: machine %.2fx slower than its usual speed", slowest / base)
            return "slow"
        return None

    def close(self) -> None:
        """Release the reference kernel's session."""
        if self._reference is not None:
            self._reference.close()
            self._reference = None
