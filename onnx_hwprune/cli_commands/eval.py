"""``onnx-hwprune eval MODEL --data test.npz [--reference ORIG.onnx] [--json]``.

Prints the model's top-1 accuracy on an npz test set (``label`` key) and, with
``--reference``, how often its predictions agree with the original model's::

    $ onnx-hwprune eval pruned.onnx --data examples/digits_test.npz \\
          --reference examples/digits_resnet.onnx
    samples: 450
    top-1 accuracy: 0.9822
    agreement with digits_resnet.onnx: 0.9911
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.evaluate import agreement, evaluate

__all__ = ["HELP", "NAME", "add_arguments", "run"]

logger = logging.getLogger(__name__)

NAME = "eval"
HELP = "top-1 accuracy of a model on an npz test set, and agreement with a reference model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ONNX model to evaluate")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="npz with one array per model input and an optional int 'label' array "
        "(or a folder of images for agreement only)",
    )
    parser.add_argument("--reference", type=Path, help="original model to compare predictions")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per run (64)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1)")
    parser.add_argument("--limit", type=int, help="only the first N samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    report = _measure(args)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"samples: {report['samples']}")
    if report["top1"] is None:
        print("top-1 accuracy: n/a (the data has no 'label' array)")
    else:
        print(f"top-1 accuracy: {report['top1']:.4f}")
    if report["agreement"] is not None:
        print(f"agreement with {Path(report['reference']).name}: {report['agreement']:.4f}")
    return 0


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from onnx_hwprune.frontends.onnx import check_runs_in_onnxruntime

    if args.batch_size <= 0 or args.threads <= 0:
        raise UserError("--batch-size and --threads must be positive")
    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be positive")
    for model in (args.model, args.reference):
        if model is not None:
            check_runs_in_onnxruntime(model)
    result = evaluate(args.model, args.data, args.batch_size, args.threads, limit=args.limit)
    agree = None
    if args.reference is not None:
        agree = agreement(
            args.model, args.reference, args.data, args.batch_size, args.threads, args.limit
        )
    return {
        "model": str(args.model),
        "data": str(args.data),
        "samples": result.num_samples,
        "top1": result.top1,
        "reference": None if args.reference is None else str(args.reference),
        "agreement": agree,
    }
