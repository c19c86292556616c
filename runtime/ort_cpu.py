"""The ``cpu`` backend: onnxruntime's CPU execution provider, as deployed.

All graph optimizations are on (``ORT_ENABLE_ALL``), so MLAS's NCHWc layout transform
applies: on AVX-512 it blocks channels by 16 (by 8 on AVX2), which is what makes channel
counts that are multiples of 8/16 special and in-channel counts that are not multiples of
4 fall off a cliff. The intra-op thread count defaults to the number of physical cores.

At one intra-op thread onnxruntime computes on the calling thread, so a sample is read
from that thread's CPU clock (:func:`sample_clock`): time the OS gave to other processes
is not counted. On this project's shared 2-core machine a pruned PP-OCRv5 classifier
measured 1.05 ms by the wall clock and 1.05 ms by the thread clock on a quiet core, and
1.91 ms against 1.02 ms while a busy loop shared its core. Load that slows the core
itself (caches, memory bandwidth, clock frequency) still counts; the timing protocol's
interleaving and paired ratios handle that.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from onnx_hwprune.runtime.backend import Backend, Runnable, cpu_info, physical_cores
from onnx_hwprune.runtime.timing import clock_sampler

__all__ = ["OrtCpuBackend", "OrtRunnable", "random_feeds", "sample_clock", "session_options"]

logger = logging.getLogger(__name__)

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8,
}


def session_options(threads: int, *, profile_prefix: str | None = None) -> ort.SessionOptions:
    """Session options as deployed: all optimizations, ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input that is not an initializer (static shapes)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        ttype = inp.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in ttype.shape.dim]
        dtype = _NP_TYPES.get(ttype.elem_type, np.float32)
        if dtype in (np.uint8, np.int8):  # quantized activations: every code, no casts
            info = np.iinfo(dtype)
            feeds[inp.name] = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def sample_clock(threads: int) -> Callable[[], float]:
    """The clock samples are read with: the calling thread's CPU time at one intra-op
    thread where the OS keeps it finely (Linux, macOS; Windows counts it in 15.6 ms
    ticks), the wall clock otherwise (other threads' work would be missing)."""
    fine = sys.platform.startswith(("linux", "darwin"))
    return time.thread_time if threads == 1 and fine else time.perf_counter


class OrtRunnable(Runnable):
    """An onnxruntime session with its random inputs bound, timed with ``clock``."""

    def __init__(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray],
                 clock: Callable[[], float] = time.perf_counter):  # fmt: skip
        self._session = session
        self._feeds = feeds
        self._clock = clock

    def run(self) -> None:
        """One inference."""
        self._session.run(None, self._feeds)

    def sample(self, number: int) -> float:
        """Mean seconds per run over ``number`` runs, read from the runnable's clock."""
        return clock_sampler(self.run, self._clock)(number)


class OrtCpuBackend(Backend):
    """onnxruntime CPU provider with all graph optimizations.

    Args:
        threads: intra-op threads; ``None`` means the host's physical cores.
    """

    name = "ort-cpu"

    def __init__(self, threads: int | None = None):
        self.threads = threads or physical_cores()

    def fingerprint(self) -> dict:
        """CPU, ISA, onnxruntime version, provider and threads."""
        return {
            "backend": self.name,
            **cpu_info(),
            "onnxruntime": ort.__version__,
            "provider": "CPUExecutionProvider",
            "threads": self.threads,
            "python": platform.python_version(),
        }

    def prepare(self, model: onnx.ModelProto) -> OrtRunnable:
        """An :class:`OrtRunnable` for ``model``."""
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(self.threads),
            providers=["CPUExecutionProvider"],
        )
        return OrtRunnable(session, random_feeds(model), sample_clock(self.threads))

    def node_times(self, model: onnx.ModelProto) -> dict[str, float]:
        """In-context per-node medians (ms) from onnxruntime's profiler."""
        from onnx_hwprune.runtime.node_profile import profile_nodes

        return profile_nodes(model, self.threads)

    def node_times_many(self, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
        """:meth:`node_times` of several models, timed in interleaved rounds."""
        from onnx_hwprune.runtime.node_profile import profile_nodes_interleaved

        return profile_nodes_interleaved(models, self.threads)
