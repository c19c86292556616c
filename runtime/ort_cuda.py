"""The ``ort-cuda`` backend: onnxruntime's CUDA execution provider (convs run in cuDNN).

Needs the ``onnxruntime-gpu`` package (it replaces ``onnxruntime``; the two must not be
installed side by side) and a CUDA GPU with a driver matching its CUDA major version.
:func:`available` says why not, where not. Graph optimizations are all on, as deployed
(Conv+BN+activation fusions apply), and ``cudnn_conv_algo_search`` is the provider's
default ``EXHAUSTIVE`` unless ``algo_search`` says otherwise (``HEURISTIC``, ``DEFAULT``).

Timing: ``session.run`` with inputs already on the GPU (I/O binding), so host-device copies
are not measured; the host clock around ``number`` runs, each of which synchronizes the
stream before returning, gives the mean per run.
"""

from __future__ import annotations

import logging
import platform
import time
from typing import TYPE_CHECKING

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import Backend, Runnable, cpu_info

if TYPE_CHECKING:
    import onnx

__all__ = ["OrtCudaBackend", "OrtCudaRunnable", "available"]

logger = logging.getLogger(__name__)

_PROVIDER = "CUDAExecutionProvider"


def available() -> tuple[bool, str]:
    """(True, "") if onnxruntime offers the CUDA provider here, else (False, reason)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if _PROVIDER not in providers:
        return False, (
            f"onnxruntime {ort.__version__} has no {_PROVIDER} (available: "
            f"{', '.join(providers)}); install onnxruntime-gpu instead of onnxruntime"
        )
    return True, ""


class OrtCudaRunnable(Runnable):
    """A CUDA-provider session with its inputs bound on the GPU."""

    def __init__(self, session, binding):
        self._session, self._binding = session, binding

    def sample(self, number: int) -> float:
        """Mean seconds per run over ``number`` runs (host clock; runs synchronize)."""
        start = time.perf_counter()
        for _ in range(number):
            self._session.run_with_iobinding(self._binding)
        return (time.perf_counter() - start) / number

    def close(self) -> None:
        """Release the session (and its GPU arena)."""
        self._session = self._binding = None


class OrtCudaBackend(Backend):
    """onnxruntime with the CUDA execution provider on one GPU.

    Args:
        device_id: the CUDA device index.
        algo_search: ``cudnn_conv_algo_search`` (``EXHAUSTIVE``, ``HEURISTIC``, ``DEFAULT``).
    """

    name = "ort-cuda"

    def __init__(self, device_id: int = 0, algo_search: str = "EXHAUSTIVE", **_: object):
        self.device_id, self.algo_search = device_id, algo_search

    def _provider(self) -> tuple[str, dict]:
        return _PROVIDER, {"device_id": self.device_id, "cudnn_conv_algo_search": self.algo_search}

    def fingerprint(self) -> dict:
        """onnxruntime version, provider options, GPU name/driver where torch can tell."""
        import onnxruntime as ort

        self._require()
        fp = {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "provider": _PROVIDER,
            "provider_options": self._provider()[1],
            "host_cpu": cpu_info()["cpu"],
            "python": platform.python_version(),
        }
        try:  # torch, where installed, names the GPU; onnxruntime's API does not
            from onnx_hwprune.runtime.cudnn import cuda_available, gpu_fingerprint

            if cuda_available()[0]:
                fp.update(gpu_fingerprint(f"cuda:{self.device_id}"))
        except ImportError:
            pass
        return fp

    def prepare(self, model: onnx.ModelProto) -> OrtCudaRunnable:
        """A session on the GPU with random inputs copied there once."""
        import onnxruntime as ort

        from onnx_hwprune.runtime.ort_cpu import random_feeds, session_options

        self._require()
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(1),
            providers=[self._provider(), "CPUExecutionProvider"],
        )
        binding = session.io_binding()
        for name, value in random_feeds(model).items():
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", self.device_id)
            )
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", self.device_id)
        return OrtCudaRunnable(session, binding)

    def _require(self) -> None:
        ok, why = available()
        if not ok:
            raise UserError(f"the ort-cuda backend cannot run here: {why}")
