"""The :class:`Target` record, apart from the registry in ``targets.py`` so that modules
defining targets beside their backends (``tvm_targets``, ``gpu_targets``) need not import
the registry that imports them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from onnx_hwprune.runtime.backend import Backend

__all__ = ["Target"]


@dataclass(frozen=True)
class Target:
    """A named deployment target.

    Attributes:
        name: the ``--target`` value.
        description: one line for ``--help``.
        source: where its numbers come from (printed in reports).
        make_backend: ``make_backend(threads=None, **options) -> Backend``.
        available: ``available() -> (True, "")`` or ``(False, reason)``.
        channel_multiple: latency planning keeps channel counts that are multiples of
            this, for library effects a single-layer benchmark cannot see (see ``cpu``).
    """

    name: str
    description: str
    source: str
    make_backend: Callable[..., Backend]
    available: Callable[[], tuple[bool, str]]
    channel_multiple: int = 1
