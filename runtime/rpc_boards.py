"""Profile a model on several boards of one RPC key at once, surviving boards that leave.

Each board (a :class:`~onnx_hwprune.runtime.tvm_rpc.TvmRpcBackend`) runs in its own thread
and takes the next layer signature from a shared queue. Every measured batch goes into
the profile database at once (each thread has its own connection to the file), so a
board that drops off loses at most the batch in flight; its layer goes back to the queue
for another board, which reuses whatever was stored, since boards of one key share a
fingerprint. A board that finishes early waits while others still measure, so a layer
put back late still finds a taker. A rerun resumes from the database.
"""

from __future__ import annotations

import logging
import threading

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime._rpc_trust import DEFAULT_RPC_BOARDS, CheckedBoardDB
from onnx_hwprune.runtime.tvm_rpc import (
    RpcOptions,
    TvmRpcBackend,
    backend_options,
    check_tracker,
    free_boards,
)

__all__ = ["profile_through_tracker"]

logger = logging.getLogger(__name__)


def profile_through_tracker(
    source,
    target_name: str,
    opts: RpcOptions,
    db,
    options=None,
    progress=None,
):
    """Profile every layer of ``source`` on the boards of ``opts.key``, in parallel.

    Args:
        source: model path or ``onnx.ModelProto`` (symbolic batch becomes 1).
        target_name: the ``--target`` the boards are measured as (DB key).
        opts: tracker, key and limits.
        db: an open :class:`~onnx_hwprune.cost_models.profile_db.ProfileDB`; each board's
            thread opens its own connection to the same file.
        options, progress: as for :func:`~onnx_hwprune.runtime.profiler.build_cost_model`.

    Returns:
        The network cost model, calibrated on one surviving board.

    Raises:
        UserError: unreachable tracker, unknown key, or every board dropped off (what
            they measured is in the database: rerun to resume).
        BudgetExceeded: the time budget ran out (resumable as well).
    """
    from onnx_hwprune.runtime.profiler import build_cost_model, load_model_and_layers

    model, layers = load_model_and_layers(_static(source))
    if not layers:
        raise UserError("the model has no prunable Conv/Gemm/MatMul layer with constant weights")
    TvmRpcBackend(opts.tracker, opts.key, target_name, **backend_options(opts)).linker()
    wanted = free_boards(check_tracker(opts), opts.key)
    boards = [
        TvmRpcBackend(opts.tracker, opts.key, target_name, **backend_options(opts))
        for _ in range(min(wanted, opts.max_boards or DEFAULT_RPC_BOARDS))
    ]
    pool = _BoardPool(boards, layers, target_name, db.path, options, progress)
    survivors = pool.run()
    logger.info("layers measured on %d board(s); calibrating on one", len(boards))
    try:
        for board in survivors:  # calibrate on the first board that is still there
            try:
                checked = CheckedBoardDB(db, repr(board.opts.key))
                return build_cost_model(model, board, target_name, checked, options, progress)
            except Exception as exc:
                if not _is_board_failure(exc) or board is survivors[-1]:
                    raise
                logger.warning("a board dropped off while calibrating: %s", _short(exc))
    finally:
        for board in boards:
            board.close()
    raise AssertionError("unreachable: survivors is never empty")


def _static(source):
    import onnx

    from onnx_hwprune.frontends.onnx import with_static_inputs

    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    return with_static_inputs(model)


class _BoardPool:
    """One thread per board; a shared queue of distinct layers; failed layers requeued.

    A board that finishes while another is still measuring waits instead of leaving: if
    the other drops off, its layer comes back to the queue and needs a taker.
    """

    def __init__(self, boards, layers, target_name, db_path, options, progress):
        distinct: dict = {}
        for layer in layers:
            key = (layer.signature.key(), layer.in_channels, layer.out_channels)
            distinct.setdefault(key, layer)
        self.todo = list(enumerate(distinct.values()))
        self.count, self.in_flight = len(self.todo), 0
        self.boards, self.target, self.db_path = boards, target_name, db_path
        self.options, self.progress = options, progress
        self.cond = threading.Condition()
        self.alive: list = []
        self.errors: list[BaseException] = []

    def run(self) -> list:
        """Measure everything; returns the boards still alive."""
        threads = [threading.Thread(target=self._work, args=(b,), daemon=True) for b in self.boards]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fatal = [e for e in self.errors if not _is_board_failure(e)]
        if fatal:
            raise fatal[0]
        if self.todo or not self.alive:
            last = f" (last error: {_short(self.errors[-1])})" if self.errors else ""
            raise UserError(
                f"every board of key {self.boards[0].opts.key!r} dropped off with "
                f"{len(self.todo)} layer signature(s) left; finished measurements are in "
                f"{self.db_path}: rerun to resume{last}"
            )
        return self.alive

    def _next(self):
        with self.cond:
            while not self.todo and self.in_flight and not self._stop():
                self.cond.wait()
            if not self.todo or self._stop():
                return None
            self.in_flight += 1
            return self.todo.pop(0)

    def _done(self, item, exc: BaseException | None) -> None:
        with self.cond:
            self.in_flight -= 1
            if exc is not None:
                self.todo.append(item)  # another board takes it, reusing the DB
                self.errors.append(exc)
            self.cond.notify_all()

    def _stop(self) -> bool:
        return any(not _is_board_failure(e) for e in self.errors)

    def _work(self, board) -> None:
        from onnx_hwprune.cost_models.profile_db import ProfileDB
        from onnx_hwprune.runtime.profiler import profile_layers

        with ProfileDB(self.db_path) as plain:
            db = CheckedBoardDB(plain, f"{self.boards.index(board)} of {board.opts.key!r}")
            while (item := self._next()) is not None:
                index, layer = item
                try:
                    profile_layers([layer], board, self.target, db, self.options,
                                   self._reporter(index))  # fmt: skip
                except BaseException as exc:
                    self._done(item, exc)
                    logger.warning("board %d of %r dropped off: %s", self.boards.index(board),
                                   board.opts.key, _short(exc))  # fmt: skip
                    return
                self._done(item, None)
                logger.info("board %d of %r measured %s", self.boards.index(board),
                            board.opts.key, layer.node)  # fmt: skip
        with self.cond:
            self.alive.append(board)

    def _reporter(self, index: int):
        def report(_i: int, _n: int, newly: int, label: str) -> None:
            if self.progress is not None:
                with self.cond:
                    self.progress(index, self.count, newly, label)

        return report


def _is_board_failure(exc: BaseException) -> bool:
    """Lost connection or session (board gone, tracker gone): the layer can move to
    another board. Anything else (a compile error, a bug, the budget) is not."""
    if isinstance(exc, UserError):
        return "RPC" in str(exc)  # a board that could not be reached in time
    # TVM's runtime raises its own error types (RPCError, TVMError...) for a dead peer.
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("tvm", "tvm_ffi")


def _short(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]
