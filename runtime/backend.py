"""The measurement-backend interface: build a runnable for a target, time it, name the device.

A backend turns an ONNX model into a :class:`Runnable` for one device and describes that
device with a :meth:`Backend.fingerprint`. The profiler only ever sees these two things
plus :mod:`onnx_hwprune.runtime.timing`, so that a new backend (PyTorch/cuDNN on a GPU,
onnxruntime's CUDA provider, TVM over RPC on a board) plugs in without touching the
profiler: subclass :class:`Backend` and name the class in a ``Target`` entry
(``runtime/targets.py``):

    class MyBackend(Backend):
        name = "my-backend"
        def fingerprint(self) -> dict: ...
        def prepare(self, model) -> Runnable: ...

A remote runnable does not need to run on this host: it only has to answer
``sample(number)`` with seconds per run measured by the device's own timer.
"""

from __future__ import annotations

import abc
import logging
import os
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

from onnx_hwprune.cost_models.profile_db import fingerprint_hash

if TYPE_CHECKING:
    import onnx

__all__ = [
    "Backend",
    "RecordedBackend",
    "Runnable",
    "cpu_info",
    "fingerprint_hash",
    "physical_cores",
]

logger = logging.getLogger(__name__)

_ISA_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "avx", "neon", "asimd")


class Runnable(abc.ABC):
    """A model prepared for one device; times itself."""

    @abc.abstractmethod
    def sample(self, number: int) -> float:
        """Run ``number`` times back to back; return mean seconds per run."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runnables hold nothing
        """Release device resources; the default does nothing."""


class Backend(abc.ABC):
    """A way to run ONNX models on one device.

    Attributes:
        name: the backend's name in fingerprints and logs, e.g. ``"ort-cpu"``.
    """

    name: str = ""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """What makes this device's numbers differ from another's: CPU/GPU model, ISA
        flags, library versions, threads. JSON-able; hashed into the profile-DB key."""

    @abc.abstractmethod
    def prepare(self, model: onnx.ModelProto) -> Runnable:
        """Compile/load ``model`` for this device with random inputs bound."""

    def fingerprint_hash(self) -> str:
        """16 hex digits identifying :meth:`fingerprint`."""
        return fingerprint_hash(self.fingerprint())


class RecordedBackend(Backend):
    """A device known only through a profile database: an imported profile, a profile
    shipped in the package, a board's stored measurements.

    It measures nothing: everything must already be in the database, which is how a
    profile measured on one machine is used to plan on another. Asking for a point the
    database lacks raises ``missing()`` (by default a :class:`UserError` saying to
    profile on the device and import again).

    Args:
        fingerprint: the device's fingerprint as stored (``ProfileDB.devices()``).
        fingerprint_hash: the stored hash, when it must be used as stored.
        missing: ``missing() -> Exception`` raised by :meth:`prepare`.
    """

    name = "recorded"

    def __init__(
        self,
        fingerprint: dict,
        *,
        fingerprint_hash: str | None = None,
        missing: Callable[[], Exception] | None = None,
    ):
        self._fingerprint = dict(fingerprint)
        self._hash = fingerprint_hash
        self._missing = missing or _missing_measurement

    def fingerprint(self) -> dict:
        """The recorded fingerprint."""
        return dict(self._fingerprint)

    def fingerprint_hash(self) -> str:
        """The stored hash if given, else the hash of the fingerprint."""
        return self._hash or super().fingerprint_hash()

    def prepare(self, model: onnx.ModelProto) -> Runnable:
        """Always fails: a recorded device cannot run anything."""
        raise self._missing()


def _missing_measurement() -> Exception:
    from onnx_hwprune.errors import UserError

    return UserError(
        "a measurement is missing from the imported profile; profile this model on "
        "the device itself (onnx-hwprune profile) and import the export again"
    )


def cpu_info(read: Callable[[], str] | None = None) -> dict:
    """Host CPU model, ISA flags of interest, core counts and OS, for fingerprints."""
    text = read() if read else _read_cpuinfo()
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "CPU part") and model in ("", platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return {
        "cpu": model,
        "isa": sorted(f for f in _ISA_FLAGS if f in flags),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count() or 1,
        "physical_cores": physical_cores(text),
        "os": platform.system(),
    }


def physical_cores(cpuinfo_text: str | None = None) -> int:
    """Physical cores (distinct (physical id, core id) pairs); falls back to os.cpu_count."""
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    pairs, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            pairs.add((phys, value.strip()))
    return len(pairs) or (os.cpu_count() or 1)


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""
