"""Memory of a model as a function of its groups' channel counts, and ``--memory-budget``.

Two quantities, both exact polynomials of the group counts ``c_g``:

- **weight bytes**: the sum over every constant tensor of ``itemsize * prod(shape)``. An
  axis that pruning shrinks has size ``full - sum_g width_g * (N_g - c_g)``; a weight has at
  most two such axes (a conv's in and out), so its bytes are
  ``const + sum a_g c_g + sum b_gh c_g c_h``: linear and pairwise terms, which the exact
  planner's program represents exactly.
- **peak activation bytes**: tensors live from their producer to their last consumer in
  the graph's (topological) order; at each step the live bytes are linear in the counts,
  and the peak is at most a limit exactly when every step is. One linear row per step.

Batch and symbolic dimensions count as 1 (deployment latency is planned at batch 1 too).

``--memory-budget``: ``0.6`` (a fraction of the original's weight bytes), ``3MB`` (bytes,
with B/KB/MB/GB, powers of 1000, or KiB/MiB/GiB), or ``weights=0.6,activations=2MB``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.errors import UserError

__all__ = [
    "MemoryBudget",
    "MemoryLimit",
    "Poly",
    "activation_steps",
    "peak_activation_bytes",
    "weight_bytes",
    "weight_poly",
]

log = logging.getLogger(__name__)

_UNITS = {
    "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
}  # fmt: skip
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([kmg]i?b|b)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryLimit:
    """Exactly one of ``fraction`` (0, 1] of the original, or ``bytes`` (> 0)."""

    fraction: float | None = None
    bytes: float | None = None

    @classmethod
    def parse(cls, text: str, flag: str = "--memory-budget") -> MemoryLimit:
        match = _BYTES.match(text)
        if match:
            value = float(match.group(1)) * _UNITS[match.group(2).lower()]
            if value <= 0:
                raise UserError(f"{flag} {text!r}: a size must be positive")
            return cls(bytes=value)
        try:
            fraction = float(text)
        except ValueError:
            raise UserError(
                f"{flag} {text!r}: expected a fraction in (0, 1] or a size like 3MB"
            ) from None
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"{flag} {text!r}: a fraction must be in (0, 1]")
        return cls(fraction=fraction)

    def resolve(self, full_bytes: float) -> float:
        return self.bytes if self.bytes is not None else full_bytes * float(self.fraction)

    def __str__(self) -> str:
        return f"{self.bytes:g}B" if self.bytes is not None else f"{self.fraction:g}"


@dataclass(frozen=True)
class MemoryBudget:
    """Limits on weight bytes and on peak activation bytes; either may be absent."""

    weights: MemoryLimit | None = None
    activations: MemoryLimit | None = None

    @classmethod
    def parse(cls, text: str) -> MemoryBudget:
        if "=" not in text:
            return cls(weights=MemoryLimit.parse(text))
        parts: dict[str, MemoryLimit] = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key not in ("weights", "activations") or key in parts:
                raise UserError(
                    f"--memory-budget {text!r}: expected weights=..., activations=... (once each)"
                )
            parts[key] = MemoryLimit.parse(value, f"--memory-budget {key}")
        return cls(**parts)

    def __str__(self) -> str:
        items = [(k, getattr(self, k)) for k in ("weights", "activations")]
        return ",".join(f"{k}={v}" for k, v in items if v is not None)


@dataclass
class Poly:
    """``const + sum lin[g] * c_g + sum quad[g, h] * c_g * c_h`` (``g == h`` allowed)."""

    const: float = 0.0
    lin: dict[str, float] = field(default_factory=dict)
    quad: dict[tuple[str, str], float] = field(default_factory=dict)

    def value(self, counts: Mapping[str, int]) -> float:
        total = self.const + sum(a * counts[g] for g, a in self.lin.items())
        return total + sum(b * counts[g] * counts[h] for (g, h), b in self.quad.items())

    def add(self, other: Poly) -> None:
        self.const += other.const
        for g, a in other.lin.items():
            self.lin[g] = self.lin.get(g, 0.0) + a
        for key, b in other.quad.items():
            self.quad[key] = self.quad.get(key, 0.0) + b


Width = Mapping[tuple[str, int], list[tuple[str, int]]]  # ChannelMap.width: space -> groups


def _axis_form(width: Width, sizes: Mapping[str, int], name: str, axis: int, full: int):
    """(constant, {group: coefficient}) of one axis' size as a linear form of the counts."""
    widths = [(g, w) for g, w in width.get((name, axis), []) if g in sizes]  # others stay whole
    const = full - sum(w * sizes[g] for g, w in widths)
    return float(const), {g: float(w) for g, w in widths}


