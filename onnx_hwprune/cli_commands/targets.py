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
import shutil

__all__ = ["HELP", "NAME", "add_arguments", "rows", "run"]

logger = logging.getLogger(__name__)

NAME = "targets"
HELP = "list targets: backend, measurable here or not (why), where numbers come from"

# Backend of each target (``Target`` carries a factory, not a name that can be listed
# without building it).
_BACKENDS = {
    "cpu": "ort-cpu (onnxruntime CPUExecutionProvider)",
    "tvm-llvm": "tvm-llvm (TVM Relax, LLVM; --rpc-tracker: tvm-rpc)",
    "tvm-cuda": "tvm-rpc (TVM Relax, CUDA kernels via nvcc)",
    "mali": "tvm-rpc (TVM Relax, OpenCL 'mali' + aarch64 host)",
    "cudnn": "cudnn (PyTorch on a CUDA GPU, cudnn.benchmark off)",
    "cudnn-benchmark": "cudnn (PyTorch on a CUDA GPU, cudnn.benchmark on: autotuned)",
    "ort-cuda": "ort-cuda (onnxruntime-gpu CUDAExecutionProvider)",
}
_SHIPPED = "none: a profile shipped in the package (planning only, nothing measured)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json``: print the table as JSON."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def rows() -> list[dict]:
    """One dict per target: name, backend, measurable, why_not, source, emit."""
    from onnx_hwprune.runtime.tvm_targets import TVM_TARGETS, all_targets

    out = []
    for name, target in sorted(all_targets().items()):
        ok, why = target.available()
        out.append(
            {
                "name": name,
                "backend": _BACKENDS.get(name, _SHIPPED),
                "measurable_here": ok,
                "why_not": why,
                "source": target.source,
                "emit_tvm": name in TVM_TARGETS,
                "note": _note(name),
            }
        )
    return out


def _note(name: str) -> str:
    if name == "mali":
        cc = shutil.which("aarch64-linux-gnu-gcc")
        emit = "cross compiler found" if cc else "no aarch64-linux-gnu-gcc: --emit tvm needs one"
        return f"without a board: analytic Mali-G72 MP12 estimate; {emit}"
    if name == "tvm-cuda":
        return "--emit tvm needs nvcc" + ("" if shutil.which("nvcc") else " (not found)")
    return ""


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
