"""In-context costs: whole pruned networks timed per node correct the isolated staircases,
and the planner avoids a penalised channel count by its cost, not by a rule."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune.context_configs import context_models
from onnx_hwprune.cost_models.context import (
    ContextCorrection,
    ContextPoint,
    alignment_class,
    correction_from_points,
)
from onnx_hwprune.cost_models.network import NetworkCostModel
from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.staircase import StaircaseModel
from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.onnx import export_model, load_graph, normalize_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan.latency import LatencyPlanner
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.runtime.backend import Backend, Runnable
from onnx_hwprune.runtime.profiler import ProfileOptions, build_cost_model, model_key
from onnx_hwprune.runtime.timing import TimingConfig

FAST = ProfileOptions(timing=TimingConfig(warmup_s=0.002, min_repeat_s=0.001, rounds=3))
PENALTY = 1.5


def _chain(width: int = 16) -> onnx.ModelProto:
    """x -> a (width) -> relu -> b (width) -> relu -> c (8): two prunable groups."""
    rng = np.random.default_rng(0)
    shapes = {"wa": (width, width), "wb": (width, width), "wc": (8, width)}
    inits = [numpy_helper.from_array(rng.standard_normal((*s, 3, 3)).astype(np.float32), n)
             for n, s in shapes.items()]  # fmt: skip
    conv = dict(kernel_shape=[3, 3], pads=[1] * 4)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ya"], name="a", **conv),
        helper.make_node("Relu", ["ya"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["yb"], name="b", **conv),
        helper.make_node("Relu", ["yb"], ["rb"], name="relu_b"),
        helper.make_node("Conv", ["rb", "wc"], ["y"], name="c", **conv),
    ]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _convs(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Conv node name -> (in, out) channels, read from its weight."""
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {n.name: (dims[n.input[1]][1], dims[n.input[1]][0])
            for n in model.graph.node if n.op_type == "Conv"}  # fmt: skip


def _ms(cin: int, cout: int) -> float:
    return 0.01 + 1e-3 * cin * cout


class LayoutMachine(Backend):
    """Latency ~ in * out per conv, alone or in a network. In context (per-node profile)
    a conv whose in-channels are not a multiple of 4 costs ``PENALTY`` times more, like
    onnxruntime leaving its NCHWc layout; a lone layer (the micro-benchmark) never shows it."""

    name = "layout-machine"

    def __init__(self) -> None:
        self.profiled: list[str] = []

    def fingerprint(self) -> dict:
        return {"machine": "layout"}

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        seconds = self.context_ms(model) * 1e-3

        class Fixed(Runnable):
            def sample(self, number: int) -> float:
                return seconds

        return Fixed()

    def node_ms(self, model: onnx.ModelProto) -> dict[str, float]:
        convs = _convs(model)
        if len(convs) < 2:  # a lone layer: its input arrives in the layout it wants
            return {n: _ms(i, o) for n, (i, o) in convs.items()} or {"other": 0.01}
        ms = {n: _ms(i, o) * (PENALTY if i % 4 else 1.0) for n, (i, o) in convs.items()}
        return {**ms, "glue": 0.05}

    def context_ms(self, model: onnx.ModelProto) -> float:
        return sum(self.node_ms(model).values())

    def node_times(self, model: onnx.ModelProto) -> dict[str, float]:
        return self.node_ms(model)

    def node_times_many(self, models: dict) -> dict:
        self.profiled += list(models)
        return {name: self.node_ms(m) for name, m in models.items()}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """(model, machine, cost with context, cost without, db path)."""
    path = tmp_path_factory.mktemp("ctx") / "p.sqlite"
    model, machine = _chain(), LayoutMachine()
    with ProfileDB(path) as db:
        cost = build_cost_model(model, machine, "cpu", db, FAST, context_models=context_models)
    with ProfileDB(tmp_path_factory.mktemp("raw") / "p.sqlite") as db:
        raw = build_cost_model(model, LayoutMachine(), "cpu", db, FAST)  # nothing in context
    return model, machine, cost, raw, path


