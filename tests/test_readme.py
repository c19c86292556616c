"""The README stays true: its Python examples run, its Quickstart has exactly two
commands, CI runs the README's test command, and packaging lists every package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _quickstart() -> str:
    return README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(index, tmp_path):
    code = _blocks("python")[index]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    commands = [b.strip() for b in _blocks("bash", _quickstart())]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "examples/" in commands[0] and "onnx-hwprune " in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def _locate(arg: str, tmp_path: Path) -> str:
    """Inputs from the repo's examples/, outputs into tmp_path, options as they are."""
    if arg.startswith("examples/"):
        return str(REPO / arg)
    return str(tmp_path / arg) if arg.endswith((".onnx", ".json")) else arg


def test_quickstart_main_job_works(tmp_path):
    """The first Quickstart command, minus the install (done by whoever runs the tests)."""
    command = [b.strip() for b in _blocks("bash", _quickstart())][0]
    job = command.split("&& ")[-1].split()
    assert job[0] == ".venv/bin/onnx-hwprune"
    args = [_locate(a, tmp_path) for a in job[1:]]
    proc = subprocess.run(
        [sys.executable, "-m", "onnx_hwprune", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "digits_pruned.onnx").stat().st_size > 0


def test_every_package_folder_is_installed():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            assert ".".join((package, *rel)) in listed, init
