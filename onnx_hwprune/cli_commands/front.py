"""``onnx-hwprune front IN --target T --out DIR [--calib D] [--eval D]``.

Writes ``DIR/front.json`` (every point: predicted latency, importance loss, weight and
peak activation bytes, MACs, solver status; with ``--eval`` the measured top-1 and
agreement), ``DIR/plan_XX.json`` (each point's plan: re-apply one with
``onnx-hwprune IN OUT --plan DIR/plan_XX.json``) and ``DIR/front.png`` (needs
matplotlib: ``pip install onnx-hwprune[plot]``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from onnx_hwprune.errors import UserError

__all__ = ["HELP", "NAME", "add_arguments", "run"]

log = logging.getLogger(__name__)

NAME = "front"
HELP = "the latency / accuracy-proxy / memory front: the exact planner's optimum per budget"


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated fractions, got {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise UserError(f"fractions must be in (0, 1], got {text!r}")
    return values


def _memory_list(text: str) -> list:
    from onnx_hwprune.passes.plan.memory import MemoryBudget

    return [MemoryBudget.parse(item) for item in text.split(";") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onnx_hwprune.front import DEFAULT_BUDGETS, DEFAULT_RATIOS
    from onnx_hwprune.passes.analysis.data_importance import DATA_CRITERIA
    from onnx_hwprune.passes.analysis.importance import CRITERIA
    from onnx_hwprune.runtime.targets import target_names

    parser.add_argument("input", metavar="IN", help="ONNX model (never modified)")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the front")
    parser.add_argument("--target", choices=target_names(), default="cpu")
    parser.add_argument("--threads", type=int, help="threads for measuring")
    parser.add_argument("--profile-db", metavar="PATH", help="profile database")
    parser.add_argument("--criterion", choices=sorted([*CRITERIA, *DATA_CRITERIA]), default="l1")
    parser.add_argument("--calib", metavar="PATH", help="calibration data (.npz or image folder)")
    parser.add_argument("--preprocess", metavar="SPEC", help="for an image folder (see prune)")
    parser.add_argument("--eval", dest="eval_data", metavar="D.npz", help="measure top-1 per point")
    parser.add_argument(
        "--budgets",
        type=_fractions,
        default=list(DEFAULT_BUDGETS),
        help="latency budgets as fractions of the original (default "
        + ",".join(f"{b:g}" for b in DEFAULT_BUDGETS) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--memory-budgets",
        type=_memory_list,
        help="also sweep these weight/activation budgets, ';'-separated (e.g. '0.7;0.5')",
    )
    parser.add_argument(
        "--ratios",
        type=_fractions,
        default=list(DEFAULT_RATIOS),
        help="ratios of the uniform/global/snap baselines",
    )
    parser.add_argument("--time-limit", type=float, default=10.0, help="solver seconds per point")


def _check(args: argparse.Namespace) -> Path:
    if not Path(args.input).is_file():
        raise UserError(f"input model not found: {args.input}")
    for name in ("calib", "eval_data"):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            raise UserError(f"--{name.replace('_data', '')} {path}: not found")
    if args.criterion in ("mean_abs", "apoz", "reconstruction") and args.calib is None:
        raise UserError(f"--criterion {args.criterion} needs --calib")
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    if not args.time_limit > 0:
        raise UserError("--time-limit must be positive")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    return out


def run(args: argparse.Namespace) -> int:
    from onnx_hwprune.front import compute_front
    from onnx_hwprune.frontends.onnx import write_bytes_atomic
    from onnx_hwprune.options import PruneOptions
    from onnx_hwprune.passes._infra import PassContext

    out = _check(args)
    opts = PruneOptions(target=args.target, threads=args.threads, profile_db=args.profile_db,
                        criterion=args.criterion, calib=args.calib, preprocess=args.preprocess,
                        eval_data=args.eval_data)  # fmt: skip
    ctx = PassContext(config={"plan.time_limit": float(args.time_limit)})
    memory = [None, *(args.memory_budgets or [])]
    front = compute_front(args.input, opts, args.budgets, memory, args.ratios, ctx)
    out.mkdir(parents=True, exist_ok=True)
    plans = front.pop("plans")
    for row, plan in zip(front["points"], plans, strict=True):
        row["plan"] = f"plan_{row['id']:02d}.json"
        data = (json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n").encode()
        write_bytes_atomic(out / row["plan"], data)
    text = json.dumps(front, indent=2, sort_keys=True, default=_jsonable) + "\n"
    write_bytes_atomic(out / "front.json", text.encode())
    _plot(front, out / "front.png")
    _summary(front)
    return 0


def _jsonable(value):
    return None if value != value else float(value)  # NaN gaps become null


def _summary(front: dict) -> None:
    full = front["original"]
    print(f"{'id':>3} {'kind':8} {'setting':24} {'pred ms':>8} {'loss':>8} {'weights':>8} "
          f"{'top1':>6} {'agree':>6} pareto")  # fmt: skip
    for r in front["points"]:
        measured = " ".join(
            f"{r[k]:6.3f}" if r.get(k) is not None else f"{'-':>6}" for k in ("top1", "agreement")
        )
        print(f"{r['id']:>3} {r['kind']:8} {r['setting']:24} {r['predicted_ms']:8.3f} "
              f"{r['importance_loss']:8.2f} {r['weight_bytes'] / full['weight_bytes']:8.2f} "
              f"{measured} {'*' if r['pareto'] else ''}")  # fmt: skip
    print("weights: share of the original's; re-apply a point with: IN OUT --plan DIR/plan_XX.json")


def _plot(front: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install onnx-hwprune[plot]): no %s", path)
        return
    from onnx_hwprune.frontends.onnx import write_bytes_atomic

    full = front["original"]
    measured = next(
        (k for k in ("top1", "agreement") if front["points"][0].get(k) is not None), None
    )
    panels = [("importance_loss", "importance lost (normalised)", 1.0),
              ("weight_bytes", "weights (MB)", 1e-6)]  # fmt: skip
    if measured:
        panels.append((measured, f"measured {measured}", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    styles = {"exact": "o-", "uniform": "s", "global": "^", "snap": "D"}
    for kind, style in styles.items():
        rows = sorted((r for r in front["points"] if r["kind"] == kind),
                      key=lambda r: r["predicted_ms"])  # fmt: skip
        if not rows:
            continue
        ms = [r["predicted_ms"] / full["predicted_ms"] for r in rows]
        for ax, (key, _, scale) in zip(axes, panels, strict=True):
            ax.plot(ms, [r[key] * scale for r in rows], style, label=kind, ms=5)
    for ax, (_, label, _) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
        ax.set_xlabel(f"predicted latency / original ({front['target']})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
