"""Measuring on remote boards through TVM's RPC tracker.

The board side is TVM's own (the engine TVM users already run for device farms)::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190            # any machine
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key hikey970    # on each board

(or TVM's C++ RPC server / Android app, registered under the same key). This module:

- :class:`TvmRpcBackend`: the :class:`~onnx_hwprune.runtime.backend.Backend` of one board,
  obtained from the tracker under a key. ``prepare`` compiles a model here for the
  target (cross-linking for aarch64 where needed), uploads the library, and binds random
  inputs on the board; the runnable's samples are the board's own ``time_evaluator``.
  Its fingerprint comes from the board (device attributes queried over RPC), the key and
  the TVM version, so measurements are stored under that board.
- :func:`~onnx_hwprune.runtime.rpc_boards.profile_through_tracker` (in ``rpc_boards.py``)
  drives every free board of a key at once.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime._rpc_trust import (
    MAX_RPC_BOARDS,
    free_from_summary,
    with_random_weights,
)
from onnx_hwprune.runtime.backend import Backend, Runnable

if TYPE_CHECKING:
    import onnx

__all__ = [
    "RpcOptions",
    "TvmRpcBackend",
    "TvmRpcRunnable",
    "backend_options",
    "check_tracker",
    "free_boards",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RpcOptions:
    """Where the boards are and how long to wait for them.

    Attributes:
        tracker: ``HOST:PORT`` of the tracker; key: the boards' RPC key.
        connect_timeout_s: for reaching the tracker; request_timeout_s: for a free board.
        max_boards: use at most this many boards of the key (``None``: DEFAULT_RPC_BOARDS).
        host_triple: LLVM triple of the boards' CPU for CPU targets (``None``: this host's).
        cross_compiler: C compiler linking the uploaded libraries (``None``: the host's,
            or ``aarch64-linux-gnu-gcc`` for ``mali``).
    """

    tracker: str
    key: str
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    max_boards: int | None = None
    host_triple: str | None = None
    cross_compiler: str | None = None

    def address(self) -> tuple[str, int]:
        """(host, port) of the tracker; :class:`UserError` for a malformed value."""
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--rpc-tracker must be HOST:PORT, got {self.tracker!r}")
        return host, int(port)


def check_tracker(opts: RpcOptions) -> dict:
    """The tracker's summary; :class:`UserError` if unreachable or if no board has
    registered ``opts.key``. Bounded by ``opts.connect_timeout_s``."""
    host, port = opts.address()
    _rpc_module()  # TVM's import can take longer than the window under load: pay it first
    try:
        # TVM's own client retries refused connections for a minute; probe first.
        socket.create_connection((host, port), timeout=opts.connect_timeout_s).close()
    except OSError as exc:
        raise UserError(f"RPC tracker {host}:{port} is unreachable ({exc})") from None
    summary = _bounded(lambda: _tracker(opts).summary(), opts.connect_timeout_s, "tracker")
    queue = summary.get("queue_info") if isinstance(summary, dict) else None
    if not isinstance(queue, dict):
        raise UserError(f"the RPC tracker at {opts.tracker} sent a malformed summary")
    if opts.key not in queue:
        keys = ", ".join(sorted(queue)) or "none"
        raise UserError(
            f"no board registered under key {opts.key!r} at {opts.tracker} (keys: {keys})"
        )
    free_from_summary(summary, opts.key, MAX_RPC_BOARDS)  # malformed entries fail here
    return summary


def free_boards(summary: dict, key: str) -> int:
    """Boards of ``key`` the tracker can hand out now: at least 1 (requests queue), at
    most :data:`MAX_RPC_BOARDS` whatever the tracker claims."""
    return free_from_summary(summary, key, MAX_RPC_BOARDS)


def _rpc_module():
    try:
        from tvm import rpc
    except ImportError:
        raise UserError("remote boards need apache-tvm: pip install 'onnx-hwprune[tvm]'") from None
    return rpc


def _tracker(opts: RpcOptions):
    host, port = opts.address()
    return _rpc_module().connect_tracker(host, port)


def _bounded(fn, timeout_s: float, what: str):
    """``fn()`` in a daemon thread; :class:`UserError` if it takes over ``timeout_s``."""
    result: dict = {}

    def call() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise UserError(f"no answer from the RPC {what} within {timeout_s:.0f}s")
    if "error" in result:
        raise UserError(f"RPC {what} failed: {str(result['error']).strip()[-200:]}")
    return result["value"]


class TvmRpcRunnable(Runnable):
    """A compiled model loaded on a board, inputs bound there; timed by the board."""

    def __init__(self, vm, device, inputs: list):
        self._vm, self._device, self._inputs = vm, device, inputs
        self._vm.set_input("main", *inputs)

    def sample(self, number: int) -> float:
        """Mean seconds per run over ``number`` runs, by the board's ``time_evaluator``."""
        timer = self._vm.time_evaluator("invoke_stateful", self._device, number=number, repeat=1)
        return float(timer("main").mean)

    def close(self) -> None:
        """Drop the remote handles (the board frees them with the session's objects)."""
        self._vm = self._inputs = None