def _tensor_poly(width: Width, sizes: Mapping[str, int], tensor, itemsize: int) -> Poly:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in (tensor.shape or [])]
    forms, scale = [], float(itemsize)
    for axis, dim in enumerate(shape):
        if (tensor.name, axis) in width:
            forms.append(_axis_form(width, sizes, tensor.name, axis, dim))
        else:
            scale *= dim
    if len(forms) > 2:
        log.warning("%s: %d pruned axes; counted at full size beyond two", tensor.name, len(forms))
        for const, coefs in forms[2:]:
            scale *= const + sum(coefs[g] * sizes[g] for g in coefs)
        forms = forms[:2]
    poly = Poly(const=scale)
    if forms:
        poly = Poly(scale * forms[0][0], {g: scale * a for g, a in forms[0][1].items()})
    if len(forms) == 2:
        (c0, a0), (c1, a1) = forms
        poly = Poly(scale * c0 * c1)
        for g, a in a0.items():
            poly.lin[g] = poly.lin.get(g, 0.0) + scale * a * c1
        for h, b in a1.items():
            poly.lin[h] = poly.lin.get(h, 0.0) + scale * b * c0
        for g, a in a0.items():
            for h, b in a1.items():
                key = (g, h) if (h, g) not in poly.quad else (h, g)
                poly.quad[key] = poly.quad.get(key, 0.0) + scale * a * b
    return poly


def _itemsize(tensor) -> int:
    try:
        return int(np.dtype(tensor.dtype).itemsize)
    except TypeError:
        return 4  # unknown dtype: float32, the common case


def weight_poly(graph: gs.Graph, width: Width, sizes: Mapping[str, int]) -> Poly:
    """Bytes of all constant tensors as a polynomial of the prunable groups' counts."""
    poly = Poly()
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            poly.add(_tensor_poly(width, sizes, tensor, _itemsize(tensor)))
    return poly


def activation_steps(graph: gs.Graph, width: Width, sizes: Mapping[str, int]) -> list[Poly]:
    """Live activation bytes at each node of the graph's order, one polynomial per step."""
    nodes = list(graph.nodes)
    birth: dict[str, int] = {t.name: -1 for t in graph.inputs}
    death: dict[str, int] = {t.name: len(nodes) for t in graph.outputs}
    tensors: dict[str, gs.Tensor] = {t.name: t for t in graph.inputs}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.name:
                death[t.name] = max(death.get(t.name, i), i)
                tensors.setdefault(t.name, t)
        for t in node.outputs:
            birth.setdefault(t.name, i)
            tensors[t.name] = t
    polys = {n: _tensor_poly(width, sizes, t, _itemsize(t)) for n, t in tensors.items()}
    steps, seen = [], set()
    for i in range(len(nodes)):
        live = frozenset(
            n for n in tensors if birth.get(n, -1) <= i <= death.get(n, birth.get(n, -1))
        )
        if live and live not in seen:
            seen.add(live)
            step = Poly()
            for n in sorted(live):
                step.add(polys[n])
            steps.append(step)
    return steps


def weight_bytes(graph: gs.Graph) -> int:
    """Bytes of the constant tensors of a graph as it is."""
    return round(weight_poly(graph, {}, {}).const)


def peak_activation_bytes(graph: gs.Graph) -> int:
    """Peak live activation bytes of a graph as it is, in its node order."""
    return round(max((s.const for s in activation_steps(graph, {}, {})), default=0.0))
