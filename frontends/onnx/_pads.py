"""Explicit Conv pads for ``auto_pad`` (the ONNX rule), for the recovery maths
(``passes/transform/_lsq.py``) and the PyTorch conversion (``runtime/_torch_ops.py``)."""

from __future__ import annotations

import math

__all__ = ["AUTO_PADS", "explicit_pads"]

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def explicit_pads(
    auto_pad: str,
    in_hw: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
) -> tuple[int, ...] | None:
    """Begin/end pads ``(top, left, bottom, right)`` for ``auto_pad``; None for NOTSET."""
    if auto_pad in ("NOTSET", ""):
        return None
    if auto_pad == "VALID":
        return (0,) * (2 * len(in_hw))
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return (*begin, *end)
