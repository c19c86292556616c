"""``onnx-hwprune IN OUT``: prune a model for a target and write it, with a report.

Default: ``--method latency`` on ``--target cpu`` with a budget of 0.7 of the original's
latency, profiling the layers the profile database lacks. ``--ratio`` switches to the
hardware-blind ``uniform`` planner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnx_hwprune.errors import UserError

NAME = "prune"
HELP = "prune channels of IN for a target and write the smaller model to OUT (the main job)"


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--ratio must be a number in [0, 1), got {text!r}") from None
    from onnx_hwprune.passes.plan.baselines import check_ratio

    return check_ratio(value, "--ratio")


def _budget(text: str):
    from onnx_hwprune.passes.plan.budget import LatencyBudget

    return LatencyBudget.parse(text)


def _memory(text: str):
    from onnx_hwprune.passes.plan.memory import MemoryBudget

    return MemoryBudget.parse(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise UserError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnx_hwprune.options import (
        DEFAULT_BUDGET,
        DEFAULT_RATIO,
        DEFAULT_TARGET,
        LATENCY_PLANNERS,
        SENSITIVITY_CHOICES,
    )
    from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA
    from onnx_hwprune.passes.analysis.importance import CRITERIA
    from onnx_hwprune.passes.plan.methods import METHODS, choosable_methods
    from onnx_hwprune.passes.transform.recover import RECOVERY_METHODS
    from onnx_hwprune.runtime.quantize import QUANTIZE_SCHEMES
    from onnx_hwprune.runtime.targets import target_names

    parser.add_argument("input", metavar="IN", help="ONNX model to prune (never modified)")
    parser.add_argument("output", metavar="OUT", help="where to write the pruned model")
    how = parser.add_argument_group("what to prune")
    how.add_argument(
        "--method",
        choices=choosable_methods(),
        help="; ".join(f"{m}: {METHODS[m].help}" for m in choosable_methods()),
    )
    how.add_argument(
        "--latency-budget",
        type=_budget,
        metavar="B",
        help=f"fraction of the original's latency (0.6) or a time (12ms); default {DEFAULT_BUDGET}",
    )
    how.add_argument(
        "--planner",
        choices=LATENCY_PLANNERS,
        default="exact",
        help="exact (default): integer program over stair levels (HiGHS); greedy: the step-by-step "
        "planner, also the fallback when the solver is missing or fails",
    )
    how.add_argument(
        "--memory-budget",
        type=_memory,
        metavar="M",
        help="with --planner exact: weight bytes as a fraction (0.6) or size (3MB), or "
        "weights=0.6,activations=2MB (peak activation bytes)",
    )
    how.add_argument(
        "--ratio",
        type=_ratio,
        help=f"share of channels to remove, [0,1), for uniform/global (default {DEFAULT_RATIO})",
    )
    how.add_argument(
        "--criterion",
        choices=sorted([*CRITERIA, *DATA_CRITERIA]),
        default="l1",
        help="channel importance; mean_abs, apoz and reconstruction need --calib",
    )
    how.add_argument(
        "--sensitivity",
        choices=SENSITIVITY_CHOICES,
        default="auto",
        help="latency planning minimises the measured refit error per group and count "
        "instead of importance sums (auto: on with --calib)",
    )
    how.add_argument(
        "--snap",
        action="store_true",
        help="finally move every group to a stair edge of the target that is not slower",
    )
    how.add_argument("--plan", metavar="PLAN.json", help="apply a saved plan instead of planning")
    target = parser.add_argument_group("target")
    target.add_argument(
        "--target", choices=target_names(), default=DEFAULT_TARGET, help="where the model will run"
    )
    target.add_argument(
        "--threads", type=_positive_int, help="threads for measuring (default: physical cores)"
    )
    target.add_argument(
        "--profile-db", metavar="PATH", help="profile database (default: in the user cache dir)"
    )
    target.add_argument(
        "--profile",
        metavar="FILE",
        help="plan from this exported profile only (profile export): no measuring, "
        "byte-identical output on any machine",
    )
    target.add_argument(
        "--no-measure", action="store_true", help="skip timing the result on the target"
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--calib",
        metavar="PATH",
        help="calibration data: .npz keyed by input name, or an image folder",
    )
    data.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="for an image folder: 'size=H,W;mean=..;std=..;layout=NCHW;order=RGB;scale=..'",
    )
    data.add_argument(
        "--calib-limit", type=_positive_int, metavar="N", help="use at most N calibration samples"
    )
    data.add_argument(
        "--recover",
        choices=sorted([*RECOVERY_METHODS, "distill", "auto", "none"]),
        help="repair the pruned model on --calib data: bias, lsq (layer refit), distill "
        "(lsq, then training to match the original; needs torch), auto (default with "
        "--calib: the cheapest meeting --max-accuracy-drop), none",
    )
    data.add_argument(
        "--synthetic-data",
        choices=["auto", "off"],
        default="auto",
        help="without --calib, synthesise calibration inputs from the model's BatchNorm "
        "statistics (needs torch) for the accuracy guard, sensitivity and recovery "
        "(auto, the default: where the model keeps its BatchNorm layers); off: random inputs",
    )
    data.add_argument(
        "--synthetic-samples",
        type=_positive_int,
        default=48,
        metavar="N",
        help="inputs to synthesise (default 48; a third are held back from recovery for "
        "the accuracy checks)",
    )
    data.add_argument(
        "--no-bias-compensation",
        dest="bias_compensation",
        action="store_false",
        default=None,
        help="without --calib, removed channels' expected activations (from BatchNorm "
        "statistics) are folded into the consumers' biases; this turns that off",
    )
    data.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="P",
        help="points of top-1 the job may lose: with --eval, the latency budget is bisected "
        "for the fastest plan within P points of the original (agreement for unlabelled "
        "data); --recover auto takes the cheapest method within P points of agreement",
    )
    data.add_argument(
        "--recover-steps",
        type=_positive_int,
        default=300,
        metavar="N",
        help="--recover distill: training steps at most (default 300)",
    )
    data.add_argument(
        "--recover-time", type=float, default=300.0, metavar="S",
        help="--recover distill: training seconds at most (default 300)",
    )  # fmt: skip
    data.add_argument(
        "--eval",
        dest="eval_data",
        metavar="D.npz",
        help="report top-1 accuracy before/after (npz with 'input' and 'label')",
    )
    data.add_argument(
        "--quantize",
        choices=sorted(QUANTIZE_SCHEMES),
        help="after pruning and recovery, quantize with onnxruntime's quantize_static "
        "(QDQ, per-channel int8 weights) calibrated on --calib",
    )
    data.add_argument(
        "--no-guard",
        dest="guard",
        action="store_false",
        default=None,
        help="keep the default budget even when it moves the outputs far from the "
        "original's (by default it is relaxed until the output cosine stays >= 0.95)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--emit",
        choices=["onnx", "tvm", "compressed"],
        default="onnx",
        help="tvm: also write a compiled TVM module for the target to OUT-stem.tvm/; "
        "compressed: also write OUT-stem.hwz, the weights coded losslessly "
        "(onnx_hwprune.compress.load gives OUT back, byte for byte)",
    )
    out.add_argument(
        "--cross-compiler",
        metavar="CC",
        help="C compiler for --emit tvm on a board (default: aarch64-linux-gnu-gcc)",
    )
    out.add_argument("--save-plan", metavar="PLAN.json", help="write the plan used")
    out.add_argument("--report", metavar="REPORT.json", help="write the JSON report")
    out.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1,...",
        help="an input's shape for measuring and planning (repeatable), e.g. "
        "input:1,3,224,224; OUT keeps the model's own dims unless --fix-input-shape",
    )
    out.add_argument(
        "--fix-input-shape",
        action="store_true",
        help="write OUT with the --input-shape dims instead of the model's own",
    )
    out.add_argument("--quiet", action="store_true", help="no summary on stdout")


def _load_plan(path: str | None):
    from onnx_hwprune.passes.plan.plan import Plan

    if path is None:
        return None
    from onnx_hwprune._jsonfile import read_json

    return Plan.from_json(read_json(path, "plan"))


def _check_paths(args: argparse.Namespace) -> None:
    """Inputs exist; no output is an input or another output; every output is writable."""
    from onnx_hwprune._paths import PathGuard

    if not Path(args.input).is_file():
        raise UserError(f"input model not found: {args.input}")
    for name in ("calib", "eval_data", "plan", "profile"):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            raise UserError(f"--{name.replace('_data', '')} {path}: not found")
    guard = PathGuard()
    guard.input("IN", args.input)
    guard.input("--calib", args.calib)
    guard.input("--eval", args.eval_data)
    guard.input("--plan", args.plan)
    guard.input("--profile", args.profile)
    if args.profile is not None and args.profile_db is not None:
        raise UserError("--profile pins an exported profile; --profile-db would not be read")
    guard.updated("--profile-db", args.profile_db)  # read and written in place, by SQLite
    guard.output("OUT", args.output)
    guard.output("--report", args.report)
    guard.output("--save-plan", args.save_plan)
    out = Path(args.output)
    if args.emit == "tvm":
        guard.output("--emit tvm folder", out.with_name(out.stem + ".tvm"), folder=True)
    if args.emit == "compressed":
        hwz = out.with_name(out.stem + ".hwz")
        if hwz == out:
            raise UserError(f"--emit compressed writes {hwz} beside OUT: give OUT another suffix")
        guard.output("--emit compressed file", hwz)
    guard.check()


def _options(args: argparse.Namespace):
    from onnx_hwprune.frontends.onnx import parse_input_shapes
    from onnx_hwprune.options import PruneOptions

    return PruneOptions(
        method=args.method,
        ratio=args.ratio,
        criterion=args.criterion,
        plan=_load_plan(args.plan),
        snap=args.snap,
        target=args.target,
        latency_budget=args.latency_budget,
        planner=args.planner,
        memory_budget=args.memory_budget,
        threads=args.threads,
        profile_db=args.profile_db,
        pinned_profile=args.profile,
        measure=not args.no_measure,
        calib=args.calib,
        preprocess=args.preprocess,
        calib_limit=args.calib_limit,
        synthetic_data=args.synthetic_data,
        synthetic_samples=args.synthetic_samples,
        recover=args.recover,
        recover_steps=args.recover_steps,
        recover_time=args.recover_time,
        max_accuracy_drop=args.max_accuracy_drop,
        eval_data=args.eval_data,
        quantize=args.quantize,
        input_shapes=parse_input_shapes(args.input_shape) or None,
        fix_input_shape=args.fix_input_shape,
        guard=args.guard,
        bias_compensation=args.bias_compensation,
        sensitivity=args.sensitivity,
    )


def _emit_tvm(result, args: argparse.Namespace) -> None:
    from onnx_hwprune.runtime.tvm_emit import emit_tvm

    out = Path(args.output)
    files = emit_tvm(result.model, out.with_name(out.stem + ".tvm"), args.target,
                     cross_compiler=args.cross_compiler)  # fmt: skip
    result.report["emitted"] = [str(f) for f in files]


def _emit_compressed(result, data: bytes, args: argparse.Namespace) -> None:
    from onnx_hwprune.compress import save

    out = Path(args.output)
    path = out.with_name(out.stem + ".hwz")
    stats = save(data, path)
    result.report["emitted"] = [str(path)]
    result.report["compressed"] = {
        "file": str(path),
        "model_bytes": stats.model_bytes,
        "file_bytes": stats.file_bytes,
        "weight_bytes": stats.weight_bytes,
        "coded_weight_bytes": stats.coded_weight_bytes,
        "schemes": stats.schemes,
    }


def _write_json(path: str | None, data: dict) -> None:
    from onnx_hwprune.frontends.onnx import write_bytes_atomic

    if path is not None:
        write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def run(args: argparse.Namespace) -> int:
    import sys

    from onnx_hwprune.api import prune
    from onnx_hwprune.cli_commands.profile import ProgressBar
    from onnx_hwprune.frontends.onnx import check_runs_in_onnxruntime, serialize, write_bytes_atomic
    from onnx_hwprune.report import format_summary

    _check_paths(args)
    opts = _options(args)
    opts.validate()
    check_runs_in_onnxruntime(args.input, opts.input_shapes)
    if args.emit == "tvm":
        from onnx_hwprune.runtime.tvm_emit import check_emit

        check_emit(args.target, args.cross_compiler)  # a missing compiler fails before any work
    bar = None if args.quiet or not opts.needs_cost_model() else ProgressBar(sys.stderr)
    try:
        result = prune(args.input, opts, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.finish()
    if result.model is None:
        # Nothing to prune is not an error: the model comes out unchanged.
        write_bytes_atomic(args.output, Path(args.input).read_bytes())
        _write_json(args.report, result.report)
        print(f"nothing pruned, model copied unchanged: {result.reason}")
        if not args.quiet:
            from onnx_hwprune._summary import guard_lines

            print("\n".join(guard_lines(result.report)))  # e.g. what the checks ran on
        return 0
    data = serialize(result.model)
    write_bytes_atomic(args.output, data)
    if args.emit == "tvm":
        _emit_tvm(result, args)
    elif args.emit == "compressed":
        _emit_compressed(result, data, args)
    _write_json(args.report, result.report)
    _write_json(args.save_plan, result.plan.to_json())
    if not args.quiet:
        print(format_summary(result.report))
        print(f"wrote {args.output}")
    return 0