def test_penalty_is_discovered_in_context(profiled):
    _, machine, cost, raw, _ = profiled
    assert {"full", "v0", "v1", "v2", "v3", "half_v0"} <= set(machine.profiled)
    full = cost.layer_latency("b", 16, 16).ms
    for count in (15, 14, 13):  # off the multiple of 4: penalised by the measured factor
        fixed, alone = cost.layer_latency("b", count, 16).ms, raw.layer_latency("b", count, 16).ms
        assert fixed / alone == pytest.approx(PENALTY, rel=0.1), count
        assert fixed > full  # the isolated staircase called it cheaper than full
    for count in (12, 8):  # multiples of 4: the isolated estimate stands
        fixed, alone = cost.layer_latency("b", count, 16).ms, raw.layer_latency("b", count, 16).ms
        assert fixed / alone == pytest.approx(1.0, rel=0.1), count
    # The producer of a 15-channel tensor keeps its aligned input: no penalty.
    assert cost.layer_latency("a", 16, 15).ms == pytest.approx(
        raw.layer_latency("a", 16, 15).ms, rel=0.1
    )


def _plan_true_ms(model, cost, fraction: float) -> tuple[float, float, list[int]]:
    """(budget, in-context ms of the planned model on the machine, kept counts)."""
    graph = load_graph(model)
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    planner = LatencyPlanner(graph, groups, scores, cost, ["a", "b", "c"], channel_multiple=1)
    budget = planner.predict({}) * fraction
    plan = planner.plan_to_budget(budget)
    pruned = export_model(remove_channels(graph, groups, plan))
    counts = [len(gp.keep) for gp in plan.groups.values()]
    return budget, LayoutMachine().context_ms(pruned), counts


def test_planner_avoids_the_penalty_by_cost(profiled):
    """No rule forbids any count (channel_multiple=1): with the measured penalty the plans
    meet their budgets on the machine; without it, the planner cuts to 15 of 16 channels
    and the result runs over budget."""
    model, _, cost, raw, _ = profiled
    for fraction in (0.9, 0.7, 0.5):
        budget, true_ms, counts = _plan_true_ms(model, cost, fraction)
        assert true_ms <= budget * 1.02, (fraction, counts)
    budget, true_ms, counts = _plan_true_ms(model, raw, 0.9)
    assert any(c % 4 for c in counts) and true_ms > budget * 1.1, counts
    budget, true_ms, counts = _plan_true_ms(model, cost, 0.9)
    assert all(c % 4 == 0 for c in counts), counts  # 13-15 cost more than 16 in context


def test_points_are_stored_apart_and_reused(profiled):
    model, machine, cost, _, path = profiled
    with ProfileDB(path) as db:
        fp = machine.fingerprint_hash()

        points = db.get_context("cpu", fp, model_key(normalize_model(model)))
        assert {p.config for p in points} == {"full", "v0", "v1", "v2", "v3", "half_v0"}
        assert db.count() == len(db.all_points("cpu", fp))  # measurements hold no such row
        again = LayoutMachine()
        second = build_cost_model(model, again, "cpu", db, FAST, context_models=context_models)
    assert again.profiled == []  # stored: not timed again
    assert second.layer_latency("b", 15, 16).ms == pytest.approx(cost.layer_latency("b", 15, 16).ms)
    assert NetworkCostModel.from_dict(cost.to_dict()) == cost


def test_correction_classes_and_interpolation():
    """Ratios are relative to the full point; a query uses its own class, then its
    in-class, then the aligned points, interpolated over the kept MAC fraction."""
    pts = [
        ContextPoint("full", "n", 64, 64, 2.0),
        ContextPoint("stair", "n", 32, 32, 0.5 * 2.0 * 0.5),  # ratio 1.0 at 1/4 of the MACs
        ContextPoint("v0", "n", 63, 63, 1.0 * (63 * 63 / 4096) * 2.0 * 1.4),
    ]
    stair = StaircaseModel("k", "dense", 64, 64, 1.0, ())  # no axes: proportional estimate
    corr = correction_from_points(stair, 64, 64, pts)
    assert corr.factor(64, 64) == pytest.approx(1.0)
    assert corr.factor(63, 64) == pytest.approx(1.4)  # in-class of the odd point
    assert corr.factor(64, 63) == pytest.approx(1.0)  # aligned input: aligned points
    assert alignment_class(48, 64) == 4 and alignment_class(63, 64) == 0
    assert correction_from_points(stair, 64, 64, pts[1:]) is None  # no full point
    back = ContextCorrection.from_dict(corr.to_dict())
    assert back == corr


