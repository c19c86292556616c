"""The timing protocol, with fake samplers: interleaving, statistics, re-measurement."""

from __future__ import annotations

import itertools

import pytest

from onnx_hwprune.runtime.timing import TimingConfig, clock_sampler, measure, paired_ratio


def _recording(log: list, key: str, seconds: float):
    def sampler(number: int) -> float:
        log.append((key, number))
        return seconds

    return sampler


def test_rounds_interleave_every_candidate_in_shuffled_order():
    log: list = []
    cfg = TimingConfig(warmup_s=0.0, rounds=6, max_remeasure=0, seed=1)
    keys = [f"c{i}" for i in range(5)]
    measure({k: _recording(log, k, 1e-3) for k in keys}, cfg)
    timed = [k for k, _ in log[len(keys) :]]  # the first len(keys) calls are the warm-up
    rounds = [timed[i : i + 5] for i in range(0, len(timed), 5)]
    assert len(rounds) == 6
    assert all(sorted(r) == keys for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "order must change between rounds"


def test_seeded_order_is_deterministic():
    def order(seed):
        log: list = []
        measure({k: _recording(log, k, 1e-3) for k in "abcd"}, TimingConfig(warmup_s=0, seed=seed))
        return log

    assert order(3) == order(3)


def test_median_and_spread_are_recorded():
    values = itertools.cycle([1e-3, 1e-3, 2e-3, 1e-3, 1e-3])
    cfg = TimingConfig(warmup_s=0.0, rounds=5, max_remeasure=0)
    t = measure({"x": lambda n: next(values)}, cfg)["x"]
    assert t.median_ms == pytest.approx(1.0)
    assert len(t.samples_ms) == 5
    assert t.spread >= 0.0


def test_wide_spread_is_remeasured_only_for_that_candidate():
    noisy = itertools.cycle([1e-3, 3e-3, 1e-3, 5e-3])
    calls = {"steady": 0, "noisy": 0}

    def steady(n):
        calls["steady"] += 1
        return 1e-3

    def wobbly(n):
        calls["noisy"] += 1
        return next(noisy)

    cfg = TimingConfig(warmup_s=0.0, rounds=4, max_spread=0.05, max_remeasure=2)
    t = measure({"steady": steady, "noisy": wobbly}, cfg)
    assert t["steady"].remeasured == 0 and len(t["steady"].samples_ms) == 4
    assert t["noisy"].remeasured == 2 and len(t["noisy"].samples_ms) == 12
    assert t["noisy"].spread > 0.05


def test_warm_up_sizes_samples_to_min_repeat_time():
    log: list = []
    cfg = TimingConfig(warmup_s=0.01, min_repeat_s=0.02, rounds=2, max_remeasure=0)
    t = measure({"fast": _recording(log, "fast", 1e-4)}, cfg)["fast"]
    assert t.number == 200  # 0.02 s / 1e-4 s
    assert all(n == 200 for _, n in log[-2:])


def test_clock_sampler_uses_the_given_clock():
    ticks = iter([0.0, 0.5])
    sampler = clock_sampler(lambda: None, clock=lambda: next(ticks))
    assert sampler(5) == pytest.approx(0.1)


def test_paired_ratio_cancels_load_that_hits_both_alike():
    """A load that changes between rounds (1x, 3x, 1x, 0.5x) but is the same within one:
    each model's median and spread move, their per-round ratio does not."""
    calls = itertools.count()
    load = (1.0, 3.0, 1.0, 0.5)

    def under_load(ms: float):
        return lambda number: ms * 1e-3 * load[(next(calls) // 2) % 4]

    # no warm-up beyond one call each (2 calls: rounds then start aligned), no re-measure
    config = TimingConfig(warmup_s=0.0, rounds=8, max_spread=1e9)
    got = measure({"a": under_load(1.0), "b": under_load(2.0)}, config)
    assert got["a"].spread > 0.5 and got["b"].spread > 0.5
    assert paired_ratio(got["b"], got["a"]) == pytest.approx((2.0, 0.0))


def test_paired_ratio_spreads_when_load_differs_within_rounds():
    noisy = measure({"a": lambda n: 1e-3, "b": iter_sampler([2e-3, 4e-3, 1e-3, 3e-3] * 3)},
                    TimingConfig(warmup_s=0.0, rounds=8, max_spread=1e9))  # fmt: skip
    ratio, spread = paired_ratio(noisy["b"], noisy["a"])
    assert 1.0 <= ratio <= 4.0 and spread > 0.3


def iter_sampler(values):
    it = iter(values)
    return lambda number: next(it)


def test_a_second_run_pools_with_the_first_and_stays_paired():
    from onnx_hwprune.runtime.timing import Timing, pooled

    def timing(*samples):
        return Timing(median_ms=0.0, spread=0.0, samples_ms=samples)

    # run 1: "b" was re-measured alone once (a sample with no partner in "a")
    first = {"a": timing(1.0, 2.0, 1.0), "b": timing(3.0, 6.0, 3.0, 9.0)}
    second = {"a": timing(1.0, 1.0, 1.0, 1.0), "b": timing(2.0, 2.0, 2.0, 2.0)}
    got = pooled([first, second])
    assert len(got["a"].samples_ms) == len(got["b"].samples_ms) == 7
    ratio, spread = paired_ratio(got["b"], got["a"])
    assert ratio == pytest.approx(2.0)  # per-round ratios: 3, 3, 3, 2, 2, 2, 2
    assert got["b"].median_ms == pytest.approx(2.0) and spread > 0
    assert pooled([first])["b"].samples_ms == (3.0, 6.0, 3.0)
