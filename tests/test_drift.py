"""Noise-proof profiling: the drift guard, quality flags, re-measuring untrusted points."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.profiler import ProfileOptions, build_cost_model
from onnx_hwprune.runtime.timing import TimingConfig

FAST = ProfileOptions(timing=TimingConfig(warmup_s=0.002, min_repeat_s=0.001, rounds=3))


def _model(channels: int = 24) -> onnx.ModelProto:
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype(np.float32),
        "w",
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "Conv", ["r", "w"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4
        ),
    ]
    shape = [1, channels, 8, 8]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


class FakeMachine(Backend):
    """Latency proportional to weight count (a whole network costs 5 ms). After
    ``slow_after`` sample calls the whole machine runs ``factor`` times slower; with
    ``jitter`` every other sample of a pruned (non-square) layer is off by that fraction,
    while the reference kernel and full layers stay steady (noise, not drift)."""

    name = "fake-machine"

    def __init__(self, slow_after: int | None = None, factor: float = 2.0, jitter: float = 0.0):
        self.slow_after, self.factor, self.jitter = slow_after, factor, jitter
        self.calls = 0
        self.slow_shapes: set[tuple[int, ...]] = set()  # layers sampled in the slow phase
        self.prepared: list[tuple[int, ...]] = []

    def fingerprint(self) -> dict:
        return {"machine": "fake"}

    def slow(self) -> bool:
        return self.slow_after is not None and self.calls > self.slow_after

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        w = next((i for i in model.graph.initializer if i.name == "W"), None)
        shape = tuple(w.dims) if w is not None else ()
        ms = 1e-4 * float(np.prod(shape)) if shape else 5.0
        self.prepared.append(shape)
        machine, state = self, {"n": 0}

        class Fake(Runnable):
            def sample(self, number: int) -> float:
                machine.calls += 1
                state["n"] += 1
                if machine.slow():
                    machine.slow_shapes.add(shape)
                pruned = len(shape) > 1 and shape[0] != shape[1]
                noise = 1 + machine.jitter * (state["n"] % 2) * pruned
                return ms * noise * (machine.factor if machine.slow() else 1.0) * 1e-3

        return Fake()


def _points(db: ProfileDB, backend: Backend) -> dict:
    """(W shape of the layer model, quality) of every stored point."""
    from onnx_hwprune.runtime.microbench import build_layer_model

    out = {}
    for sig, i, o in db.all_points("cpu", backend.fingerprint_hash()):
        (m,) = db.get_many("cpu", backend.fingerprint_hash(), sig, [(i, o)]).values()
        w = next(t for t in build_layer_model(sig, i, o).graph.initializer if t.name == "W")
        out[tuple(w.dims)] = m.quality
    return out


def test_no_trusted_point_from_the_slow_phase(tmp_path):
    quiet = FakeMachine()
    with ProfileDB(tmp_path / "quiet.sqlite") as db:
        build_cost_model(_model(), quiet, "cpu", db, FAST)
        assert set(_points(db, quiet).values()) == {"clean"}
    # Slow down 2x halfway through the same profile.
    machine = FakeMachine(slow_after=quiet.calls // 2)
    with ProfileDB(tmp_path / "drift.sqlite") as db:
        build_cost_model(_model(), machine, "cpu", db, FAST)
        points = _points(db, machine)
    full = (24, 24, 3, 3)  # the anchor: measured (clean) before the slowdown, re-timed after
    slow_phase = {s for s in machine.slow_shapes if s in points and s != full}
    assert slow_phase, "the slowdown must hit some measured points"
    assert all(points[s] == "drifted" for s in slow_phase)
    assert points[full] == "clean" and "clean" in {points[s] for s in points if s != full}


def test_noisy_points_are_remeasured_first_on_the_next_run(tmp_path):
    path = tmp_path / "p.sqlite"
    noisy = FakeMachine(jitter=0.5)
    with ProfileDB(path) as db:
        build_cost_model(_model(), noisy, "cpu", db, FAST)
        first = _points(db, noisy)
    assert "noisy" in first.values()
    calm = FakeMachine()
    with ProfileDB(path) as db:
        build_cost_model(_model(), calm, "cpu", db, FAST)
        second = _points(db, calm)
        counts, total = db.quality_counts("cpu"), db.count()
    redone = {s for s, q in first.items() if q == "noisy"}
    assert redone <= set(calm.prepared)  # every noisy point was timed again ...
    assert all(second[s] == "clean" for s in redone)  # ... and is now clean
    assert counts["noisy"] == 0 and counts["clean"] == total


def test_old_rows_migrate_as_legacy_and_export_keeps_flags(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with ProfileDB(path) as db:
        build_cost_model(_model(8), FakeMachine(), "cpu", db, FAST)
        n = db.count()
    conn = sqlite3.connect(path)  # a database from before quality flags: drop the column
    conn.execute("ALTER TABLE measurements DROP COLUMN quality")
    conn.commit()
    conn.close()
    with ProfileDB(path) as db:
        assert db.quality_counts()["legacy"] == n
        doc = db.export_json()
    assert {m["quality"] for m in doc["measurements"]} == {"legacy"}
    with ProfileDB(tmp_path / "new.sqlite") as db:
        db.import_json(doc)
        assert db.quality_counts()["legacy"] == n


class SlowerPruned(FakeMachine):
    """Pruned (non-square) layers now cost ``factor`` times more; full ones do not."""

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        inner = super().prepare(model)
        w = next((i for i in model.graph.initializer if i.name == "W"), None)
        pruned = w is not None and w.dims[0] != w.dims[1]
        factor = self.factor if pruned else 1.0

        class Scaled(Runnable):
            def sample(self, number: int) -> float:
                return inner.sample(number) * factor

        return Scaled()


def test_verify_counts_points_that_hold_and_demotes_those_that_moved(tmp_path):
    from onnx_hwprune.runtime.profiler import load_model_and_layers
    from onnx_hwprune.runtime.verify import verify_profile

    _, layers = load_model_and_layers(_model())
    with ProfileDB(tmp_path / "p.sqlite") as db:
        build_cost_model(_model(), FakeMachine(), "cpu", db, FAST)
        same = verify_profile(layers, FakeMachine(), "cpu", db, sample=8, timing=FAST.timing)
        assert (same.checked, same.held, same.moved) == (8, 8, [])
        assert db.quality_counts()["noisy"] == 0
        moved = verify_profile(layers, SlowerPruned(), "cpu", db, sample=8, timing=FAST.timing)
        assert moved.checked == 8 and moved.held + len(moved.moved) == 8 and moved.moved
        assert all(new == pytest.approx(2 * old) for _, _, old, new in moved.moved)
        assert db.quality_counts()["noisy"] == len(moved.moved)


def test_cli_profile_prints_quality_and_verify(tmp_path, capsys):
    from onnx_hwprune.cli import main

    source = tmp_path / "m.onnx"
    onnx.save(_model(8), source)
    db = tmp_path / "p.sqlite"
    argv = ["profile", str(source), "--threads", "1", "--profile-db", str(db), "--verify", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    with ProfileDB(db) as opened:
        total = opened.count()
    line = re.search(r"profile quality: (\d+) clean, (\d+) noisy, (\d+) drifted, (\d+) legacy", out)
    assert line and sum(map(int, line.groups())) == total > 3 and line.group(4) == "0"
    assert "verify: " in out and "of 3 stored points still hold" in out


def test_consecutive_groups_share_one_check(tmp_path, monkeypatch):
    """The check after a group is the next group's check before it (same anchor): the
    guard costs one check per group, not two, and still catches the slowdown above."""
    from onnx_hwprune.runtime import drift, microbench

    calls = {"check": 0, "group": 0}
    check, measure = drift.DriftGuard.check, microbench.measure

    def counted_check(self, anchor=None):
        calls["check"] += 1
        return check(self, anchor)

    def counted_measure(samplers, config=None):
        calls["group"] += 1
        return measure(samplers, config)

    monkeypatch.setattr(drift.DriftGuard, "check", counted_check)
    monkeypatch.setattr(microbench, "measure", counted_measure)
    with ProfileDB(tmp_path / "p.sqlite") as db:
        build_cost_model(_model(), FakeMachine(), "cpu", db, FAST)
    assert calls["group"] > 3
    assert calls["group"] < calls["check"] < 2 * calls["group"]


def test_one_lucky_fast_reading_does_not_make_every_group_drifted():
    """Under steady load the baseline is the readings' lower quartile, not the fastest
    one: a group at the usual speed is clean, one well above it is "slow" (flagged, not
    redone), and one whose speed changed during the group "moved" (redone)."""
    from onnx_hwprune.runtime.drift import DriftGuard
    from onnx_hwprune.runtime.timing import Timing

    guard = DriftGuard(FakeMachine())
    guard.readings = [1.0] + [2.0] * 8  # one lucky reading on a loaded machine

    def at(ms: float) -> dict:
        return {"reference": Timing(ms, 0.0)}

    assert guard.drifted(at(2.0), at(2.05)) is None
    assert guard.drifted(at(3.0), at(3.0)) == "slow"
    assert guard.drifted(at(2.0), at(3.0)) == "moved"


def test_a_point_untrusted_twice_is_kept_as_retried_and_not_timed_again(tmp_path):
    """On a machine that stays noisy, a re-measured point still noisy is stored as
    ``retried``: the run after does not time it a third time (each run re-timing every
    untrusted point cost minutes on a loaded machine)."""
    path = tmp_path / "p.sqlite"
    for run in range(2):
        with ProfileDB(path) as db:
            build_cost_model(_model(), FakeMachine(jitter=0.5), "cpu", db, FAST)
            if run == 0:
                first = _points(db, FakeMachine())
    retried = {s for s, q in first.items() if q == "noisy"}
    assert retried
    with ProfileDB(path) as db:
        second = _points(db, FakeMachine())
    assert all(second[s] == "retried" for s in retried)
    third = FakeMachine(jitter=0.5)
    with ProfileDB(path) as db:
        build_cost_model(_model(), third, "cpu", db, FAST)
        assert db.quality_counts("cpu")["retried"] == len(retried)
    assert not retried & set(third.prepared)
