"""``onnx-hwprune IN OUT``: prune a model and write it, with a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnx_hwprune.errors import UserError

NAME = "prune"
HELP = "prune channels of IN and write the smaller model to OUT (the main job)"


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--ratio must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise UserError(f"--ratio must be in [0, 1), got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnx_hwprune.passes.analysis.importance import CRITERIA
    from onnx_hwprune.passes.plan.baselines import PLANNERS

    parser.add_argument("input", metavar="IN", help="ONNX model to prune (never modified)")
    parser.add_argument("output", metavar="OUT", help="where to write the pruned model")
    parser.add_argument(
        "--ratio", type=_ratio, default=0.3, help="share of channels to remove, [0,1) (default 0.3)"
    )
    parser.add_argument(
        "--method", choices=sorted(PLANNERS), default="uniform", help="how to spread the pruning"
    )
    parser.add_argument(
        "--criterion", choices=sorted(CRITERIA), default="l1", help="channel importance"
    )
    parser.add_argument(
        "--plan", metavar="PLAN.json", help="apply a saved plan instead of planning"
    )
    parser.add_argument("--save-plan", metavar="PLAN.json", help="write the plan used")
    parser.add_argument("--report", metavar="REPORT.json", help="write the JSON report")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1,...",
        help="fix an input's shape (repeatable), e.g. input:1,3,224,224",
    )
    parser.add_argument("--quiet", action="store_true", help="no summary on stdout")


def _load_plan(path: str | None):
    from onnx_hwprune.passes.plan.plan import Plan

    if path is None:
        return None
    try:
        return Plan.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read plan {path}: {exc}") from None


def _check_outputs(args: argparse.Namespace) -> None:
    from onnx_hwprune.frontends.onnx import check_output_path

    if not Path(args.input).is_file():
        raise UserError(f"input model not found: {args.input}")
    check_output_path(args.output, args.input)
    for extra in (args.report, args.save_plan):
        if extra is not None:
            check_output_path(extra, args.input)


def _write_json(path: str | None, data: dict) -> None:
    from onnx_hwprune.frontends.onnx import write_bytes_atomic

    if path is not None:
        write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def run(args: argparse.Namespace) -> int:
    from onnx_hwprune.api import prune
    from onnx_hwprune.frontends.onnx import parse_input_shapes, serialize, write_bytes_atomic
    from onnx_hwprune.report import format_summary

    _check_outputs(args)
    result = prune(
        args.input,
        ratio=args.ratio,
        method=args.method,
        criterion=args.criterion,
        plan=_load_plan(args.plan),
        input_shapes=parse_input_shapes(args.input_shape) or None,
    )
    if result.model is None:
        # Nothing to prune is not an error: the model comes out unchanged.
        write_bytes_atomic(args.output, Path(args.input).read_bytes())
        _write_json(args.report, result.report)
        print(f"nothing pruned, model copied unchanged: {result.reason}")
        return 0
    write_bytes_atomic(args.output, serialize(result.model))
    _write_json(args.report, result.report)
    _write_json(args.save_plan, result.plan.to_json())
    if not args.quiet:
        print(format_summary(result.report))
        print(f"wrote {args.output}")
    return 0
