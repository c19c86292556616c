"""``--emit tvm``: compile an ONNX model into a TVM shared library plus a sidecar to run it.

For ``tvm-llvm`` the library runs on this host; for ``tvm-cuda`` it holds CUDA kernels
(built by ``nvcc``, no GPU needed) and host code for this host; for ``mali`` it holds
OpenCL kernels and aarch64 host code, linked by a cross compiler (Debian's
``gcc-aarch64-linux-gnu``), to be loaded on the board::

    import json, numpy as np, tvm
    from tvm import relax
    meta = json.load(open("model.tvm.json"))
    dev = tvm.device(meta["device"], 0)                   # "cpu" | "cuda" | "opencl"
    vm = relax.VirtualMachine(tvm.runtime.load_module("model.tvm.so"), dev)
    out = vm["main"](tvm.runtime.tensor(x, dev)).numpy()  # x: meta["inputs"][0]["shape"]

The files are written into a temporary directory beside the destination and renamed into
place, so an error leaves nothing behind. The model is compiled with its inputs made
static (batch 1 where symbolic), as TVM's VM needs concrete shapes for planned memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.tvm_targets import AARCH64_CC, compile_target, device_kind, tvm_target

__all__ = [
    "build_executable",
    "check_emit",
    "emit_tvm",
    "export_executable",
    "find_cross_compiler",
    "io_description",
]

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "onnx-hwprune-tvm-module"
SIDECAR_VERSION = 1
# TVM's compiler is driven from several RPC worker threads; one compile at a time keeps
# it clear of any global state it has (and the host has few cores anyway).
_COMPILE_LOCK = threading.Lock()


def find_cross_compiler(given: str | os.PathLike | None = None) -> str:
    """Path of the aarch64 C compiler: ``given`` (a path or a name on PATH), else
    ``aarch64-linux-gnu-gcc`` on PATH; :class:`UserError` if there is none."""
    name = str(given) if given else AARCH64_CC
    found = shutil.which(name)
    if found is None:
        raise UserError(
            f"cross compiler {name!r} not found: apt-get install gcc-aarch64-linux-gnu, "
            "or pass --cross-compiler PATH"
        )
    return found


def check_emit(target_name: str, cross_compiler: str | os.PathLike | None = None) -> str | None:
    """Fail fast (before anything is written) if ``target_name`` cannot be emitted here.

    Returns the cross compiler to link with (``None``: the host's default).
    """
    target = tvm_target(target_name)  # UserError for a non-TVM target
    import importlib.util

    if importlib.util.find_spec("tvm") is None:
        raise UserError("--emit tvm needs apache-tvm: pip install 'onnx-hwprune[tvm]'")
    nvcc = shutil.which("nvcc") or os.environ.get("CUDA_HOME")
    if target.device == "cuda" and not nvcc:
        raise UserError(
            f"{target.name}: nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
        )
    if target.host_triple:  # host code for a board: link with its cross compiler
        return find_cross_compiler(cross_compiler)
    return str(cross_compiler) if cross_compiler else None


def build_executable(model: onnx.ModelProto, target: dict):
    """A ``tvm.relax.VMExecutable`` of ``model`` (static shapes) for the TVM target dict.

    CPU targets use TVM's "zero" pipeline (as the ``tvm-llvm`` backend does); GPU targets
    use TVM's default pipeline, whose dlight rules schedule every kernel onto threads.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    with _COMPILE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # shapes left to TVM's inference
        mod = from_onnx(model, keep_params_in_input=False)
        tvm_target = tvm.target.Target(target)
        if target["kind"] == "llvm":
            mod = relax.get_pipeline("zero")(mod)
        try:
            return tvm.compile(mod, target=tvm_target)
        except Exception as exc:  # TVM raises its own error types; the first line says why
            msg = f"TVM could not compile for {target['kind']}: {_first_line(exc)}"
            raise UserError(msg) from None


def export_executable(exe, path: Path, cc: str | None = None) -> None:
    """``export_library`` to ``path``, linking with ``cc`` (a cross compiler) if given."""
    kwargs = {"cc": cc} if cc else {}
    with _COMPILE_LOCK:
        try:
            exe.export_library(str(path), **kwargs)
        except Exception as exc:
            raise UserError(f"linking the TVM module failed: {_first_line(exc)}") from None


def io_description(model: onnx.ModelProto) -> dict:
    """Names, shapes and element types of the graph's inputs and outputs."""
    inits = {i.name for i in model.graph.initializer}

    def describe(values) -> list[dict]:
        return [
            {
                "name": v.name,
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                          for d in v.type.tensor_type.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
            }
            for v in values
            if v.name not in inits
        ]  # fmt: skip

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def emit_tvm(
    model: onnx.ModelProto,
    out_dir_or_path: str | os.PathLike,
    target_name: str,
    *,
    cross_compiler: str | os.PathLike | None = None,
    cuda_arch: str | None = None,
) -> list[Path]:
    """Compile ``model`` for ``target_name`` and write the library and its sidecar.

    Args:
        model: the (pruned) model; symbolic batch dimensions become 1.
        out_dir_or_path: a ``.so`` path (sidecar ``<stem>.json`` beside it), or a
            directory that receives ``model.so`` and ``model.json``.
        target_name: ``tvm-llvm``, ``tvm-cuda`` or ``mali``.
        cross_compiler: the aarch64 compiler for ``mali`` (default: found on PATH).
        cuda_arch: ``sm_XY`` for ``tvm-cuda`` (default: the local GPU's, else sm_80).

    Returns:
        The written paths: [library, sidecar].
    """
    cc = check_emit(target_name, cross_compiler)
    from onnx_hwprune.frontends.onnx import with_static_inputs

    lib_path, meta_path = _destinations(Path(out_dir_or_path))
    static = with_static_inputs(model)
    target = compile_target(target_name, cuda_arch=cuda_arch)
    exe = build_executable(static, target)
    meta = _sidecar(static, target_name, target, lib_path.name)
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib_path.parent, prefix=".emit-") as tmp:
        staged_lib, staged_meta = Path(tmp) / lib_path.name, Path(tmp) / meta_path.name
        export_executable(exe, staged_lib, cc)
        staged_meta.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", "utf-8")
        os.replace(staged_lib, lib_path)
        os.replace(staged_meta, meta_path)
    logger.info("wrote %s and %s (%s)", lib_path, meta_path, target_name)
    return [lib_path, meta_path]


def _destinations(out: Path) -> tuple[Path, Path]:
    if out.suffix == ".so":
        return out, out.with_suffix(".json")
    return out / "model.so", out / "model.json"


def _sidecar(model: onnx.ModelProto, target_name: str, target: dict, lib_name: str) -> dict:
    import tvm

    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "library": lib_name,
        "target_name": target_name,
        "tvm_target": target,
        "tvm_version": tvm.__version__,
        "device": device_kind(target_name),
        "entry": "main",
        **io_description(model),
        "load_python": [
            "import json, tvm; from tvm import relax",
            "meta = json.load(open(SIDECAR)); dev = tvm.device(meta['device'], 0)",
            "vm = relax.VirtualMachine(tvm.runtime.load_module(meta['library']), dev)",
            "y = vm[meta['entry']](tvm.runtime.tensor(x, dev)).numpy()",
        ],
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:300]
