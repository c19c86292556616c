"""``--latency-budget``: a fraction of the original latency (``0.6``) or a time (``12ms``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from onnx_hwprune.errors import UserError

__all__ = ["LatencyBudget"]

_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|s|us)\s*$", re.IGNORECASE)
_SCALE_TO_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001}


@dataclass(frozen=True)
class LatencyBudget:
    """Exactly one of ``fraction`` (0, 1] or ``ms`` (> 0) is set."""

    fraction: float | None = None
    ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> LatencyBudget:
        match = _TIME.match(text)
        if match:
            ms = float(match.group(1)) * _SCALE_TO_MS[match.group(2).lower()]
            if ms <= 0:
                raise UserError(f"--latency-budget {text!r}: a time must be positive")
            return cls(ms=ms)
        try:
            fraction = float(text)
        except ValueError:
            raise UserError(
                f"--latency-budget {text!r}: expected a fraction in (0, 1] or a time like 12ms"
            ) from None
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"--latency-budget {text!r}: a fraction must be in (0, 1]")
        return cls(fraction=fraction)

    def resolve(self, full_ms: float) -> float:
        """The budget in milliseconds, given the original model's predicted latency."""
        return self.ms if self.ms is not None else full_ms * float(self.fraction)

    def __str__(self) -> str:
        return f"{self.ms:g}ms" if self.ms is not None else f"{self.fraction:g}"
