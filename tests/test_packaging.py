"""pyproject's explicit package list matches the folders: a forgotten package would be
missing from the wheel while every test still passes from the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools installs ``package`` from (longest package-dir prefix)."""
    for prefix in sorted(package_dir, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix) :].lstrip(".").split(".")
            return ROOT / package_dir[prefix] / Path(*[p for p in rest if p])
    return ROOT / Path(*package.split("."))


def test_every_package_folder_is_listed():
    config = _setuptools()
    listed = set(config["packages"])
    folders = {_folder_of(p, config["package-dir"]) for p in listed}
    for name in config["package-dir"].values():
        for init in (ROOT / name).rglob("__init__.py"):
            assert init.parent in folders, f"{init.parent.relative_to(ROOT)} not in packages"


def test_every_listed_package_exists():
    config = _setuptools()
    for package in config["packages"]:
        folder = _folder_of(package, config["package-dir"])
        assert (folder / "__init__.py").is_file(), f"{package}: no {folder}/__init__.py"
