"""The layering rule, read from the source with ``ast`` (no import is executed).

``frontends/``, ``passes/`` and ``cost_models/`` sit below ``runtime/`` and the API: they
must not import them. Only ``frontends/`` and ``runtime/`` talk to onnx, onnxruntime and
TVM; ``passes/`` work on the onnx-graphsurgeon IR and ``cost_models/`` on plain numbers.
``runtime/`` sits at the edge: it may import the lower layers' frontends and cost models,
never ``passes/`` nor the API.
Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# onnx_hwprune/ modules the lower layers may import: the version and the error types.
_API_MODULES = ("api", "cli", "cli_commands", "options", "report", "_latency", "_data")
_API_MODULES += ("recovery", "_recover_methods")  # passes composed with the runtime
_API_MODULES += ("context_configs",)  # the pruned networks the runtime times in context
_API = tuple(f"onnx_hwprune.{m}" for m in _API_MODULES)
_RUNTIME = ("onnx_hwprune.runtime",)
_ONNX = ("onnx", "onnxruntime", "tvm")

RULES: dict[str, tuple[str, ...]] = {
    "frontends": _RUNTIME + _API,
    "passes": _RUNTIME + _API + _ONNX,
    "cost_models": _RUNTIME + _API + _ONNX + ("onnx_hwprune.frontends", "onnx_hwprune.passes"),
    # The edge runs models and hands tensors to passes through the PassContext; it never
    # calls into them (recovery is a pass, composed with the runtime by the API).
    "runtime": _API + ("onnx_hwprune.passes",),
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] != "onnx_hwprune":  # package-dir maps the top folders under onnx_hwprune
        parts.insert(0, "onnx_hwprune")
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, anywhere in the file."""
    name = _package(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _forbidden(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


def violations(folder: str) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if _forbidden(module, RULES[folder]):
                out.append(f"{path.relative_to(ROOT)} imports {module}")
    return out


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports_only_what_it_may(folder):
    assert (ROOT / folder).is_dir()
    assert violations(folder) == []


def test_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The rule must be able to fail: a function-level import and a relative one count."""
    fake = tmp_path / "passes" / "sub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text(
        "def f():\n    import onnxruntime\n\nfrom ...runtime import profiler\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations("passes")
    assert "passes/sub/bad.py imports onnxruntime" in found
    assert "passes/sub/bad.py imports onnx_hwprune.runtime.profiler" in found


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_cost_model_import_loads_no_runtime_library():
    loaded = _loaded_after(
        "import onnx_hwprune.cost_models.staircase, onnx_hwprune.cost_models.network"
    )
    assert "onnx_hwprune.cost_models.network" in loaded
    heavy = {"onnxruntime", "onnx", "tvm", "torch", "onnx_hwprune.api", "onnx_hwprune.runtime"}
    assert loaded & heavy == set()


def test_package_import_is_lazy():
    loaded = _loaded_after("import onnx_hwprune; onnx_hwprune.__version__")
    assert "onnx_hwprune.api" not in loaded and "onnxruntime" not in loaded
    # ... and the public names still resolve on use.
    assert "onnx_hwprune.api" in _loaded_after("from onnx_hwprune import prune")
