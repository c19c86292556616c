"""Profiling through a real TVM RPC tracker with two servers on 127.0.0.1 (CPU device).

The tracker and servers are TVM's own (``python -m tvm.exec.rpc_tracker`` /
``rpc_server``), started as subprocesses in their own process groups (the server forks a
child per session) and always killed at teardown.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import onnx
import pytest
from helpers import tiny_cnn

from onnx_hwprune.cost_models.profile_db import ProfileDB
from onnx_hwprune.cost_models.staircase import SearchConfig
from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.profiler import ProfileOptions
from onnx_hwprune.runtime.timing import TimingConfig

_MISSING = [
    m for m in ("tvm", "tornado", "cloudpickle", "psutil") if not importlib.util.find_spec(m)
]
pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(bool(_MISSING), reason=f"missing packages: {_MISSING}"),
]

HOST = "127.0.0.1"
FAST = ProfileOptions(
    search=SearchConfig(coarse=2, min_points=4, max_fraction=0.5),
    timing=TimingConfig(warmup_s=0.002, min_repeat_s=0.001, rounds=3, max_remeasure=0),
    anchor=False,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: forked session children die too
    )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture(scope="module")
def tracker():
    port = _free_port()
    proc = _spawn("tvm.exec.rpc_tracker", "--host", HOST, "--port", str(port),
                  "--port-end", str(port + 1), "--silent")  # fmt: skip
    try:
        _wait(lambda: _listening(port), 60, "tracker")
        yield f"{HOST}:{port}"
    finally:
        _kill(proc)


def _free_boards(tracker: str, key: str) -> int:
    from tvm import rpc

    host, port = tracker.split(":")
    queue = rpc.connect_tracker(host, int(port)).summary()["queue_info"]
    return queue.get(key, {}).get("free", 0)


@pytest.fixture
def servers(tracker, request):
    key = f"loop-{request.node.name[:20]}"
    procs = [
        _spawn("tvm.exec.rpc_server", "--tracker", tracker, "--key", key, "--host", HOST,
               "--port", str(p), "--port-end", str(p + 1), "--silent")
        for p in (_free_port(), _free_port())
    ]  # fmt: skip
    try:
        _wait(lambda: _free_boards(tracker, key) == 2, 60, "two RPC servers")
        yield tracker, key, procs
    finally:
        for proc in procs:
            _kill(proc)


def tiny_model() -> onnx.ModelProto:
    """conv(3->8)+Relu -> conv(8->8)+Relu -> GAP -> Flatten -> Gemm(8->4), 8x8 input."""
    return tiny_cnn(8)


def _profile(tracker, key, db, progress=None):
    from onnx_hwprune.runtime.rpc_boards import profile_through_tracker
    from onnx_hwprune.runtime.tvm_rpc import RpcOptions

    opts = RpcOptions(tracker, key, connect_timeout_s=5, request_timeout_s=30)
    return profile_through_tracker(tiny_model(), "tvm-llvm", opts, db, FAST, progress)


def test_profile_on_two_loopback_boards_stores_remote_fingerprint(servers, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="onnx_hwprune.runtime.rpc_boards")
    tracker, key, _ = servers
    start = time.monotonic()
    with ProfileDB(tmp_path / "p.sqlite") as db:
        cost = _profile(tracker, key, db)
        devices = db.devices("tvm-llvm")
        assert db.count() > 5
    assert time.monotonic() - start < 120
    assert [e.node for e in cost.layers] == ["conv0", "conv1", "fc"]
    assert cost.layer_latency("conv1", 8, 8).ms > 0
    (fp_hash, fp) = devices[0][1:]
    assert len(devices) == 1 and fp_hash == cost.fingerprint_hash
    assert fp["backend"] == "tvm-rpc" and fp["rpc_key"] == key and fp["tvm"]
    assert fp["device"]["kind"] == "cpu"
    # Both boards took layers (three signatures, two boards in parallel).
    assert "board 0 of" in caplog.text and "board 1 of" in caplog.text


def test_mali_backend_compiles_opencl_and_links_for_aarch64():
    import shutil

    from onnx_hwprune.runtime.tvm_rpc import TvmRpcBackend

    backend = TvmRpcBackend(f"{HOST}:1", "hikey970", "mali")
    target = backend.target_dict()
    assert target["kind"] == "opencl" and target["device"] == "mali"
    assert target["host"]["mtriple"] == "aarch64-linux-gnu"
    if shutil.which("aarch64-linux-gnu-gcc"):
        assert backend.linker().endswith("aarch64-linux-gnu-gcc")
    backend.close()


def test_killing_one_board_mid_run_still_completes(servers, tmp_path, caplog):
    tracker, key, procs = servers
    killed = threading.Event()

    def progress(index, count, newly, label):
        if newly and not killed.is_set():
            killed.set()  # after the first stored batch: the board in flight loses its work
            _kill(procs[0])

    with ProfileDB(tmp_path / "p.sqlite") as db:
        cost = _profile(tracker, key, db, progress)
        assert killed.is_set() and procs[0].poll() is not None
        assert "dropped off" in caplog.text  # the killed board's layer moved to the other
        stored = db.count()
        assert {e.node for e in cost.layers} == {"conv0", "conv1", "fc"}
        # Resumable: everything is in the database; a rerun measures again only the
        # points flagged noisy/drifted (never final), or nothing.
        counts, new = db.quality_counts(), []
        _profile(tracker, key, db, lambda i, n, newly, label: new.append(newly))
        untrusted = counts["noisy"] + counts["drifted"]
        assert (sum(new) > 0) == (untrusted > 0)
        assert untrusted or db.count() == stored


def test_unreachable_tracker_is_one_clear_error():
    from onnx_hwprune.runtime.tvm_rpc import RpcOptions, check_tracker

    start = time.monotonic()
    with pytest.raises(UserError, match="unreachable"):
        check_tracker(RpcOptions(f"{HOST}:{_free_port()}", "k", connect_timeout_s=2))
    assert time.monotonic() - start < 10


def test_unknown_key_is_one_clear_error(tracker):
    from onnx_hwprune.runtime.tvm_rpc import RpcOptions, check_tracker

    with pytest.raises(UserError, match="no board registered under key 'nope'"):
        check_tracker(RpcOptions(tracker, "nope", connect_timeout_s=5))


def test_malformed_tracker_address():
    from onnx_hwprune.runtime.tvm_rpc import RpcOptions

    with pytest.raises(UserError, match="HOST:PORT"):
        RpcOptions("localhost", "k").address()


def test_cli_options_parse_and_pair():
    import argparse

    from onnx_hwprune.cli_commands._rpc import add_rpc_arguments, rpc_options_from_args

    parser = argparse.ArgumentParser()
    add_rpc_arguments(parser)
    assert rpc_options_from_args(parser.parse_args([])) is None
    opts = rpc_options_from_args(
        parser.parse_args(["--rpc-tracker", "h:9190", "--rpc-key", "k", "--rpc-boards", "2"])
    )
    assert opts.address() == ("h", 9190) and opts.max_boards == 2
    with pytest.raises(UserError, match="go together"):
        rpc_options_from_args(parser.parse_args(["--rpc-key", "k"]))
