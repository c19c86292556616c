"""The core install has no TVM and no torch: what works without them, and what says in one
line which extra to install. Each case runs in a fresh interpreter where ``import tvm`` and
``import torch`` fail and ``find_spec`` does not see them, as in a core-only venv."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits_resnet.onnx"

_WITHOUT = textwrap.dedent(
    """
    import importlib.util, sys
    for name in ("tvm", "torch"):
        sys.modules[name] = None  # `import tvm` raises ImportError
    _find = importlib.util.find_spec
    hidden = ("tvm", "torch")
    importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] in hidden else _find(n, *a)
    from onnx_hwprune.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _run_without_tvm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, *args], capture_output=True, text=True, timeout=300
    )


def test_mali_planning_from_the_estimate_needs_no_tvm(tmp_path):
    out = tmp_path / "o.onnx"
    proc = _run_without_tvm(str(DIGITS), str(out), "--target", "mali")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "estimate" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["profile", str(DIGITS), "--target", "tvm-llvm"],
        ["{model}", "{out}", "--target", "mali", "--emit", "tvm"],
        ["{model}", "{out}", "--target", "tvm-llvm"],
    ],
    ids=["profile_tvm_llvm", "emit_tvm", "prune_tvm_llvm"],
)
def test_tvm_paths_name_the_extra_in_one_line(tmp_path, args):
    args = [a.format(model=DIGITS, out=tmp_path / "o.onnx") for a in args]
    proc = _run_without_tvm(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'onnx-hwprune[tvm]'" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
