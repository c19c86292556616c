"""``onnx-hwprune analyze IN``: the channel groups of a model, frozen or not and why."""

from __future__ import annotations

import argparse
import json

NAME = "analyze"
HELP = "list the channel groups of a model: size, members, frozen or not and why"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="ONNX model")
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output with index maps"
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1,...",
        help="fix an input's shape (repeatable)",
    )


def _table(groups) -> str:
    lines = [f"{'group':44s} {'size':>6s} {'members':>7s}  status"]
    for g in groups:
        status = "frozen: " + "; ".join(g.frozen_reasons[:2]) if g.frozen else "prunable"
        lines.append(f"{g.name[:44]:44s} {g.size:6d} {len(g.members):7d}  {status}")
    lines.append(f"{len(groups)} groups, {len(groups.prunable)} prunable")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from onnx_hwprune.frontends.onnx import (
        check_runs_in_onnxruntime,
        load_graph,
        parse_input_shapes,
    )
    from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups

    shapes = parse_input_shapes(args.input_shape) or None
    check_runs_in_onnxruntime(args.input, shapes)
    graph = load_graph(args.input, shapes)
    groups = analyze_channel_groups(graph)
    if args.json:
        print(json.dumps({"groups": groups.to_json()}, indent=1, sort_keys=True))
    else:
        print(_table(groups))
    return 0
