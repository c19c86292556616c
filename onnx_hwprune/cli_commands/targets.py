"""``onnx-hwprune targets``: list the targets, their backends, and where numbers come from.

Usage::

    onnx-hwprune targets [--json]

One line per target: its name, the backend that measures it, whether it can be measured on
this host (and if not, why), and the source of its latency numbers. Checking a target
never imports TVM (it looks for the package, a GPU, a cross compiler).
"""

from __future__ import annotations

import argparse
import json
import logging

__all__ = ["HELP", "NAME", "add_arguments", "rows", "run"]

logger = logging.getLogger(__name__)

NAME = "targets"
HELP = "list targets: backend, measurable here or not (why), where numbers come from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json``: print the table as JSON."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def rows() -> list[dict]:
    """One dict per target: name, backend, measurable, why_not, source, emit, note."""
    from onnx_hwprune.runtime.targets import TARGETS

    out = []
    for name, target in sorted(TARGETS.items()):
        ok, why = target.available()
        out.append(
            {
                "name": name,
                "backend": target.backend,
                "measurable_here": ok,
                "why_not": why,
                "source": target.source,
                "cost_model": target.cost_source,
                "emit_tvm": target.emit_tvm,
                "note": target.note(),
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    """Print the table; always exit 0."""
    table = rows()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    for row in table:
        here = "yes" if row["measurable_here"] else f"no: {row['why_not']}"
        print(f"{row['name']:9s} backend: {row['backend']}")
        print(f"{'':9s} measurable here: {here}")
        print(f"{'':9s} numbers: {row['source']}")
        if row["note"]:
            print(f"{'':9s} note: {row['note']}")
    return 0
