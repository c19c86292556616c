"""Trackers and boards are not trusted blindly: fault cases with a fake tracker on loopback
and fake board numbers (no network beyond 127.0.0.1)."""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import tiny_cnn
from onnx import numpy_helper

from onnx_hwprune.cost_models.profile_db import Measurement, ProfileDB
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime import tvm_rpc
from onnx_hwprune.runtime._rpc_trust import (
    DEFAULT_RPC_BOARDS,
    MAX_RPC_BOARDS,
    CheckedBoardDB,
    check_calibration,
    check_points,
    free_from_summary,
    with_random_weights,
)


@pytest.fixture
def listening_port():
    """A loopback socket that accepts connections (the tracker's port probe succeeds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class FakeTracker:
    def __init__(self, summary):
        self._summary = summary

    def summary(self):
        return self._summary


def _check(monkeypatch, port: int, summary, import_s: float = 0.0) -> dict:
    def slow_import():
        time.sleep(import_s)
        return None

    monkeypatch.setattr(tvm_rpc, "_rpc_module", slow_import)
    monkeypatch.setattr(tvm_rpc, "_tracker", lambda opts: FakeTracker(summary))
    opts = tvm_rpc.RpcOptions(f"127.0.0.1:{port}", "k", connect_timeout_s=0.3)
    return tvm_rpc.check_tracker(opts)


MALFORMED = [
    None,
    [],
    {"queue_info": []},
    {"queue_info": {"k": 5}},
    {"queue_info": {"k": {"free": "x"}}},
    {"queue_info": {"k": {"free": -1}}},
    {"queue_info": {"k": {"free": True}}},
    {"queue_info": {"k": {"free": 2.5}}},
]


@pytest.mark.parametrize("summary", MALFORMED, ids=[repr(s)[:30] for s in MALFORMED])
def test_malformed_summary_is_one_user_error(monkeypatch, listening_port, summary):
    with pytest.raises(UserError, match="malformed summary"):
        _check(monkeypatch, listening_port, summary)


def test_free_count_is_capped(monkeypatch, listening_port):
    summary = _check(monkeypatch, listening_port, {"queue_info": {"k": {"free": 400}}})
    assert tvm_rpc.free_boards(summary, "k") == MAX_RPC_BOARDS
    assert free_from_summary(summary, "k", DEFAULT_RPC_BOARDS) == DEFAULT_RPC_BOARDS
    assert free_from_summary({"queue_info": {"k": {"free": 0}}}, "k", 4) == 1  # requests queue


def test_slow_import_does_not_eat_the_connect_window(monkeypatch, listening_port):
    # The import takes longer than the whole window; the tracker still answers in time.
    summary = {"queue_info": {"k": {"free": 1}}}
    assert _check(monkeypatch, listening_port, summary, import_s=0.6) == summary


def test_default_board_count_is_small():
    import argparse

    from onnx_hwprune.cli_commands._rpc import add_rpc_arguments, rpc_options_from_args

    parser = argparse.ArgumentParser()
    add_rpc_arguments(parser)
    args = parser.parse_args(["--rpc-tracker", "h:1", "--rpc-key", "k"])
    opts = rpc_options_from_args(args)
    assert opts.max_boards is None and DEFAULT_RPC_BOARDS <= 8
    too_many = ["--rpc-tracker", "h:1", "--rpc-key", "k", "--rpc-boards", "99"]
    with pytest.raises(UserError, match="--rpc-boards"):
        rpc_options_from_args(parser.parse_args(too_many))


def test_random_weights_keep_shapes_and_run():
    model = tiny_cnn(8)
    shape = onnx.helper.make_tensor("shape", onnx.TensorProto.INT64, [2], [1, -1])
    model.graph.initializer.append(shape)
    twin = with_random_weights(model)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in twin.graph.initializer}
    assert before.keys() == after.keys()
    for name, array in before.items():
        assert after[name].shape == array.shape and after[name].dtype == array.dtype
        if array.dtype.kind == "f" and array.size > 1:
            assert not np.array_equal(after[name], array), name
    assert np.array_equal(after["shape"], before["shape"])  # graph constants are kept
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
            for i in sess.get_inputs()}  # fmt: skip
    assert all(np.isfinite(o).all() for o in sess.run(None, feed))


def test_board_upload_never_carries_the_users_weights(monkeypatch):
    pytest.importorskip("tvm", reason="needs apache-tvm (pip install 'onnx-hwprune[tvm]')")
    from onnx_hwprune.runtime import tvm_emit

    seen = []

    def capture(model, target):
        seen.append(model)
        raise RuntimeError("stop after compile")

    monkeypatch.setattr(tvm_emit, "build_executable", capture)
    backend = tvm_rpc.TvmRpcBackend("127.0.0.1:1", "k", "tvm-llvm")
    model = tiny_cnn(8)
    with pytest.raises(RuntimeError, match="stop after compile"):
        backend.prepare(model)
    backend.close()
    sent = {t.name: numpy_helper.to_array(t) for t in seen[0].graph.initializer}
    for tensor in model.graph.initializer:
        mine = numpy_helper.to_array(tensor)
        assert sent[tensor.name].shape == mine.shape
        assert mine.size <= 1 or not np.array_equal(sent[tensor.name], mine)


def m(ms: float, spread: float = 0.01) -> Measurement:
    return Measurement(ms, spread, 5, 10)


BAD_POINTS = {
    "nan": {(8, 8): m(math.nan)},
    "inf": {(8, 8): m(math.inf)},
    "zero": {(8, 8): m(0.0)},
    "negative": {(8, 8): m(-1.0)},
    "a_day": {(8, 8): m(86_400_000.0)},
    "nan_spread": {(8, 8): m(1.0, math.nan)},
    "bigger_layer_1000x_slower": {(8, 8): m(0.01), (8, 16): m(10.0)},
    "smaller_layer_20x_slower": {(8, 8): m(20.0), (8, 16): m(1.0)},
}


@pytest.mark.parametrize("points", BAD_POINTS.values(), ids=BAD_POINTS.keys())
def test_implausible_board_numbers_are_refused(points):
    with pytest.raises(UserError, match="RPC board"):
        check_points(points, {}, "0 of 'k'")


def test_plausible_staircase_passes_and_stored_neighbours_count():
    stair = {(8, c): m(0.1 * (1 + (c - 1) // 16)) for c in (8, 16, 17, 32, 64)}
    check_points(stair, {}, "b")  # steps of 2x and a 1.6x cliff are real hardware
    with pytest.raises(UserError, match="implausible"):
        check_points({(8, 65): m(500.0)}, stair, "b")  # a new point vs stored neighbours


def test_checked_db_stores_nothing_from_a_bad_batch(tmp_path):
    sig = LayerSignature("Conv", kernel=(3, 3), input_hw=(8, 8))
    with ProfileDB(tmp_path / "db.sqlite") as db:
        checked = CheckedBoardDB(db, "0 of 'k'")
        with pytest.raises(UserError):
            checked.put_many("mali", {"d": 1}, sig, {(8, 8): m(1.0), (8, 9): m(math.nan)})
        assert db.count() == 0
        checked.put_many("mali", {"d": 1}, sig, {(8, 8): m(1.0), (8, 9): m(1.1)})
        assert db.count() == 2


@pytest.mark.parametrize(
    "cal",
    [
        {"total_ms": math.nan, "residual_ms": 0.0, "scales": {}},
        {"total_ms": -1.0, "residual_ms": 0.0, "scales": {}},
        {"total_ms": 1.0, "residual_ms": 5.0, "scales": {}},
        {"total_ms": 1.0, "residual_ms": 0.1, "scales": {"conv": 1e6}},
        {"total_ms": "1", "residual_ms": 0.1, "scales": {}},
    ],
)
def test_implausible_calibration_is_refused(cal):
    with pytest.raises(UserError, match="calibration"):
        check_calibration(cal, "b")
