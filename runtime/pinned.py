"""A pinned profile: plan from an exported profile file and nothing else.

``prune --profile FILE`` reads the export (``profile export``) into a private, temporary
database and builds the cost model from the stored points only, through a
:class:`~.backend.RecordedBackend` that cannot run anything. No measurement happens, the
user's profile database is neither read nor written, so the same input, options and file
give the same plan and the same bytes on any machine. A fresh measurement is a new
profile: export it again to pin it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import onnx

from onnx_hwprune.cost_models.network import NetworkCostModel
from onnx_hwprune.errors import UserError

__all__ = ["PinnedCostModel", "pinned_cost_model"]


@dataclasses.dataclass(frozen=True)
class PinnedCostModel(NetworkCostModel):
    """A network cost model read from a pinned profile; ``source`` says which (reports)."""

    source: str = ""


def pinned_cost_model(path: str | os.PathLike, static: onnx.ModelProto, target: str):
    """The cost model of ``static`` on ``target`` from the exported profile at ``path``."""
    from onnx_hwprune._jsonfile import read_json
    from onnx_hwprune.cost_models.profile_db import ProfileDB, check_import
    from onnx_hwprune.runtime.backend import RecordedBackend
    from onnx_hwprune.runtime.profiler import build_cost_model

    doc = read_json(path, "profile export")
    check_import(doc)
    with (
        tempfile.TemporaryDirectory(prefix="onnx-hwprune-pinned-") as tmp,
        ProfileDB(Path(tmp) / "pinned.sqlite") as db,
    ):
        db.import_json(doc)
        fp_hash, fingerprint = _one_device(db, target, path)
        backend = RecordedBackend(
            fingerprint, fingerprint_hash=fp_hash, missing=lambda: _missing(path)
        )
        cost = build_cost_model(static, backend, target, db)
    fields = {f.name: getattr(cost, f.name) for f in dataclasses.fields(NetworkCostModel)}
    source = f"pinned profile {Path(path).name} (device {fp_hash}); nothing measured here"
    return PinnedCostModel(**fields, source=source)


def _one_device(db, target: str, path) -> tuple[str, dict]:
    devices = db.devices(target)
    if len(devices) != 1:
        found = "none" if not devices else ", ".join(h for _, h, _ in devices)
        raise UserError(
            f"--profile {path}: needs exactly one device measured for target {target!r} "
            f"(found {found}); export a profile of one device"
        )
    _, fp_hash, fingerprint = devices[0]
    return fp_hash, fingerprint


def _missing(path) -> Exception:
    return UserError(
        f"--profile {path} lacks measurements of this model (profile it with "
        "'onnx-hwprune profile' on the device, then 'profile export' again)"
    )
