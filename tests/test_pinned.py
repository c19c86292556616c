"""``prune --profile FILE``: planning from an exported profile is reproducible anywhere."""

from __future__ import annotations

import json

import onnx
from helpers import tiny_cnn
from test_drift import FAST, FakeMachine

from onnx_hwprune.cli import main
from onnx_hwprune.cost_models.profile_db import ProfileDB, default_db_path
from onnx_hwprune.runtime.profiler import build_cost_model


def _exported_profile(tmp_path, model: onnx.ModelProto):
    """Profile ``model`` on the fake machine and export it (what 'profile export' writes)."""
    with ProfileDB(tmp_path / "device.sqlite") as db:
        build_cost_model(model, FakeMachine(), "cpu", db, FAST)
        doc = db.export_json()
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


def _prune(tmp_path, name: str, source, profile, *extra: str) -> int:
    return main([
        "prune", str(source), str(tmp_path / f"{name}.onnx"), "--target", "cpu",
        "--profile", str(profile), "--latency-budget", "0.6",
        "--report", str(tmp_path / f"{name}.json"), "--quiet", *extra,
    ])  # fmt: skip


def test_pinned_profile_gives_byte_identical_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this test's own default
    model = tiny_cnn(16)
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    profile = _exported_profile(tmp_path, model)
    assert _prune(tmp_path, "a", source, profile) == 0
    assert _prune(tmp_path, "b", source, profile) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    # The reports agree too, but for the exact planner's wall-clock timings of itself.
    assert _without_timings(tmp_path / "a.json") == _without_timings(tmp_path / "b.json")
    pruned = onnx.load(tmp_path / "a.onnx")
    w0 = next(i for i in pruned.graph.initializer if i.name == "w0")
    assert w0.dims[0] < 8  # the budget made the planner remove channels
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["latency"]["predicted"]["source"].startswith("pinned profile profile.json")
    assert "measured" not in report["latency"]  # nothing was timed here
    assert not default_db_path().exists()  # the user's profile database was never touched


def test_pinned_profile_without_this_model_is_a_clear_error(tmp_path, capsys):
    source = tmp_path / "in.onnx"
    onnx.save(tiny_cnn(16), source)
    profile = _exported_profile(tmp_path, tiny_cnn(8))  # another input size: other layers
    assert _prune(tmp_path, "a", source, profile) == 2
    assert "lacks measurements of this model" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def _without_timings(path) -> dict:
    report = json.loads(path.read_text())
    for key in ("planning_seconds", "solver_seconds"):
        report["plan"]["meta"].pop(key, None)
    return report
