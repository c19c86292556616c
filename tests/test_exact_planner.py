"""The exact planner against brute force, the greedy, memory limits and its time limit."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_hwprune.frontends.onnx import export_model, load_graph
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.passes.analysis.importance import channel_importance
from onnx_hwprune.passes.plan._channels import ChannelMap
from onnx_hwprune.passes.plan.exact import ExactPlanner
from onnx_hwprune.passes.plan.latency import LatencyPlanner
from onnx_hwprune.passes.plan.memory import MemoryBudget, peak_activation_bytes, weight_bytes
from onnx_hwprune.passes.transform.remove_channels import remove_channels
from onnx_hwprune.testing._graph import GraphBuilder
from onnx_hwprune.testing.families import FAMILIES

_LAYERS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class _Ms:
    ms: float


@dataclass
class TableCost:
    """A layer costs ``table[node][ceil(in/step), ceil(out/step)]``: an arbitrary staircase
    with pairwise interaction; layers absent from ``table`` cost nothing."""

    table: dict[str, np.ndarray]
    step: int = 8
    residual_ms: float = 0.0
    calls: list = field(default_factory=list)

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> _Ms:
        t = self.table.get(node)
        if t is None:
            return _Ms(0.0)
        return _Ms(float(t[math.ceil(in_ch / self.step) - 1, math.ceil(out_ch / self.step) - 1]))


def _setup(graph, cost, scores=None, **kw):
    groups = analyze_channel_groups(graph)
    scores = scores or channel_importance(graph, groups, "l1")
    layers = [n.name for n in graph.nodes if n.op in _LAYERS]
    base = LatencyPlanner(graph, groups, scores, cost, layers, **kw)
    return groups, base


def _random_tables(graph, seed: int, step: int = 8) -> dict[str, np.ndarray]:
    """Latency grows with both counts, plus random non-separable bumps."""
    rng = np.random.default_rng(seed)
    groups = analyze_channel_groups(graph)
    cmap = ChannelMap(graph, groups, [n.name for n in graph.nodes if n.op in _LAYERS])
    tables = {}
    for layer in cmap.layers:
        cin, cout = cmap.layer_counts(layer, {})
        ni, no = math.ceil(cin / step), math.ceil(cout / step)
        base = np.outer(np.arange(1, ni + 1), np.arange(1, no + 1)) * rng.uniform(0.5, 2)
        tables[layer.node] = base + rng.uniform(0, 0.7 * base.max(), size=(ni, no))
    return tables


def _monotone_tables(graph, seed: int) -> dict[str, np.ndarray]:
    """Per-channel tables that rise with both counts by random increments: every count is
    a stair edge, so the program is large."""
    rng = np.random.default_rng(seed)
    groups = analyze_channel_groups(graph)
    cmap = ChannelMap(graph, groups, [n.name for n in graph.nodes if n.op in _LAYERS])
    shapes = {layer.node: cmap.layer_counts(layer, {}) for layer in cmap.layers}
    return {n: np.cumsum(np.cumsum(rng.uniform(size=s), 0), 1) for n, s in shapes.items()}


def _brute_force(exact: ExactPlanner, budget_ms: float) -> tuple[float, float, bool]:
    """(loss, latency, reachable) of the best combination of the planner's levels: least
    loss within the budget, or else least loss at the least latency."""
    levels = exact.levels()
    names = list(levels)
    rows = []
    for combo in itertools.product(*(levels[n] for n in names)):
        counts = dict(zip(names, combo, strict=True))
        rows.append((exact._predict(counts), exact._loss(counts)))
    ok = [(loss, ms) for ms, loss in rows if ms <= budget_ms * (1 + 1e-9)]
    if ok:
        return (*min(ok), True)
    fastest = min(ms for ms, _ in rows)
    return min(loss for ms, loss in rows if ms <= fastest * (1 + 1e-9)), fastest, False


@pytest.mark.parametrize("family", ["vgg", "resnet_basic", "mobilenetv2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(family, seed):
    graph = load_graph(FAMILIES[family]())
    step = 16 if family == "vgg" else 8
    cost = TableCost(_random_tables(graph, seed, step), step=step)
    _, base = _setup(graph, cost)
    exact = ExactPlanner(base, graph, time_limit=60.0, gap=0.0)
    size = math.prod(len(v) for v in exact.levels().values())
    assert 50 <= size <= 50000, f"{size} combinations: not a useful brute force"
    full = base.predict({})
    for fraction in (0.85, 0.6, 0.4):
        loss, ms, reachable = _brute_force(exact, full * fraction)
        result = exact.plan(full * fraction)
        assert result.status == ("optimal" if reachable else "unreachable"), fraction
        assert result.predicted_ms <= (full * fraction if reachable else ms) * (1 + 1e-9)
        assert result.loss == pytest.approx(loss, rel=1e-6, abs=1e-9), fraction


def test_frozen_groups_and_layers_the_cost_model_lacks():
    """The cost model knows two of the layers: groups only the others touch, and frozen
    groups, stay whole; the plan fits the model."""
    graph = load_graph(FAMILIES["resnet_basic"]())
    groups = analyze_channel_groups(graph)
    scores = channel_importance(graph, groups, "l1")
    known = [n.name for n in graph.nodes if n.op == "Conv"][1:3]
    cost = TableCost(_random_tables(graph, 5), step=8)
    base = LatencyPlanner(graph, groups, scores, cost, known)
    result = ExactPlanner(base, graph).plan(base.predict({}) * 0.9)
    assert result.status in ("optimal", "unreachable")
    result.plan.validate(groups)
    assert any(g.frozen for g in groups)
    assert set(result.plan.pruned_groups()) <= set(base.groups)
    assert len(base.groups) < len(groups.prunable)


def test_scipy_fallback_gives_the_same_optimum(monkeypatch):
    """Without highspy the same HiGHS runs through scipy.optimize.milp (no MIP start)."""
    graph = load_graph(FAMILIES["vgg"]())
    _, base = _setup(graph, TableCost(_random_tables(graph, 4, 16), step=16))
    full = base.predict({})
    with_highspy = ExactPlanner(base, graph, gap=0.0).plan(full * 0.5)
    monkeypatch.setitem(sys.modules, "highspy", None)  # import highspy -> ImportError
    with_scipy = ExactPlanner(base, graph, gap=0.0).plan(full * 0.5)
    assert with_scipy.status == with_highspy.status == "optimal"
    assert with_scipy.loss == pytest.approx(with_highspy.loss, rel=1e-9)


def _chain():
    """conv0 -> A(16) -> conv1 -> B(16) -> conv2 -> C(16) -> GAP -> fc(10)."""
    g = GraphBuilder("chain", seed=0)
    x = g.input(3, 8, 8)
    for i in range(3):
        x = g.relu(g.conv(x, 16, 3, name=f"conv{i}"), name=f"relu{i}")
    return g.build(g.gemm(g.flatten(g.gap(x)), 10, name="fc"))


def test_pairwise_interaction_beats_the_greedy():
    """Cutting A alone or B alone saves 1 ms in conv1, both together save 10; cutting C
    saves 6 ms in fc. Each cut (16 -> 8) loses the same importance. To save 10 ms the
    greedy first takes C (the best ratio alone), then A and B: three cuts. The optimum
    cuts A and B only: two."""
    graph = load_graph(_chain())
    groups = analyze_channel_groups(graph)
    scores = {g.name: np.ones(g.size) for g in groups.prunable}
    conv1 = np.array([[1.0, 10.0], [10.0, 11.0]])  # [ceil(a/8)-1, ceil(b/8)-1]
    fc = np.array([[0.0, 0.0], [6.0, 6.0]])  # by ceil(c/8)-1; 10 outputs fit one step of 16
    cost = TableCost({"conv1": conv1, "fc": fc[:, :1].repeat(2, axis=1)}, step=8)
    _, base = _setup(graph, cost, scores)
    assert len(base.groups) == 3
    full = base.predict({})
    assert full == pytest.approx(17.0)
    greedy = base.plan_to_budget(7.0)
    greedy_cuts = sum(len(gp.keep) < gp.size for gp in greedy.groups.values())
    result = ExactPlanner(base, graph, gap=0.0).plan(7.0)
    assert result.status == "optimal"
    assert result.predicted_ms <= 7.0 + 1e-9
    assert greedy.meta["predicted_ms"] <= 7.0 + 1e-9
    assert greedy_cuts == 3
    assert sorted(result.counts.values()) == [8, 8, 16]
    assert result.loss < result.plan.meta["greedy_loss"] - 1.0  # one whole cut less


def test_unreachable_budget_returns_the_fastest_plan_with_the_least_cut(caplog):
    """Only conv1's in-count matters, and only down to 8: a budget below its floor cost
    is unreachable; the plan must cut A to 8 and leave B and C whole."""
    graph = load_graph(_chain())
    conv1 = np.array([[1.0, 1.0], [5.0, 5.0]])
    cost = TableCost({"conv1": conv1}, step=8, residual_ms=1.0)
    _, base = _setup(graph, cost)
    with caplog.at_level("WARNING"):
        result = ExactPlanner(base, graph).plan(0.5)
    assert result.status == "unreachable"
    assert "not reachable" in result.message and "2.000 ms" in result.message
    assert "not reachable" in caplog.text
    assert result.predicted_ms == pytest.approx(2.0)
    counts = sorted(result.counts.values())
    assert counts == [8, 16, 16]
    greedy = base.plan_to_budget(0.5)  # the greedy runs to its floor in every group
    assert sum(len(gp.keep) for gp in greedy.groups.values()) <= sum(counts)


@pytest.mark.parametrize("spec", ["0.5", "weights=0.6,activations=0.7"])
def test_memory_budget_holds_on_the_model(spec):
    model = FAMILIES["resnet_basic"]()
    graph = load_graph(model)
    cost = TableCost(_random_tables(graph, 0))
    groups, base = _setup(graph, cost)
    budget = MemoryBudget.parse(spec)
    full_w, full_a = weight_bytes(graph), peak_activation_bytes(graph)
    result = ExactPlanner(base, graph).plan(base.predict({}) * 0.95, budget)
    assert result.status in ("optimal", "time_limit")
    pruned = remove_channels(graph, groups, result.plan)
    written = export_model(pruned)
    on_disk = sum(onnx.numpy_helper.to_array(t).nbytes for t in written.graph.initializer)
    assert on_disk == weight_bytes(pruned)
    assert on_disk <= budget.weights.resolve(full_w)
    if budget.activations is not None:
        assert peak_activation_bytes(load_graph(written)) <= budget.activations.resolve(full_a)
    # the predicted weight bytes of the chosen counts are the model's, exactly
    from onnx_hwprune.passes.plan.memory import weight_poly

    poly = weight_poly(graph, base.map.width, {n: g.size for n, g in base.groups.items()})
    assert poly.value(result.counts) == pytest.approx(on_disk, abs=0.5)


def test_time_limit_is_honoured():
    """A program with thousands of levels and a 0.2 s limit: the solver stops in time and
    the planner still returns a plan within the budget, with its status and gap."""
    graph = load_graph(FAMILIES["mobilenetv2"]())
    _, base = _setup(graph, TableCost(_monotone_tables(graph, 0), step=1))
    exact = ExactPlanner(base, graph, time_limit=0.2, max_levels=64)
    full = base.predict({})
    result = exact.plan(full * 0.5)
    assert result.plan.meta["levels"] > 200
    assert result.plan.meta["solver_seconds"] < 0.2 + 1.5  # checked between LP iterations
    assert result.plan.meta["status"] in ("optimal", "time_limit", "greedy (solver: time_limit)")
    assert result.predicted_ms <= full * 0.5 * (1 + 1e-9)
    assert "gap" in result.plan.meta
    assert result.loss <= result.plan.meta["greedy_loss"] + 1e-9


def test_memory_budget_parsing():
    assert MemoryBudget.parse("3MB").weights.bytes == 3e6
    assert MemoryBudget.parse("2KiB").weights.bytes == 2048
    assert MemoryBudget.parse("0.6").weights.fraction == 0.6
    both = MemoryBudget.parse("weights=1MB,activations=0.5")
    assert both.weights.bytes == 1e6 and both.activations.fraction == 0.5
    from onnx_hwprune.errors import UserError

    for bad in ("0", "1.5", "3XB", "weights=0.5,weights=0.4", "foo=1"):
        with pytest.raises(UserError):
            MemoryBudget.parse(bad)


_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "onnx_hwprune", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", ["mali", pytest.param("cpu", marks=pytest.mark.slow)])
def test_default_job_plans_exactly_on_the_digits_example(tmp_path, target):
    """The default job (--method latency, budget 0.7) with the exact planner writes a
    valid model that meets the budget on the target's cost model, and records how."""
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    extra = ["--threads", "1", "--no-measure"] if target == "cpu" else []
    # --no-guard: the default budget as given (the guard may relax it; tested elsewhere)
    proc = _cli(str(_EXAMPLES / "digits_resnet.onnx"), str(out), "--target", target,
                "--report", str(report), "--no-guard", *extra)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "HiGHS" not in proc.stdout  # the solver's banner stays off the summary
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(report.read_text())
    meta = data["plan"]["meta"]
    assert meta["planner"] == "exact" and meta["status"] in ("optimal", "time_limit")
    assert meta["importance_loss"] <= meta["greedy_loss"] + 1e-9
    before, after = data["latency"]["predicted"]["network_ms"]
    assert after <= 0.7 * before * (1 + 1e-9)
    assert data["options"]["planner"] == "exact"


