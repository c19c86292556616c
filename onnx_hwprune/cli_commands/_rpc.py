"""The remote-board options of the CLI (``--rpc-tracker``, ``--rpc-key``, ...), parsed into
:class:`~onnx_hwprune.runtime.tvm_rpc.RpcOptions`. Argparse stays in the CLI; the runtime
takes the options record."""

from __future__ import annotations

import argparse

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.tvm_rpc import RpcOptions

__all__ = ["add_rpc_arguments", "rpc_options_from_args"]


def add_rpc_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rpc-tracker``, ``--rpc-key``, ``--rpc-boards``, ``--rpc-timeout``,
    ``--rpc-host-triple`` and ``--cross-compiler`` (for the ``profile`` verb)."""
    group = parser.add_argument_group("remote boards (TVM RPC tracker)")
    group.add_argument(
        "--rpc-tracker",
        metavar="HOST:PORT",
        default=None,
        help="measure on boards obtained from this TVM RPC tracker",
    )
    group.add_argument(
        "--rpc-key",
        metavar="KEY",
        default=None,
        help="RPC key the boards registered with (rpc_server --key)",
    )
    group.add_argument(
        "--rpc-boards",
        type=int,
        default=None,
        metavar="N",
        help="use at most N boards of the key in parallel (default: all free)",
    )
    group.add_argument(
        "--rpc-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the tracker / a free board (default 60)",
    )
    group.add_argument(
        "--rpc-host-triple",
        default=None,
        metavar="TRIPLE",
        help="CPU targets: LLVM triple of the boards, e.g. aarch64-linux-gnu",
    )
    group.add_argument(
        "--cross-compiler",
        default=None,
        metavar="CC",
        help="C compiler linking modules for the boards (mali default: aarch64-linux-gnu-gcc)",
    )


def rpc_options_from_args(args: argparse.Namespace) -> RpcOptions | None:
    """:class:`RpcOptions` from the parsed CLI, or ``None`` when no tracker was given."""
    tracker, key = getattr(args, "rpc_tracker", None), getattr(args, "rpc_key", None)
    if not tracker and not key:
        return None
    if not tracker or not key:
        raise UserError("--rpc-tracker and --rpc-key go together")
    from onnx_hwprune.runtime._rpc_trust import MAX_RPC_BOARDS

    if args.rpc_boards is not None and not 1 <= args.rpc_boards <= MAX_RPC_BOARDS:
        raise UserError(f"--rpc-boards must be in 1..{MAX_RPC_BOARDS}")
    opts = RpcOptions(
        tracker, key, connect_timeout_s=min(10.0, args.rpc_timeout),
        request_timeout_s=args.rpc_timeout, max_boards=args.rpc_boards,
        host_triple=args.rpc_host_triple, cross_compiler=getattr(args, "cross_compiler", None),
    )  # fmt: skip
    opts.address()
    return opts