def test_profiler_reads_the_frontends_model_as_it_is(tmp_path, monkeypatch):
    """#10: the pipeline hands its own exported, static model; the profiler takes its
    layers from it without normalising it a second time, and prices it the same."""
    import onnx_hwprune.frontends.onnx as frontend

    static = frontend.with_static_inputs(frontend.export_model(load_graph(_chain())))
    with ProfileDB(tmp_path / "p.sqlite") as db:
        twice = build_cost_model(static, LayoutMachine(), "cpu", db, FAST)

        def refuse(*_a, **_k):
            raise AssertionError("normalised a second time")

        monkeypatch.setattr(frontend, "normalize_model", refuse)
        once = build_cost_model(static, LayoutMachine(), "cpu", db, FAST, normalized=True)
    assert [e.node for e in once.layers] == [e.node for e in twice.layers] == ["a", "b", "c"]
    assert once.predict({"b": (12, 16)}) == pytest.approx(twice.predict({"b": (12, 16)}))


_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (target TEXT NOT NULL, fp_hash TEXT NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (target, fp_hash));
CREATE TABLE measurements (target TEXT NOT NULL, fp_hash TEXT NOT NULL,
    signature TEXT NOT NULL, in_ch INTEGER NOT NULL, out_ch INTEGER NOT NULL,
    median_ms REAL NOT NULL, spread REAL NOT NULL, samples INTEGER NOT NULL,
    number INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (target, fp_hash, signature, in_ch, out_ch));
CREATE TABLE calibrations (target TEXT NOT NULL, fp_hash TEXT NOT NULL, model TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (target, fp_hash, model));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO devices VALUES ('cpu', 'abc', '{}');
INSERT INTO measurements VALUES ('cpu', 'abc', '{"op": "Conv"}', 64, 64, 0.9, 0.01, 5, 10, 0);
INSERT INTO calibrations VALUES ('cpu', 'abc', 'm1', '{"residual_ms": 0.1}');
"""


def test_old_database_opens_and_gains_the_context_table(tmp_path):
    """A file written before in-context points (and quality flags) keeps every row; the
    new table is added empty, and points stored there never show up as measurements."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.close()
    with ProfileDB(path) as db:
        assert db.count() == 1 and db.quality_counts()["legacy"] == 1
        assert db.get_calibration("cpu", "abc", "m1") == {"residual_ms": 0.1}
        assert db.get_context("cpu", "abc", "m1") == []
        db.put_context("cpu", "abc", "m1", [ContextPoint("v0", "conv", 63, 63, 2.8)])
        assert db.count() == 1  # not a measurement
    with ProfileDB(path) as db:
        assert db.get_context("cpu", "abc", "m1") == [ContextPoint("v0", "conv", 63, 63, 2.8)]


def test_exports_with_and_without_context_points_import(tmp_path):
    with ProfileDB(tmp_path / "a.sqlite") as db:
        db.put_context("cpu", "abc", "m1", [ContextPoint("full", "conv", 64, 64, 2.1),
                                            ContextPoint("v0", "conv", 63, 63, 2.8)])  # fmt: skip
        doc = db.export_json()
    assert len(doc["context_points"]) == 2
    with ProfileDB(tmp_path / "b.sqlite") as db:
        db.import_json(doc)
        assert len(db.get_context("cpu", "abc", "m1")) == 2
        old = {k: v for k, v in doc.items() if k != "context_points"}  # an older export
        db.import_json(old)
        assert len(db.get_context("cpu", "abc", "m1")) == 2
    bad = {**doc, "context_points": [{**doc["context_points"][0], "ms": -1.0}]}
    with ProfileDB(tmp_path / "c.sqlite") as db, pytest.raises(UserError, match="context_points"):
        db.import_json(bad)