def test_planner_and_memory_flags_are_checked(tmp_path):
    model, out = str(_EXAMPLES / "digits_resnet.onnx"), str(tmp_path / "o.onnx")
    for args, words in (
        (["--planner", "nope"], "--planner"),
        (["--memory-budget", "3XB"], "--memory-budget"),
        (["--ratio", "0.3", "--memory-budget", "0.5"], "--memory-budget needs"),
        (["--planner", "greedy", "--memory-budget", "0.5"], "--memory-budget needs"),
    ):
        proc = _cli(model, out, "--target", "mali", *args)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not Path(out).exists()


def test_greedy_planner_still_selectable(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    proc = _cli(str(_EXAMPLES / "digits_resnet.onnx"), str(out), "--target", "mali",
                "--planner", "greedy", "--report", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(report.read_text())["plan"]["meta"]
    assert "planner" not in meta and meta["predicted_ms"] <= meta["budget_ms"] * (1 + 1e-9)


def test_exact_job_is_deterministic(tmp_path):
    """Solved to optimality, the same input and options give byte-identical output."""
    outs = [tmp_path / f"o{i}.onnx" for i in range(2)]
    for out in outs:
        proc = _cli(str(_EXAMPLES / "digits_resnet.onnx"), str(out), "--target", "mali",
                    "--latency-budget", "0.6", "--quiet")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_plan_kept_from_the_greedy_saves_as_readable_json(tmp_path):
    """The greedy's plan has no solver gap: it must save as JSON that --plan reads back
    (NaN is not JSON; a saved PP-OCRv5 det plan was refused with 'NaN is not valid JSON')."""
    from onnx_hwprune._jsonfile import read_json

    graph = load_graph(_chain())
    cost = TableCost({"conv1": np.array([[1.0, 1.0], [5.0, 5.0]])}, step=8, residual_ms=1.0)
    _, base = _setup(graph, cost)
    planner = ExactPlanner(base, graph)
    greedy = planner._greedy(0.9 * base.predict({}), None)
    result = planner._from_greedy(greedy, "greedy (solver: optimal)")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(result.plan.to_json()))
    meta = read_json(path, "plan")["meta"]
    assert meta["status"] == "greedy (solver: optimal)" and meta["gap"] is None
