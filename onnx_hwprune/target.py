"""The :class:`Target` record: everything onnx-hwprune knows about one ``--target``.

In the spirit of TVM's ``tvm.target.Target``: one object answers every question about the
device (how to measure it, where its latency numbers come from, how its models are
emitted, which channel counts it rewards), so no code matches target names. The entries
are defined and registered once, in ``runtime/targets.py``; the record lives here, with
no dependency, so that every layer (``PassContext.target``) may hold one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["COST_SOURCES", "CostSource", "DeviceKind", "Target"]

CostSource = Literal["measured", "shipped", "analytic"]
DeviceKind = Literal["cpu", "cuda", "opencl"]

COST_SOURCES: dict[str, str] = {
    "measured": "measured on this host (or a board over RPC), reusing the profile database",
    "shipped": "a profile shipped in the package, measured on the named device",
    "analytic": "board measurements from the profile database, else an analytic estimate",
}
"""Where a target's cost model comes from (``Target.cost_source``)."""


def _no_note() -> str:
    return ""


@dataclass(frozen=True)
class Target:
    """A named deployment target.

    Attributes:
        name: the ``--target`` value.
        description: one line for ``--help``.
        source: where its numbers come from (printed in reports).
        make_backend: ``make_backend(threads=None, **options) -> Backend``.
        available: ``available() -> (True, "")`` or ``(False, reason)``: measurable here?
        backend: the backend that measures it, in words (``onnx-hwprune targets``).
        device: the kind of device its models run on: ``cpu``, ``cuda`` or ``opencl``.
        cost_source: a key of :data:`COST_SOURCES`.
        emit_tvm: ``--emit tvm`` can compile a TVM module for it.
        host_triple: LLVM triple of the host code when it is not this machine's (a board):
            linking needs a cross compiler.
        channel_multiple: latency planning keeps channel counts that are multiples of
            this, for library effects a single-layer benchmark cannot see (see ``cpu``).
        note: ``note() -> str``: what a user should know here and now (a missing
            compiler); checked when listed, never at import.
    """

    name: str
    description: str
    source: str
    make_backend: Callable[..., Any]
    available: Callable[[], tuple[bool, str]]
    backend: str = ""
    device: DeviceKind = "cpu"
    cost_source: CostSource = "measured"
    emit_tvm: bool = False
    host_triple: str | None = None
    channel_multiple: int = 1
    note: Callable[[], str] = _no_note

    def __post_init__(self) -> None:
        if self.cost_source not in COST_SOURCES:
            raise ValueError(f"{self.name}: unknown cost source {self.cost_source!r}")