def test_configurations_probe_each_alignment_class():
    from onnx_hwprune.context_configs import CONFIGS, config_plans

    assert {n: CONFIGS[n](64) for n in CONFIGS} == {
        "stair": 48, "v0": 63, "v1": 62, "v2": 60, "v3": 56, "half": 32, "half_v0": 31
    }  # fmt: skip
    assert CONFIGS["stair"](16) is None and CONFIGS["v2"](12) is None
    assert CONFIGS["half"](24) == 8 and CONFIGS["half"](16) is None  # 24's class: 8 | c
    for n in range(8, 300):  # the deep probes stay in the class they stand for
        half, odd = CONFIGS["half"](n), CONFIGS["half_v0"](n)
        assert odd % 2 == 1 and n // 4 <= odd <= n // 2, n
        assert half is None or alignment_class(half, n) == alignment_class(n, n), n
    plans = config_plans(analyze_channel_groups(load_graph(_chain())))
    counts = {name: sorted(len(gp.keep) for gp in p.groups.values()) for name, p in plans.items()}
    assert counts == {"v0": [15, 15], "v1": [14, 14], "v2": [12, 12], "v3": [8, 8],
                      "half_v0": [7, 7]}  # fmt: skip


def test_a_calibration_stored_before_followers_is_measured_again(tmp_path):
    """A calibration from an older database held the followers' time (or the inlined
    HardSwish's) in its constant residual: with a per-node profiler at hand it is
    re-measured, not trusted."""
    model = _chain()
    with ProfileDB(tmp_path / "p.sqlite") as db:
        first = build_cost_model(model, LayoutMachine(), "cpu", db, FAST)
        key = ("cpu", LayoutMachine().fingerprint_hash(), model_key(normalize_model(model)))
        stored = db.get_calibration(*key)
        current = stored["attribution"]
        assert "followers" in stored and current >= 3
        # versions 0 and 1 lack the keys; 2 did not walk a conv's chain through a fused Mul
        for old in ({k: v for k, v in stored.items() if k not in ("followers", "attribution")},
                    {k: v for k, v in stored.items() if k != "attribution"},
                    {**stored, "attribution": 2}):  # fmt: skip
            db.put_calibration(*key, {**old, "residual_ms": 99.0})
            again = build_cost_model(model, LayoutMachine(), "cpu", db, FAST)
            assert db.get_calibration(*key)["attribution"] == current
            assert again.residual_ms == pytest.approx(first.residual_ms) != 99.0


def test_context_points_missing_a_configuration_are_measured_again(tmp_path):
    """Points stored before a configuration was added lack it: with a per-node profiler
    at hand the set is measured again, and a complete set is reused as it is, unless
    the calibration stored with it is of an older attribution."""
    model = _chain()
    key = ("cpu", LayoutMachine().fingerprint_hash(), model_key(normalize_model(model)))
    with ProfileDB(tmp_path / "p.sqlite") as db:
        build_cost_model(model, LayoutMachine(), "cpu", db, FAST, context_models=context_models)
        full_set = db.get_context(*key)
        db.put_context(*key, [p for p in full_set if p.config != "half_v0"])
        machine = LayoutMachine()
        build_cost_model(model, machine, "cpu", db, FAST, context_models=context_models)
        assert "half_v0" in machine.profiled
        assert db.get_context(*key) == full_set  # the whole set again, in its stored order
        again = LayoutMachine()
        build_cost_model(model, again, "cpu", db, FAST, context_models=context_models)
        assert again.profiled == []
        # a calibration of an older attribution: its in-context points go with it
        cal = {k: v for k, v in db.get_calibration(*key).items() if k != "attribution"}
        db.put_calibration(*key, cal)
        older = LayoutMachine()
        build_cost_model(model, older, "cpu", db, FAST, context_models=context_models)
    assert {"full", "half_v0"} <= set(older.profiled)
