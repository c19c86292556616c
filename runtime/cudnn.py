"""The ``cudnn`` backend: each model as a PyTorch module on a CUDA GPU (convs run in cuDNN).

Two deployment settings, two targets: ``cudnn`` leaves ``torch.backends.cudnn.benchmark``
off (cuDNN's heuristics pick the algorithm, as most deployments run) and
``cudnn-benchmark`` turns it on (each new shape is autotuned on its first run, which the
warm-up absorbs). The flag is process-wide in PyTorch, so a runnable sets it around its
own runs and restores it.

Models are converted by :mod:`.torch_convert` (BatchNorm folded into the Conv, as
deployment runtimes do). By default one forward pass is captured as a CUDA graph and
replayed: the staircase lives in the kernels, and Python's per-op launch cost (~10 us)
would otherwise hide it for the small late layers at batch 1. ``cuda_graph=False`` times
eager PyTorch instead (launch overhead included). Timing is by CUDA events around
``number`` back-to-back runs, after the protocol's warm-up (``runtime/timing.py``).

torch is imported inside functions only: the package works where torch is absent, and a
missing torch or GPU is a :class:`~onnx_hwprune.errors.UserError` with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
from typing import TYPE_CHECKING

from onnx_hwprune.errors import UserError
from onnx_hwprune.runtime.backend import Backend, Runnable, cpu_info

if TYPE_CHECKING:
    import onnx

__all__ = ["CudnnBackend", "TorchRunnable", "cuda_available", "gpu_fingerprint"]

logger = logging.getLogger(__name__)

_REPLAY_S = 2e-4  # one graph replay should last this long at least (see _size_graph)
_MAX_REPEAT = 64


def cuda_available() -> tuple[bool, str]:
    """(True, "") if torch is installed and sees a CUDA GPU, else (False, reason)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "python package 'torch' is not installed (pip install torch)"
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build (no CUDA)"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU (no device or no driver)"
    return True, ""


def _require_cuda() -> None:
    ok, why = cuda_available()
    if not ok:
        raise UserError(f"the cudnn backend needs a CUDA GPU: {why}")


def gpu_fingerprint(device: str = "cuda") -> dict:
    """GPU name, compute capability, memory, driver, CUDA runtime, cuDNN and torch."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "driver": _driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()),
        "torch": torch.__version__,
    }


def _driver_version() -> str:
    """The NVIDIA driver version (from the kernel module, else NVML), or ``"unknown"``."""
    with contextlib.suppress(OSError):
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            line = f.readline()  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ..."
        for token in line.split():
            if "." in token and token.replace(".", "").isdigit():
                return token
    with contextlib.suppress(Exception):  # nvidia-ml-py, where installed
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    return "unknown"


class TorchRunnable(Runnable):
    """A converted module on the GPU with random inputs bound; times itself with CUDA events.

    Args:
        module: the converted module, already on ``device``.
        inputs: its input tensors on ``device``.
        benchmark: the ``cudnn.benchmark`` value to run under.
        cuda_graph: capture the forward pass as a CUDA graph (as many passes per graph as
            make a replay last ~0.2 ms) and replay it.
    """

    def __init__(self, module, inputs: list, *, benchmark: bool, cuda_graph: bool = True):
        self._module, self._inputs, self._benchmark = module, inputs, benchmark
        self._graph, self._repeat = None, 1
        with self._flags():
            self._forward()  # first run: cuDNN picks (or, benchmark on, autotunes) here
            if cuda_graph:
                self._graph = self._capture()
                self._size_graph()

    @contextlib.contextmanager
    def _flags(self):
        import torch

        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self._benchmark
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _forward(self):
        return self._module(*self._inputs)

    def _capture(self, repeat: int = 1):
        import torch

        # CUDA graphs must be captured after warm-up runs on a side stream (PyTorch docs).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                self._outputs = self._forward()  # keeps the graph's output memory alive
        return graph

    def _size_graph(self) -> None:
        """Re-capture with enough forward passes per replay to last ~``_REPLAY_S``.

        A replay costs a few microseconds of host time; a layer that runs faster than
        that on the GPU would otherwise be timed at the host's launch rate.
        """
        self._repeat = 1
        per_run = self._timed(20)
        if per_run < _REPLAY_S:
            self._repeat = min(_MAX_REPEAT, math.ceil(_REPLAY_S / max(per_run, 1e-7)))
            self._graph = None  # free the first graph's pool before capturing the next
            self._graph = self._capture(self._repeat)

    def sample(self, number: int) -> float:
        """Mean seconds per run over at least ``number`` back-to-back runs (CUDA events)."""
        with self._flags():
            return self._timed(number)

    def _timed(self, number: int) -> float:
        import torch

        replays = max(1, math.ceil(number / self._repeat)) if self._graph is not None else number
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._forward()
        end.record()
        end.synchronize()
        runs = replays * (self._repeat if self._graph is not None else 1)
        return start.elapsed_time(end) / 1e3 / runs

    def close(self) -> None:
        """Drop the module, inputs and graph so their GPU memory can be reused."""
        self._module = self._inputs = self._graph = self._outputs = None


class CudnnBackend(Backend):
    """PyTorch (cuDNN convolutions) on one CUDA GPU, float32.

    Args:
        device: the torch device, e.g. ``"cuda"`` or ``"cuda:1"``.
        benchmark: ``torch.backends.cudnn.benchmark`` during runs (autotuned algorithms).
        batch: value for symbolic batch dimensions of the models prepared (static batch
            sizes, as in layer signatures, are kept as they are, so batch is not part of
            the fingerprint: it is in every layer signature).
        cuda_graph: replay captured CUDA graphs (kernel time) rather than eager calls.
    """

    name = "cudnn"

    def __init__(
        self,
        device: str = "cuda",
        benchmark: bool = False,
        batch: int | None = None,
        cuda_graph: bool = True,
        **_: object,
    ):
        self.device, self.benchmark, self.batch = device, benchmark, batch or 1
        self.cuda_graph = cuda_graph

    def fingerprint(self) -> dict:
        """GPU, driver, CUDA, cuDNN, torch, the cuDNN flags and the timing mode."""
        _require_cuda()
        import torch

        return {
            "backend": self.name,
            **gpu_fingerprint(self.device),
            "cudnn_benchmark": self.benchmark,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cuda_graph": self.cuda_graph,
            "host_cpu": cpu_info()["cpu"],
            "python": platform.python_version(),
        }

    def prepare(self, model: onnx.ModelProto) -> TorchRunnable:
        """Convert ``model``, move it to the GPU, bind random inputs, warm up."""
        _require_cuda()
        import torch

        from onnx_hwprune.runtime.ort_cpu import random_feeds
        from onnx_hwprune.runtime.torch_convert import OnnxModule

        module = OnnxModule(model).eval().to(self.device)
        feeds = random_feeds(_with_batch(model, self.batch))
        inputs = [torch.from_numpy(feeds[n]).to(self.device) for n in module.input_names]
        return TorchRunnable(module, inputs, benchmark=self.benchmark, cuda_graph=self.cuda_graph)


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` with symbolic leading input dimensions set to ``batch`` (a copy)."""
    if batch == 1:
        return model  # random_feeds already uses 1 for symbolic dimensions
    model = model.__class__.FromString(model.SerializeToString())
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].dim_value <= 0:
            dims[0].dim_value = batch
    return model
