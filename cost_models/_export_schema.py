"""The schema of a profile export, checked in full before anything is stored.

An import is all or nothing: one malformed record refuses the whole document, so a bad
file can never leave half of itself in the database, or a text ``median_ms`` that makes
every later run crash. Unknown fields in a record are refused, as a typo would otherwise
be dropped; the document's top level may carry metadata beside its lists.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from onnx_hwprune.cost_models.signature import LayerSignature
from onnx_hwprune.errors import UserError

__all__ = ["check_export", "check_signature", "MAX_MEDIAN_MS"]

MAX_MEDIAN_MS = 3_600_000.0  # one hour per layer: anything above is a unit error, not a layer

_DEVICE = {"target": str, "fingerprint_hash": str, "fingerprint": dict}
_MEASUREMENT = {
    "target": str, "fingerprint_hash": str, "signature": dict, "in_ch": int, "out_ch": int,
    "median_ms": float, "spread": float, "samples": int, "number": int, "quality": str,
}  # fmt: skip
_CALIBRATION = {"target": str, "fingerprint_hash": str, "model": str, "data": dict}
_TOP = {"format": str, "version": int, "devices": list, "measurements": list, "calibrations": list}


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _record(
    doc: Any, fields: dict[str, type], where: str, optional=(), extra_ok: bool = False
) -> None:
    if not isinstance(doc, dict):
        raise UserError(f"malformed profile export: {where} must be an object")
    unknown = sorted(set(doc) - set(fields))
    if unknown and not extra_ok:
        raise UserError(f"malformed profile export: {where} has unknown fields {unknown}")
    for name, kind in fields.items():
        if name not in doc:
            if name in optional:
                continue
            raise UserError(f"malformed profile export: {where} lacks {name!r}")
        if not _fits(doc[name], kind):
            raise UserError(
                f"malformed profile export: {where}.{name} must be {kind.__name__}, "
                f"got {doc[name]!r:.40}"
            )


def check_signature(sig: Any, where: str) -> LayerSignature:
    """A signature dict with exactly LayerSignature's fields, each of the right type."""
    kinds = {}
    for f in dataclasses.fields(LayerSignature):
        default = f.default if f.default is not dataclasses.MISSING else ""
        kinds[f.name] = list if isinstance(default, tuple) else type(default)
    _record(sig, kinds, where, optional=[k for k in kinds if k != "op"])
    for name, value in sig.items():
        if isinstance(value, list) and not all(_fits(v, float) for v in value):
            raise UserError(f"malformed profile export: {where}.{name} must hold numbers")
    return LayerSignature.from_dict(sig)


def _measurement(m: Any, where: str) -> None:
    _record(m, _MEASUREMENT, where, optional=["quality"])
    if m.get("quality", "legacy") not in ("clean", "noisy", "drifted", "retried", "legacy"):
        raise UserError(f"malformed profile export: {where}.quality {m['quality']!r:.20}")
    check_signature(m["signature"], f"{where}.signature")
    if m["in_ch"] <= 0 or m["out_ch"] <= 0:
        raise UserError(f"malformed profile export: {where} channel counts must be positive")
    if not 0 < m["median_ms"] <= MAX_MEDIAN_MS:
        raise UserError(
            f"malformed profile export: {where}.median_ms {m['median_ms']} is not in "
            f"(0, {MAX_MEDIAN_MS:.0f}]"
        )
    if m["spread"] < 0 or m["samples"] < 0 or m["number"] < 0:
        raise UserError(f"malformed profile export: {where} has a negative spread or count")


def check_export(doc: Any, fmt: str, version: int) -> None:
    """Raise :class:`UserError` unless ``doc`` is a valid export of ``fmt``/``version``."""
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != version:
        got = (doc.get("format"), doc.get("version")) if isinstance(doc, dict) else type(doc)
        raise UserError(
            f"not an onnx-hwprune profile export of version {version} (got {got!r:.60})"
        )
    # The document may carry metadata beside the data (shipped GPU profiles say where and
    # when they were measured); every record inside is strict.
    _record(doc, _TOP, "the document", optional=["calibrations"], extra_ok=True)
    for i, d in enumerate(doc["devices"]):
        _record(d, _DEVICE, f"devices[{i}]")
    for i, m in enumerate(doc["measurements"]):
        _measurement(m, f"measurements[{i}]")
    for i, c in enumerate(doc.get("calibrations", [])):
        _record(c, _CALIBRATION, f"calibrations[{i}]")
