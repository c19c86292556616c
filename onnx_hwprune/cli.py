"""The ``onnx-hwprune`` command line.

``onnx-hwprune IN OUT [options]`` runs the main job (see ``cli_commands/prune.py``);
``onnx-hwprune VERB ...`` runs a sub-command from :data:`VERBS`. Bad input is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from onnx_hwprune._version import __version__
from onnx_hwprune.errors import UserError

__all__ = ["main", "VERBS", "ArgumentParser"]

# Sub-command modules under onnx_hwprune.cli_commands, listed explicitly.
VERBS: tuple[str, ...] = ("analyze", "profile", "eval", "targets")
PROG = "onnx-hwprune"


class ArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus an error on two lines and exits; we want one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def _verb_module(verb: str) -> ModuleType:
    return importlib.import_module(f"onnx_hwprune.cli_commands.{verb}")


def _parser_for(module: ModuleType, prog: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=module.HELP)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    module.add_arguments(parser)
    return parser


def _top_help() -> str:
    lines = [
        f"usage: {PROG} IN OUT [options]   (prune; see {PROG} prune --help)",
        f"       {PROG} VERB [options]",
        "",
        "verbs:",
    ]
    lines.append(f"  {'prune':10s} {_verb_module('prune').HELP}")
    lines += [f"  {verb:10s} {_verb_module(verb).HELP}" for verb in VERBS]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    if not argv:  # a usage error like any other: one line on stderr, exit 2
        raise UserError(f"give IN OUT to prune, or a verb ({', '.join(VERBS)}); see {PROG} --help")
    if argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    verb = argv[0] if argv[0] in (*VERBS, "prune") else None
    module = _verb_module(verb or "prune")
    parser = _parser_for(module, f"{PROG} {verb}" if verb else PROG)
    args = parser.parse_args(argv[1:] if verb else argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly with 141 (128 + SIGPIPE), as
    ``cat`` and ``grep`` do, and keep Python from reporting the failed final flush."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141
