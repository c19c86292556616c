"""The registry of op handlers: one stateless handler per ONNX op type (and opset range).

A handler has two duties, both explicit:

- ``couple(node, ctx)``: declare the node's channel spaces and which of their elements
  must be removed together (see :mod:`._coupling`), or freeze them with a reason;
- ``rewrite(node, ctx)``: after channels were removed, fix what is not a sliced weight:
  the ``group`` attribute of a Conv, Split sizes, Slice bounds, Reshape shape constants;
- optionally ``claims(node)``: the nodes of a side pattern the handler couples itself
  (ConvInteger's run-time bias chain); their own handlers are then not run.

Constants that carry a channel axis (weights, biases, BN parameters, per-channel scales)
are declared as spaces and sliced generically by the pruning pass; a handler's
``rewrite`` never touches them.

An op without a handler freezes every channel space it touches: it is never guessed to be
elementwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnx_hwprune.passes.analysis._context import CoupleContext, RewriteContext

__all__ = ["OpHandler", "HandlerRegistry", "DEFAULT_REGISTRY", "register"]

log = logging.getLogger(__name__)


class OpHandler(Protocol):
    """What every handler provides. Handlers keep no state between calls."""

    def couple(self, node: gs.Node, ctx: CoupleContext) -> None: ...

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None: ...


@dataclass(frozen=True)
class _Entry:
    op: str
    since: int
    until: int | None  # last opset the handler understands, None = open-ended
    handler: OpHandler
    domain: str = ""  # "" is the default ONNX domain; opset ranges apply to it only

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


class HandlerRegistry:
    """Handlers keyed by op type and domain, with opset ranges (of the default domain).

    Ops of other domains (``com.microsoft``'s QLinearAdd, QGemm...) are looked up only
    when a handler was registered for that very domain.

    Registering a second handler for an overlapping opset range of the same op is an
    error, so a handler can never be shadowed by accident.
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[_Entry]] = {}

    def add(
        self,
        ops: tuple[str, ...],
        handler: OpHandler,
        since: int = 1,
        until: int | None = None,
        domain: str = "",
    ) -> None:
        for op in ops:
            entry = _Entry(op, since, until, handler, _domain(domain))
            for other in self._entries.get(op, []):
                if other.domain == entry.domain and _overlaps(entry, other):
                    raise ValueError(f"duplicate handler for {op} (opsets {since}..{until})")
            self._entries.setdefault(op, []).append(entry)

    def lookup(self, op: str, domain: str, opset: int) -> OpHandler | None:
        domain = _domain(domain)
        for entry in self._entries.get(op, []):
            if entry.domain == domain and (domain or entry.covers(opset)):
                return entry.handler
        return None

    def ops(self) -> Iterator[str]:
        yield from sorted(self._entries)

    def copy(self) -> HandlerRegistry:
        new = HandlerRegistry()
        new._entries = {op: list(entries) for op, entries in self._entries.items()}
        return new


def _domain(domain: str | None) -> str:
    return "" if domain in (None, "", "ai.onnx") else domain


def _overlaps(a: _Entry, b: _Entry) -> bool:
    a_end = a.until if a.until is not None else 10**9
    b_end = b.until if b.until is not None else 10**9
    return a.since <= b_end and b.since <= a_end


DEFAULT_REGISTRY = HandlerRegistry()


def register(
    *ops: str, since: int = 1, until: int | None = None, domain: str = ""
) -> Callable[[type], type]:
    """Class decorator: instantiate the handler and add it to :data:`DEFAULT_REGISTRY`."""

    def wrap(cls: type) -> type:
        DEFAULT_REGISTRY.add(ops, cls(), since, until, domain)
        return cls

    return wrap
