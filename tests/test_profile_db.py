"""The profile database: round trip, concurrent writers, corruption, export/import."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3

import pytest

from onnx_hwprune.cli_commands import profile as profile_verb
from onnx_hwprune.cost_models.profile_db import (
    SCHEMA_VERSION,
    Measurement,
    ProfileDB,
    fingerprint_hash,
)
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError

SIG = LayerSignature(op="Conv", kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                     dilations=(1, 1), input_hw=(28, 28), bias=True, activation="Relu")  # fmt: skip
FP = {"cpu": "test cpu", "threads": 1}


def test_round_trip(tmp_path):
    points = {(64, o): Measurement(0.1 * o, 0.01, 5, 10) for o in (16, 32, 48)}
    with ProfileDB(tmp_path / "p.sqlite") as db:
        db.put_many("cpu", FP, SIG, points)
    with ProfileDB(tmp_path / "p.sqlite") as db:
        assert db.get_all("cpu", fingerprint_hash(FP), SIG) == points
        assert db.get_many("cpu", fingerprint_hash(FP), SIG, [(64, 16), (1, 1)]) == {
            (64, 16): points[(64, 16)]
        }
        assert db.get_all("cpu", "other-device", SIG) == {}
        assert db.devices("cpu") == [("cpu", fingerprint_hash(FP), FP)]


def _writer(path: str, offset: int) -> None:
    with ProfileDB(path, timeout_s=30) as db:
        for i in range(40):
            pts = {(offset + i, o): Measurement(1.0, 0.0, 1, 1) for o in range(5)}
            db.put_many("cpu", FP, SIG, pts)


def test_two_writer_processes_at_once(tmp_path):
    path = str(tmp_path / "p.sqlite")
    ProfileDB(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 1000)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with ProfileDB(path) as db:
        assert db.count() == 2 * 40 * 5


def test_corrupt_file_gives_clear_error_and_rebuild_keeps_backup(tmp_path):
    path = tmp_path / "p.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="--rebuild"):
        ProfileDB(path)
    db, backup = ProfileDB.rebuild(path)
    with db:
        assert db.count() == 0
        db.put_many("cpu", FP, SIG, {(1, 1): Measurement(1.0, 0.0)})
    assert backup is not None and backup.read_bytes().startswith(b"this is not")


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "p.sqlite"
    ProfileDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="schema version"):
        ProfileDB(path)


def test_export_import_round_trip(tmp_path):
    points = {(i, 64): Measurement(0.01 * i, 0.02, 5, 7) for i in range(4, 65, 4)}
    with ProfileDB(tmp_path / "a.sqlite") as a:
        a.put_many("cpu", FP, SIG, points)
        a.put_calibration("cpu", fingerprint_hash(FP), "model-hash", {"residual_ms": 1.5})
        doc = json.loads(json.dumps(a.export_json()))
    with ProfileDB(tmp_path / "b.sqlite") as b:
        assert b.import_json(doc) == len(points)
        assert b.get_all("cpu", fingerprint_hash(FP), SIG) == points
        assert b.get_calibration("cpu", fingerprint_hash(FP), "model-hash") == {"residual_ms": 1.5}
        assert b.export_json() == doc


def test_import_rejects_unknown_format(tmp_path):
    with ProfileDB(tmp_path / "a.sqlite") as db, pytest.raises(UserError, match="version"):
        db.import_json({"format": "something-else", "version": 99})


def _cli(*argv):
    parser = argparse.ArgumentParser()
    profile_verb.add_arguments(parser)
    return profile_verb.run(parser.parse_args([str(a) for a in argv]))


def test_cli_export_import_and_rebuild(tmp_path, capsys):
    src, dst, out = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "x.json"
    with ProfileDB(src) as db:
        db.put_many("cpu", FP, SIG, {(8, 8): Measurement(0.5, 0.01, 5, 3)})
    assert _cli("export", out, "--profile-db", src) == 0
    assert _cli("import", out, "--profile-db", dst) == 0
    with ProfileDB(dst) as db:
        assert db.count() == 1
    dst.write_bytes(b"garbage" * 500)
    with pytest.raises(UserError, match="--rebuild"):
        _cli("export", out, "--profile-db", dst)
    assert _cli("import", out, "--profile-db", dst, "--rebuild") == 0
    assert list(tmp_path.glob("b.sqlite.corrupt-*.bak"))
    with pytest.raises(UserError):
        _cli("import", tmp_path / "missing.json", "--profile-db", dst)


def _one_conv_model():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32)
    w = numpy_helper.from_array(weights, "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "Conv", ["r", "w"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4
        ),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_exported_profile_plans_on_another_machine(tmp_path):
    """Profile on 'the device', export, import elsewhere, rebuild the same cost model."""
    from onnx_hwprune.runtime.backend import RecordedBackend
    from onnx_hwprune.runtime.ort_cpu import OrtCpuBackend
    from onnx_hwprune.runtime.profiler import ProfileOptions, build_cost_model
    from onnx_hwprune.runtime.timing import TimingConfig

    model = _one_conv_model()
    fast = ProfileOptions(timing=TimingConfig(warmup_s=0.002, min_repeat_s=0.001, rounds=3))
    with ProfileDB(tmp_path / "device.sqlite") as db:
        on_device = build_cost_model(model, OrtCpuBackend(threads=1), "cpu", db, fast)
        doc = db.export_json()
    with ProfileDB(tmp_path / "laptop.sqlite") as db:
        db.import_json(doc)
        ((_, _, fingerprint),) = db.devices("cpu")
        planned = build_cost_model(model, RecordedBackend(fingerprint), "cpu", db, fast)
    assert planned.to_dict() == on_device.to_dict()
    with ProfileDB(tmp_path / "empty.sqlite") as db, pytest.raises(UserError, match="missing"):
        build_cost_model(model, RecordedBackend(fingerprint), "cpu", db, fast)
