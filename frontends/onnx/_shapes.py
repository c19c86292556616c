"""Parsing of ``--input-shape NAME:1,3,224,224`` (the onnxsim convention)."""

from __future__ import annotations

from collections.abc import Iterable

from onnx_hwprune.errors import UserError

__all__ = ["parse_input_shapes"]


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``["x:1,3,224,224"]`` -> ``{"x": (1, 3, 224, 224)}``; a bare ``1,3,224,224`` is
    accepted for single-input models and keyed by the empty string."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            values = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise UserError(f"bad --input-shape {spec!r}: expected NAME:1,3,224,224") from None
        if not values or any(v <= 0 for v in values):
            raise UserError(f"bad --input-shape {spec!r}: dimensions must be positive integers")
        shapes[name] = values
    return shapes
