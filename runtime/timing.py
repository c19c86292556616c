"""The timing protocol: one way to time candidates that survives a noisy, shared machine.

Every backend is timed through :func:`measure`, which only needs, per candidate, a
*sampler*: a callable ``sampler(number) -> seconds`` that runs the candidate ``number``
times back to back and returns the mean seconds per run. A local runnable wraps its
``run()`` with :func:`clock_sampler`; a remote one (TVM RPC) returns what the device's own
timer measured. The protocol is the same for all of them:

1. **Warm-up.** Each candidate runs for at least ``warmup_s`` (and at least once), so that
   lazy allocation, page faults, and cache/JIT effects are not measured. The warm-up also
   sizes ``number``: how many runs make one sample last at least ``min_repeat_s`` (timer
   resolution and per-call jitter then stay small relative to a sample).
2. **Interleaved rounds.** ``rounds`` times, every candidate is sampled once, in an order
   shuffled per round by a seeded RNG. Drift (another tenant starting, thermal or frequency
   changes) then hits all candidates alike instead of biasing whichever ran last.
3. **Robust statistics.** A candidate's latency is the *median* of its samples; its spread
   is the interquartile range divided by the median. The minimum is never used alone: on a
   shared 2-core machine it jumped by 30% between runs.
4. **Re-measure wide spreads.** Candidates whose spread exceeds ``max_spread`` get another
   set of interleaved rounds (only among themselves), up to ``max_remeasure`` times; the
   samples accumulate. The final spread is recorded either way, so that consumers (the
   staircase detector) can widen their noise threshold where the machine was noisy.

Example:
    >>> t = measure({"a": lambda n: 1e-3, "b": lambda n: 2e-3}, TimingConfig(rounds=3))
    >>> round(t["b"].median_ms, 3)
    2.0
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "Sampler", "Timing", "TimingConfig", "clock_sampler", "measure", "paired_ratio", "pooled",
]  # fmt: skip

logger = logging.getLogger(__name__)

Sampler = Callable[[int], float]
"""``sampler(number) -> mean seconds per run`` over ``number`` back-to-back runs."""


@dataclass(frozen=True)
class TimingConfig:
    """Knobs of the protocol; the defaults suit layers of 0.05-50 ms on a shared CPU."""

    warmup_s: float = 0.03
    min_repeat_s: float = 0.015
    rounds: int = 5
    max_spread: float = 0.05
    max_remeasure: int = 2
    max_number: int = 10_000
    seed: int = 0

    def to_dict(self) -> dict:
        """The protocol as stored next to each measurement (provenance)."""
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """The outcome of timing one candidate.

    Attributes:
        median_ms: median over samples of the mean time per run, milliseconds.
        spread: interquartile range of the samples divided by the median (relative).
        samples_ms: every sample, in the order taken.
        number: runs per sample.
        remeasured: how many extra sets of rounds were needed.
    """

    median_ms: float
    spread: float
    samples_ms: tuple[float, ...] = field(default=())
    number: int = 1
    remeasured: int = 0


def clock_sampler(run: Callable[[], object], clock: Callable[[], float] = time.perf_counter):
    """Wrap a zero-argument ``run`` into a :data:`Sampler` timed with ``clock``."""

    def sampler(number: int) -> float:
        start = clock()
        for _ in range(number):
            run()
        return (clock() - start) / number

    return sampler


def measure(
    samplers: Mapping[Hashable, Sampler], config: TimingConfig | None = None
) -> dict[Hashable, Timing]:
    """Time every candidate with the protocol described in the module docstring.

    Args:
        samplers: candidate key -> sampler. Keys must be sortable or at least stable in
            insertion order; the RNG shuffles that order.
        config: protocol knobs; defaults to :class:`TimingConfig()`.

    Returns:
        candidate key -> :class:`Timing`.
    """
    config = config or TimingConfig()
    rng = random.Random(config.seed)
    numbers = {key: _warm_up(s, config) for key, s in samplers.items()}
    samples: dict[Hashable, list[float]] = {key: [] for key in samplers}
    remeasured = dict.fromkeys(samplers, 0)
    pending = list(samplers)
    for attempt in range(config.max_remeasure + 1):
        _run_rounds({k: samplers[k] for k in pending}, numbers, samples, config.rounds, rng)
        pending = [k for k in pending if _spread(samples[k]) > config.max_spread]
        if not pending or attempt == config.max_remeasure:
            break
        for key in pending:
            remeasured[key] += 1
        logger.debug("re-measuring %d candidates with wide spread", len(pending))
    return {key: _summarise(samples[key], numbers[key], remeasured[key]) for key in samplers}


def paired_ratio(num: Timing, den: Timing) -> tuple[float, float]:
    """Median and spread (IQR/median) of ``num / den`` over the samples the two took in
    the same rounds of one :func:`measure` run.

    Load that comes and goes on a shared machine hits both samples of a round alike, so
    the per-round ratio is steadier than either median: PP-OCRv5 cls and its pruned copy,
    timed while other jobs ran, spread 28% and 33% and their per-round ratio 11%.
    Samples that only one candidate took (re-measured alone) have no partner and are
    left out.
    """
    n = min(len(num.samples_ms), len(den.samples_ms))
    ratios = [a / b for a, b in zip(num.samples_ms[:n], den.samples_ms[:n], strict=True) if b > 0]
    if not ratios:
        raise ValueError("no paired samples")
    return statistics.median(ratios), _spread(ratios)


def pooled(runs: Sequence[Mapping[Hashable, Timing]]) -> dict[Hashable, Timing]:
    """One timing per candidate from several :func:`measure` runs of the same candidates:
    a second run pools with the first instead of replacing it, so that the evidence of
    both is used. Per run, only the samples every candidate took in the same rounds are
    kept (the first ``n``, as :func:`paired_ratio` pairs them), so the pooled samples still
    pair round by round."""
    keys = list(runs[0])
    samples: dict[Hashable, list[float]] = {key: [] for key in keys}
    for run in runs:
        n = min(len(run[key].samples_ms) for key in keys)
        for key in keys:
            samples[key] += run[key].samples_ms[:n]
    number = {key: max(run[key].number for run in runs) for key in keys}
    remeasured = {key: sum(run[key].remeasured for run in runs) for key in keys}
    return {key: _summarise(samples[key], number[key], remeasured[key]) for key in keys}


def _warm_up(sampler: Sampler, config: TimingConfig) -> int:
    """Run for ``warmup_s`` and return the runs per sample that reach ``min_repeat_s``."""
    elapsed, per_run = 0.0, sampler(1)
    elapsed += per_run
    number = 1
    while elapsed < config.warmup_s:
        # Grow geometrically so that fast candidates do not pay per-call overhead here.
        number = min(number * 2, config.max_number)
        per_run = sampler(number)
        elapsed += per_run * number
    if per_run <= 0:
        return config.max_number
    return max(1, min(config.max_number, int(config.min_repeat_s / per_run + 0.999)))


def _run_rounds(samplers, numbers, samples, rounds: int, rng: random.Random) -> None:
    """Sample each candidate once per round, in a freshly shuffled order each round."""
    keys = list(samplers)
    for _ in range(rounds):
        rng.shuffle(keys)
        for key in keys:
            samples[key].append(samplers[key](numbers[key]) * 1e3)


def _spread(values: list[float]) -> float:
    """Interquartile range over median; 0 for fewer than two samples."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    med = statistics.median(values)
    return (q3 - q1) / med if med > 0 else 0.0


def _summarise(values: list[float], number: int, remeasured: int) -> Timing:
    return Timing(
        median_ms=statistics.median(values),
        spread=_spread(values),
        samples_ms=tuple(values),
        number=number,
        remeasured=remeasured,
    )
