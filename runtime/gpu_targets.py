"""GPU targets: measured ones (``cudnn``, ``cudnn-benchmark``, ``ort-cuda``) and shipped ones.

A *shipped* target (``cudnn-h100``) plans for a GPU from a profile measured on that GPU
with ``tools/bench_gpu.py`` and shipped as package data in ``cost_models/profiles/``:
one file per (backend setting, GPU), named ``<measured target>-<gpu>.json``, in the
profile export format of :mod:`~onnx_hwprune.cost_models.profile_db` plus a ``measured``
block (date, tool, versions). Planning with it works on any machine: the profile is
imported into a temporary database and the profiler *replays* the staircase search on
it. The search is deterministic given the same numbers, so it asks for exactly the points
measured on the GPU; a point it lacks (a layer signature never measured there) is a
:class:`~onnx_hwprune.errors.UserError` naming the layer, never a guess.

Example::

    cost = shipped_cost_model("cudnn-h100", "resnet50.onnx")
    cost.predict({})   # ms on the H100, from the shipped profile
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import math
import re
import tempfile
from pathlib import Path

from onnx_hwprune.cost_models.network import (
    NetworkCostModel,
    assemble_cost_model,
    layer_key,
    require_layers,
)
from onnx_hwprune.cost_models.profile_db import EXPORT_VERSION, ProfileDB, fingerprint_hash
from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import RecordedBackend
from onnx_hwprune.runtime.profiler import ProfileOptions, load_model_and_layers, model_key

__all__ = [
    "GPU_FINGERPRINT_FIELDS",
    "GPU_PROFILE_OPTIONS",
    "describe_shipped_profile",
    "gpu_slug",
    "load_shipped_profile",
    "profile_dir",
    "search_settings",
    "shipped_backend",
    "shipped_cost_model",
    "shipped_profiles",
    "validate_gpu_profile",
]

logger = logging.getLogger(__name__)

#: Fingerprint fields a shipped GPU profile must carry (what makes GPU numbers differ).
GPU_FINGERPRINT_FIELDS = (
    "backend", "gpu", "compute_capability", "driver", "cuda", "cudnn", "torch",
    "cudnn_benchmark",
)  # fmt: skip
#: The options profiles are measured and replayed with: the replay only finds the
#: measured points if its search is the same as the measurement's.
GPU_PROFILE_OPTIONS = ProfileOptions()
_FORMAT = "onnx-hwprune-profile"
_MAX_ERRORS = 8


def gpu_slug(gpu_name: str) -> str:
    """Short lowercase GPU name for target names: ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``."""
    match = re.search(r"\b([A-Z]{1,3}\d{2,4}[A-Za-z]?)\b", gpu_name)
    if match:
        return match.group(1).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", gpu_name.lower()) if w and w != "nvidia"]
    return "-".join(words) or "gpu"


def search_settings() -> dict:
    """The staircase search's settings, stored with a profile: a replay under other
    settings asks for points that were never measured."""
    return dataclasses.asdict(GPU_PROFILE_OPTIONS.search)


def profile_dir() -> Path:
    """The package's folder of shipped profiles (may not exist: nothing shipped yet)."""
    return Path(str(importlib.resources.files("onnx_hwprune.cost_models"))) / "profiles"


def shipped_profiles(directory: Path | None = None) -> dict[str, Path]:
    """Shipped target name -> profile file, for every ``*.json`` in ``directory``."""
    folder = Path(directory) if directory is not None else profile_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


def load_shipped_profile(name: str, directory: Path | None = None) -> dict:
    """The validated profile document of shipped target ``name``."""
    profiles = shipped_profiles(directory)
    if name not in profiles:
        known = ", ".join(profiles) or "none are shipped"
        raise UserError(f"no shipped GPU profile named {name!r} (shipped: {known})")
    path = profiles[name]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"shipped profile {path} is unreadable: {exc}") from None
    validate_gpu_profile(doc, name=name, origin=str(path))
    return doc


def validate_gpu_profile(doc: object, *, name: str | None = None, origin: str = "profile") -> None:
    """Raise :class:`UserError` listing what makes ``doc`` not a valid shipped GPU profile.

    Rules: the export format and version; a ``measured`` block with an ISO ``date`` and the
    ``tool``; exactly one device, whose fingerprint has :data:`GPU_FINGERPRINT_FIELDS` and
    hashes to its ``fingerprint_hash``; ``name`` (if given) equal to
    ``<device target>-<gpu slug>``; at least one measurement, each of that device, with a
    valid signature, positive channel counts, finite positive ``median_ms``, finite
    non-negative ``spread``, and ``samples``/``number`` of at least 1.
    """
    errors = _header_errors(doc)
    if not errors:
        device = doc["devices"][0]
        errors += _device_errors(device, name)
        for i, m in enumerate(doc["measurements"]):
            errors += [f"measurements[{i}]: {e}" for e in _measurement_errors(m, device)]
            if len(errors) > _MAX_ERRORS:
                break
    if errors:
        shown = "; ".join(errors[:_MAX_ERRORS])
        more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
        raise UserError(f"{origin} is not a valid GPU profile: {shown}{more}")


def _header_errors(doc: object) -> list[str]:
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    errors = []
    if doc.get("format") != _FORMAT or doc.get("version") != EXPORT_VERSION:
        errors.append(f"format/version must be {_FORMAT!r}/{EXPORT_VERSION}")
    measured = doc.get("measured")
    if not isinstance(measured, dict) or not re.match(
        r"^\d{4}-\d{2}-\d{2}", str(measured.get("date", ""))
    ):
        errors.append("'measured' must hold an ISO 'date' (when the GPU was measured)")
    elif not measured.get("tool"):
        errors.append("'measured' must name the 'tool' that measured it")
    devices = doc.get("devices")
    if not isinstance(devices, list) or len(devices) != 1:
        errors.append("'devices' must hold exactly one device (one GPU, one setting per file)")
    if not isinstance(doc.get("measurements"), list) or not doc.get("measurements"):
        errors.append("'measurements' must be a non-empty list")
    return errors