class TvmRpcBackend(Backend):
    """One board of ``key`` from the tracker, running modules built for ``target_name``.

    Args:
        tracker: ``HOST:PORT``; key: the RPC key the boards registered with.
        target_name: ``tvm-llvm``, ``tvm-cuda`` or ``mali``.
        options: the rest of :class:`RpcOptions` (timeouts, host triple, cross compiler).
    """

    name = "tvm-rpc"

    def __init__(self, tracker: str, key: str, target_name: str = "tvm-llvm", **options):
        from onnx_hwprune.runtime.tvm_targets import tvm_target

        self.opts = RpcOptions(tracker, key, **options)
        self.target_name = target_name
        self.target = tvm_target(target_name)
        self.kind = self.target.device
        self._session = None
        self._fingerprint: dict | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="hwprune-rpc-")

    # -- the board ---------------------------------------------------------------------
    def session(self):
        """The RPC session with the board, requested from the tracker on first use."""
        if self._session is None:
            check_tracker(self.opts)
            self._session = _bounded(
                lambda: _tracker(self.opts).request(self.opts.key, priority=1, max_retry=1),
                self.opts.request_timeout_s,
                f"tracker (waiting for a free board of key {self.opts.key!r})",
            )
        return self._session

    def device(self):
        """The board's device of this target's kind (cpu / cuda / cl)."""
        sess = self.session()
        return {"cpu": sess.cpu, "cuda": sess.cuda, "opencl": sess.cl}[self.kind](0)

    def target_dict(self) -> dict:
        """The TVM target the micro-benchmarks are compiled for."""
        from onnx_hwprune.runtime.tvm_targets import compile_target

        return compile_target(self.target_name, host_triple=self.opts.host_triple)

    def fingerprint(self) -> dict:
        """The board's device attributes (over RPC), the key, the target, TVM's version."""
        if self._fingerprint is None:
            import tvm

            self._fingerprint = {
                "backend": self.name,
                "rpc_key": self.opts.key,
                "target_name": self.target_name,
                "target": self.target_dict(),
                "tvm": tvm.__version__,
                "device": {"kind": self.kind, **_device_attributes(self.device())},
                "board_cpu": _remote_cpu_name(self.session()),
            }
        return self._fingerprint

    # -- running -----------------------------------------------------------------------
    def prepare(self, model: onnx.ModelProto) -> TvmRpcRunnable:
        """Compile here, upload, load on the board, bind random inputs on its device."""
        import numpy as np
        import tvm
        from tvm import relax

        from onnx_hwprune.runtime.ort_cpu import random_feeds
        from onnx_hwprune.runtime.tvm_emit import build_executable, export_executable

        # The board gets the graph with random weights, never the user's (see _rpc_trust).
        model = with_random_weights(model)
        exe = build_executable(model, self.target_dict())
        name = f"hwprune_{uuid.uuid4().hex[:12]}.so"
        local = Path(self._workdir.name) / name
        export_executable(exe, local, self.linker())
        sess, dev = self.session(), self.device()
        sess.upload(str(local))
        local.unlink()
        vm = relax.VirtualMachine(sess.load_module(name), dev)
        feeds = random_feeds(model)
        inputs = [tvm.runtime.tensor(np.ascontiguousarray(v), dev) for v in feeds.values()]
        return TvmRpcRunnable(vm, dev, inputs)

    def linker(self) -> str | None:
        """The C compiler linking uploads (a cross compiler for mali or a host triple);
        :class:`UserError` if it is missing."""
        from onnx_hwprune.runtime.tvm_emit import find_cross_compiler

        if self.target.host_triple or self.opts.host_triple:
            return find_cross_compiler(self.opts.cross_compiler)
        return self.opts.cross_compiler

    def close(self) -> None:
        """Give the board back to the tracker and remove the staging directory."""
        self._session = None
        self._workdir.cleanup()


_DEVICE_ATTRS = (
    "device_name",
    "compute_version",
    "max_clock_rate",
    "multi_processor_count",
    "max_threads_per_block",
    "warp_size",
    "max_shared_memory_per_block",
    "total_global_memory",
    "l2_cache_size_bytes",
    "driver_version",
)


def _device_attributes(dev) -> dict:
    """Whatever of :data:`_DEVICE_ATTRS` the board's runtime answers (CPU devices answer
    few of them; OpenCL and CUDA devices answer most)."""
    out: dict = {}
    for attr in _DEVICE_ATTRS:
        try:
            value = getattr(dev, attr)
        except Exception:  # an attribute the remote runtime does not implement
            continue
        if value is not None:
            out[attr] = value if isinstance(value, (int, float, str)) else str(value)
    return out


def _remote_cpu_name(sess) -> str | None:
    """The board CPU's LLVM name if its server has TVM's compiler (Python server)."""
    try:
        get = sess.get_function("tvm.codegen.llvm.GetHostCPUName")
        return str(get())
    except Exception:  # C++ RPC servers carry the runtime only
        return None


def backend_options(opts: RpcOptions) -> dict:
    """Keyword arguments of :class:`TvmRpcBackend` beyond tracker and key."""
    fields = dict(opts.__dict__)
    fields.pop("tracker"), fields.pop("key")
    return fields
