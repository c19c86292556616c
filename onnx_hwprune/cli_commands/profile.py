"""``onnx-hwprune profile``: measure a model's layers on a target into the profile database.

Usage::

    onnx-hwprune profile IN.onnx --target cpu [--threads N] [--time-budget S]
                         [--exhaustive] [--plot DIR] [--profile-db PATH] [--rebuild]
                         [--verify [N]]
    onnx-hwprune profile export FILE.json [--profile-db PATH]
    onnx-hwprune profile import FILE.json [--profile-db PATH]

Profiling is resumable: points already in the database are not measured again, so an
interrupted run (Ctrl-C, ``--time-budget``) continues where it stopped. The summary (one
line per layer signature) goes to stdout; the progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import time
from pathlib import Path

from onnx_hwprune.errors import UserError

__all__ = ["HELP", "NAME", "add_arguments", "run"]

logger = logging.getLogger(__name__)

NAME = "profile"
HELP = "measure latency vs channel count of a model's layers on a target (profile DB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``profile`` verb (target choices come from the target registry)."""
    from onnx_hwprune.runtime.targets import target_names

    parser.add_argument("source", help="IN model (.onnx), or 'export' / 'import'")
    parser.add_argument("file", nargs="?", help="JSON file for export/import")
    parser.add_argument("--target", default="cpu", choices=target_names())
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="intra-op threads (default: physical cores)",
    )
    parser.add_argument(
        "--time-budget",
        type=_seconds,
        default=None,
        metavar="S",
        help="stop after S seconds; rerun to resume",
    )
    parser.add_argument(
        "--exhaustive",
        action="store_true",
        help="measure every channel count instead of detecting stairs",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one PNG per layer signature into DIR",
    )
    parser.add_argument(
        "--profile-db",
        type=Path,
        default=None,
        metavar="PATH",
        help="SQLite profile database (default: in the user cache dir)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="move an unreadable profile database aside and start anew",
    )
    parser.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        metavar="N",
        help="tvm-llvm: MetaSchedule trials per compiled micro-benchmark (0: default schedules)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the network cost model as JSON",
    )
    parser.add_argument(
        "--verify",
        type=_positive_int,
        nargs="?",
        const=20,
        default=None,
        metavar="N",
        help="after profiling, re-time N stored points (default 20) and report how many "
        "still hold; points that moved are re-measured on the next run",
    )
    from onnx_hwprune.cli_commands._rpc import add_rpc_arguments

    add_rpc_arguments(parser)  # --rpc-tracker/--rpc-key: measure on remote boards


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise UserError(f"expected a positive integer, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    """A time budget: a finite number of seconds above zero (not -1, nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--time-budget must be a positive number of seconds, got {text!r}")
    return value


def _check_paths(args: argparse.Namespace) -> None:
    """Every output checked before the database is opened or anything is measured."""
    from onnx_hwprune._paths import PathGuard

    guard = PathGuard()
    guard.updated("--profile-db", args.profile_db)
    if args.source == "import":
        guard.input("import file", args.file)
    elif args.source == "export":
        guard.output("export file", args.file)
    else:
        if not Path(args.source).is_file():
            raise UserError(f"input model {args.source} not found")
        guard.input("IN", args.source)
        guard.output("--json", args.json)
        guard.output("--plot", args.plot, folder=True)
    guard.check()
    if getattr(args, "plot", None) is not None and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib (pip install 'onnx-hwprune[plot]')")


def run(args: argparse.Namespace) -> int:
    """Run the verb; returns the exit code (3: time budget reached, rerun to resume)."""
    if args.source in ("export", "import") and not args.file:
        raise UserError(f"profile {args.source} needs a FILE argument")
    _check_paths(args)
    doc = None
    if args.source == "import":
        from onnx_hwprune._jsonfile import read_json
        from onnx_hwprune.cost_models.profile_db import check_import

        doc = read_json(args.file, "profile export")
        check_import(doc)  # the whole document, before the database is even opened
    elif args.source != "export":
        from onnx_hwprune.frontends.onnx import check_runs_in_onnxruntime

        check_runs_in_onnxruntime(args.source)
    db = _open_db(args.profile_db, args.rebuild)
    with db:
        if args.source in ("export", "import"):
            return _export_import(db, args.source, args.file, doc)
        return _profile(db, args)


def _open_db(path: Path | None, rebuild: bool):
    from onnx_hwprune.cost_models.profile_db import ProfileDB

    if rebuild:
        db, backup = ProfileDB.rebuild(path)
        if backup:
            print(f"profile database moved aside to {backup}", file=sys.stderr)
        return db
    return ProfileDB(path)


def _export_import(db, verb: str, file: str, doc) -> int:
    from onnx_hwprune._paths import atomic_write

    if verb == "export":
        atomic_write(file, (json.dumps(db.export_json(), indent=1) + "\n").encode())
        print(f"exported {db.count()} measurements to {file}")
        return 0
    print(f"imported {db.import_json(doc)} measurements into {db.path}")
    return 0


def _profile(db, args: argparse.Namespace) -> int:
    from onnx_hwprune.cli_commands._rpc import rpc_options_from_args
    from onnx_hwprune.frontends.onnx import normalize_model, with_static_inputs
    from onnx_hwprune.runtime.profiler import BudgetExceeded, ProfileOptions, build_cost_model
    from onnx_hwprune.runtime.rpc_boards import profile_through_tracker
    from onnx_hwprune.runtime.targets import get_target

    source = with_static_inputs(normalize_model(args.source))  # symbolic batch -> 1
    options = ProfileOptions(exhaustive=args.exhaustive, time_budget_s=args.time_budget)
    rpc = rpc_options_from_args(args)
    bar = ProgressBar(sys.stderr)
    try:
        if rpc is not None:  # boards behind a tracker: no local backend (mali has none)
            cost = profile_through_tracker(source, args.target, rpc, db, options, bar.update)
            source_text = f"measured on boards under key {rpc.key!r} at {rpc.tracker}"
        else:
            target = get_target(args.target)
            extra = {"tune_trials": args.tune_trials} if args.tune_trials else {}
            backend = target.make_backend(threads=args.threads, **extra)
            from onnx_hwprune.context_configs import context_models

            cost = build_cost_model(source, backend, args.target, db, options, bar.update,
                                    context_models=context_models)  # fmt: skip
            source_text = target.source
    except BudgetExceeded as exc:
        bar.finish()
        print(f"{exc}; {bar.measured} new measurements saved in {db.path}; rerun to resume")
        return 3
    bar.finish()
    _print_summary(cost, source_text, bar)
    _print_quality(db, cost)
    if args.verify:
        if rpc is not None:
            raise UserError("--verify times points on this machine; it cannot use --rpc-tracker")
        _verify(source, backend, args.target, db, args.verify)
    if args.json:
        from onnx_hwprune._paths import atomic_write

        atomic_write(args.json, (json.dumps(cost.to_dict(), indent=1) + "\n").encode())
    if args.plot:
        _plot(cost, args.plot)
    return 0


class ProgressBar:
    """Progress on a stream: layer signatures done, points measured.

    On a terminal, one line redrawn with ``\r``; anywhere else (a log file, CI), a plain
    line at most every :attr:`period_s` seconds, so logs get short readable lines.
    """

    period_s = 10.0

    def __init__(self, stream, width: int = 30):
        self.stream, self.width = stream, width
        self.measured, self.start = 0, time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_line = -math.inf
        self._drawn = False

    def update(self, index: int, count: int, newly: int, label: str) -> None:
        """Progress callback for :func:`build_cost_model`."""
        self.measured += newly
        elapsed = time.monotonic() - self.start
        text = f"{index + 1}/{count} sig, {self.measured} meas, {elapsed:5.0f}s {label}"
        if self.tty:
            filled = int(self.width * index / max(1, count))
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write("\r" + f"[{bar}] {text}"[:118].ljust(118))
        elif elapsed - self._last_line >= self.period_s:
            self._last_line = elapsed
            self.stream.write(f"progress: {text}"[:200] + "\n")
        else:
            return
        self._drawn = True
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line (nothing to end when no line was drawn)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _print_summary(cost, source: str, bar: ProgressBar) -> None:
    print(f"target {cost.target} ({source}); device {cost.fingerprint_hash}")
    print(f"{bar.measured} new measurements in {time.monotonic() - bar.start:.1f}s")
    print(
        f"whole model measured {cost.measured_full_ms:.3f} ms; "
        f"residual (non-pruned ops) {cost.residual_ms:.3f} ms; ops that follow a layer's "
        f"channels {getattr(cost, 'followers_ms', 0.0):.3f} ms"
    )
    corrected = [e for e in cost.layers if e.context is not None]
    worst = f" (largest measured factor x{_worst(corrected):.2f})" if corrected else ""
    print(f"in-context points correct {len(corrected)} of {len(cost.layers)} layers{worst}")
    seen = set()
    for e in cost.layers:
        key = (e.model.signature_key, e.in_channels, e.out_channels)
        if key in seen:
            continue
        seen.add(key)
        edges = {a: [c for c, _ in e.model.stair_edges(a)][:6] for a, _ in e.model.axes}
        print(
            f"  {e.node:40s} {e.in_channels:5d}->{e.out_channels:<5d} "
            f"{e.model.full_ms:8.3f} ms x{e.scale:.2f} edges {edges}"
        )


def _worst(entries) -> float:
    """The largest in-context penalty any layer measured (relative to full counts)."""
    return max(r for e in entries for _, _, r in e.context.points)


def _print_quality(db, cost) -> None:
    """How clean the stored profile of this device is (counts by quality flag)."""
    counts = db.quality_counts(cost.target, cost.fingerprint_hash)
    print(
        f"profile quality: {counts['clean']} clean, {counts['noisy']} noisy, "
        f"{counts['drifted']} drifted, {counts['legacy']} legacy (unchecked) points"
        + (
            "; noisy/drifted points are re-measured first next run"
            if counts["noisy"] or counts["drifted"]
            else ""
        )  # fmt: skip
    )


def _verify(source, backend, target: str, db, sample: int) -> None:
    from onnx_hwprune.runtime.profiler import load_model_and_layers
    from onnx_hwprune.runtime.verify import verify_profile

    _, layers = load_model_and_layers(source)
    result = verify_profile(layers, backend, target, db, sample=sample)
    print(result.line(0.10))
    for desc, (i, o), old, new in result.moved:
        print(f"  moved: {desc} at {i}->{o}: stored {old:.3f} ms, now {new:.3f} ms")


def _plot(cost, out_dir: Path) -> list[Path]:
    """One PNG per layer signature: measured points, detected edges, the model's line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install onnx-hwprune[plot])") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for e in cost.layers:
        key = (e.model.signature_key, e.in_channels, e.out_channels)
        if key in seen or not e.model.axes:
            continue
        seen.add(key)
        fig, axs = plt.subplots(1, len(e.model.axes), figsize=(6 * len(e.model.axes), 4))
        for ax, (name, prof) in zip(getattr(axs, "flat", [axs]), e.model.axes, strict=False):
            _plot_axis(ax, name, prof)
        fig.suptitle(f"{e.node} ({e.in_channels}->{e.out_channels}), target {cost.target}")
        path = out_dir / f"{e.node.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _plot_axis(ax, name: str, prof) -> None:
    counts = list(range(prof.lo, prof.full + 1))
    ax.plot(counts, [prof.latency(c).ms for c in counts], "-", lw=1, label="model")
    ax.plot([p[0] for p in prof.points], [p[1] for p in prof.points], "o", ms=4, label="measured")
    edges = prof.stair_edges()
    ax.plot([c for c, _ in edges], [ms for _, ms in edges], "v", ms=6, label="stair edges")
    ax.set_xlabel(f"{name} channels (align {prof.align})")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