def _device_errors(device: dict, name: str | None) -> list[str]:
    fp = device.get("fingerprint")
    if not isinstance(fp, dict):
        return ["devices[0].fingerprint must be an object"]
    errors = [f"fingerprint lacks {f!r}" for f in GPU_FINGERPRINT_FIELDS if f not in fp]
    if device.get("fingerprint_hash") != fingerprint_hash(fp):
        errors.append("devices[0].fingerprint_hash does not match its fingerprint")
    if name is not None and "gpu" in fp:
        expected = f"{device.get('target')}-{gpu_slug(str(fp['gpu']))}"
        if name != expected:
            errors.append(f"file name {name!r} should be {expected!r} (target-gpu)")
    return errors


def _measurement_errors(m: object, device: dict) -> list[str]:
    if not isinstance(m, dict):
        return ["not an object"]
    errors = []
    if (m.get("target"), m.get("fingerprint_hash")) != (
        device.get("target"),
        device.get("fingerprint_hash"),
    ):
        errors.append("target/fingerprint_hash differ from the device's")
    try:
        LayerSignature.from_dict(m["signature"])
    except (KeyError, TypeError, AttributeError) as exc:
        errors.append(f"bad signature ({exc})")
    for key, low in (("in_ch", 1), ("out_ch", 1), ("samples", 1), ("number", 1)):
        if not isinstance(m.get(key), int) or m[key] < low:
            errors.append(f"{key} must be an integer >= {low}")
    for key, positive in (("median_ms", True), ("spread", False)):
        v = m.get(key)
        ok = isinstance(v, int | float) and math.isfinite(v) and (v > 0 if positive else v >= 0)
        if not ok:
            errors.append(
                f"{key} must be a finite {'positive' if positive else 'non-negative'} number"
            )
    return errors


def describe_shipped_profile(name: str, directory: Path | None = None) -> str:
    """One line for reports: which GPU, software and date the numbers come from."""
    doc = load_shipped_profile(name, directory)
    fp = doc["devices"][0]["fingerprint"]
    return (
        f"shipped profile {name}: measured on {fp['gpu']} (driver {fp['driver']}, CUDA "
        f"{fp['cuda']}, cuDNN {fp['cudnn']}, torch {fp['torch']}, cudnn.benchmark "
        f"{fp['cudnn_benchmark']}) on {doc['measured']['date']} with {doc['measured']['tool']}"
    )


class _Missing(UserError):
    """Something asked a shipped profile to measure (a point it does not hold)."""


def _cannot_measure(label: str) -> Exception:
    return _Missing(
        f"target {label} plans from a shipped profile: it cannot measure anything "
        "on this host (measure on the GPU itself with tools/bench_gpu.py)"
    )


def shipped_cost_model(
    name: str, source, *, directory: Path | None = None, progress=None
) -> NetworkCostModel:
    """The cost model of ``source`` on shipped target ``name``, measuring nothing.

    Layers are priced from the profile's staircases; if the profile holds a calibration
    for this exact model (``tools/bench_gpu.py`` stores one per benchmark network) its
    residual and per-layer scales are used, else the residual is 0 (logged).
    """
    doc = load_shipped_profile(name, directory)
    device = doc["devices"][0]
    if doc["measured"].get("search", search_settings()) != search_settings():
        logger.warning(
            "%s was measured with other staircase-search settings: layers may be missing", name
        )
    backend = shipped_backend(name, directory, doc)
    model, layers = load_model_and_layers(source)
    require_layers(layers)
    with tempfile.TemporaryDirectory() as tmp, ProfileDB(Path(tmp) / "shipped.sqlite") as db:
        db.import_json(doc)
        staircases = _replay(layers, backend, device["target"], db, name, progress)
        cal = db.get_calibration(device["target"], device["fingerprint_hash"], model_key(model))
    if cal is None:
        logger.warning("%s holds no calibration for this model: residual taken as 0 ms", name)
        cal = {"residual_ms": 0.0, "total_ms": None, "scales": {}}
    return assemble_cost_model(name, device["fingerprint_hash"], layers, staircases, cal)


def _replay(layers, backend, target, db, name, progress) -> dict:
    from onnx_hwprune.runtime.profiler import profile_layers

    staircases: dict = {}
    for layer in layers:
        if layer_key(layer) in staircases:
            continue
        try:
            staircases.update(
                profile_layers([layer], backend, target, db, GPU_PROFILE_OPTIONS, progress)
            )
        except _Missing:
            raise UserError(
                f"the shipped {name} profile has no measurements for layer {layer.node} "
                f"(signature {layer.signature.describe()}, {layer.in_channels}->"
                f"{layer.out_channels} channels): measure it on that GPU with "
                "python tools/bench_gpu.py --out DIR --models THIS.onnx"
            ) from None
    return staircases


def shipped_backend(
    name: str, directory: Path | None = None, doc: dict | None = None
) -> RecordedBackend:
    """The backend of shipped target ``name``: the profile's device, measuring nothing;
    a missing point raises a signal that :func:`shipped_cost_model` turns into an error
    naming the layer."""
    doc = doc or load_shipped_profile(name, directory)
    fingerprint = doc["devices"][0]["fingerprint"]
    return RecordedBackend(fingerprint, missing=lambda: _cannot_measure(name))
