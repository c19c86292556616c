"""The main job on the real-model corpus with ``--target tvm-llvm``: never a traceback.

Fast: analysis and planning from a pinned profile (``--profile FILE``) of each model,
recorded on the drift tests' fake machine (latency proportional to the weight count)
under the ``tvm-llvm`` target. It exercises the target's record, the pinned cost model,
the exact planner, removal, the fidelity check and verification, without compiling a
kernel.
Slow: the same job measured with TVM (every layer compiled and timed, minutes a model).
Each comes out valid (checker + onnxruntime, the original's output shapes) or unchanged
with a reason.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from corpus import CORPUS, corpus_model
from helpers import tiny_cnn
from test_drift import FAST as FAST_TIMING
from test_drift import FakeMachine
from test_real_models import FAST, _check_job, _marks

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.errors import NothingToPrice
from onnx_hwprune.frontends.onnx import (
    export_model,
    load_graph,
    parse_input_shapes,
    with_static_inputs,
)
from onnx_hwprune.passes._infra import Module, PassContext
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.runtime.profiler import build_cost_model

TARGET = "tvm-llvm"


def _pinned_profile(model, tmp_path):
    """A ``profile export`` of ``model`` at its planning shape on the fake machine.

    The job prices the static model it derives from ``--input-shape`` (the analysed,
    exported graph at batch 1: ``api.prune_once``): the same steps here give the same
    layers and model key.
    A model with nothing to price gets the device's record only (from a tiny CNN)."""
    shapes = parse_input_shapes([model.input_shape]) if model.input_shape else None
    analysed = ChannelGroupAnalysis()(Module(load_graph(str(model.path), shapes)), PassContext())
    static = with_static_inputs(export_model(analysed.graph))
    with ProfileDB(tmp_path / "fake.sqlite") as db:
        build_cost_model(tiny_cnn(8), FakeMachine(), TARGET, db, FAST_TIMING)
        # Nothing to price: the job says so and copies the model (checked by _check_job).
        with contextlib.suppress(NothingToPrice):
            build_cost_model(static, FakeMachine(), TARGET, db, FAST_TIMING)
        doc = db.export_json()
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("name", _marks(CORPUS, FAST))
def test_tvm_llvm_planning_never_crashes(name, corpus_cache, tmp_path, capsys):
    model = corpus_model(name, corpus_cache)
    profile = _pinned_profile(model, tmp_path)
    report_path = tmp_path / "report.json"
    # An explicit budget: one plan (the guard's bisection is the same on every target,
    # and the fake machine's linear costs make every channel count a level: big MILPs).
    _check_job(model, tmp_path, capsys, "--target", TARGET, "--profile", str(profile),
               "--latency-budget", "0.7", "--report", str(report_path))  # fmt: skip
    report = json.loads(report_path.read_text())
    if "network" in report:  # planned on the pinned profile, and the report says so
        assert report["latency"]["predicted"]["source"].startswith("pinned profile")
    else:
        assert report["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CORPUS))
def test_tvm_llvm_job_never_crashes(name, corpus_cache, tmp_path, capsys):
    """Measured with TVM: each distinct layer is compiled and timed (minutes a model)."""
    pytest.importorskip("tvm", reason="--target tvm-llvm needs apache-tvm (the tvm extra)")
    db = str(corpus_cache / "tvm-profiles.sqlite")  # shared by the session's tvm jobs
    _check_job(corpus_model(name, corpus_cache), tmp_path, capsys, "--target", TARGET,
               "--threads", "1", "--no-measure", "--profile-db", db)  # fmt: skip
