"""The ``tvm-llvm`` backend: TVM (Relax ONNX frontend) compiled for this host's CPU.

By default the model goes through TVM's default CPU pipeline (the "zero" Relax pipeline,
legalized TIR without tuned schedules, LLVM code generation for this host's CPU, e.g.
``-mcpu=znver5``): that is TVM's out-of-the-box CPU performance, far from tuned. With
``tune_trials > 0`` the conv/matmul kernels are tuned with MetaSchedule first, with that
many trials in total (slow: minutes per layer).

TVM is imported inside functions only: its import costs seconds, and nothing but TVM
features may pay it; the package works where TVM is absent.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import TYPE_CHECKING

from onnx_hwprune.runtime.backend import Backend, Runnable, cpu_info, physical_cores

if TYPE_CHECKING:
    import onnx

__all__ = ["TvmLlvmBackend", "TvmRunnable"]

logger = logging.getLogger(__name__)


class TvmRunnable(Runnable):
    """A compiled Relax VM with random inputs bound; timed by TVM's own evaluator."""

    def __init__(self, vm, inputs: list):
        self._vm = vm
        self._inputs = inputs
        self._vm.set_input("main", *inputs)

    def sample(self, number: int) -> float:
        """Mean seconds per run over ``number`` runs (TVM's ``time_evaluator``)."""
        import tvm

        timer = self._vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=1)
        return float(timer("main").mean)


class TvmLlvmBackend(Backend):
    """TVM Relax on the host CPU.

    Args:
        threads: TVM worker threads (``TVM_NUM_THREADS`` is set before the runtime
            starts its pool); ``None`` means physical cores.
        tune_trials: MetaSchedule trials per model (0: default schedules).
        mcpu: LLVM CPU name; ``"native"`` targets this host.
    """

    name = "tvm-llvm"

    def __init__(self, threads: int | None = None, tune_trials: int = 0, mcpu: str = "native"):
        self.threads = threads or physical_cores()
        self.tune_trials = tune_trials
        self.mcpu = mcpu

    def target_dict(self) -> dict:
        """The TVM target as a JSON dict (TVM 0.27 style)."""
        return {"kind": "llvm", "mcpu": self._resolved_mcpu(), "num-cores": self.threads}

    def fingerprint(self) -> dict:
        """CPU, ISA, TVM version, target, threads, schedule mode."""
        import tvm

        return {
            "backend": self.name,
            **cpu_info(),
            "tvm": tvm.__version__,
            "target": self.target_dict(),
            "threads": self.threads,
            "schedules": f"metaschedule-{self.tune_trials}" if self.tune_trials else "default",
        }

    def prepare(self, model: onnx.ModelProto) -> TvmRunnable:
        """Import with the Relax ONNX frontend, compile, bind random inputs."""
        import numpy as np
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        from onnx_hwprune.runtime.ort_cpu import random_feeds

        # The runtime thread pool reads this once, when it first starts.
        os.environ.setdefault("TVM_NUM_THREADS", str(self.threads))
        with warnings.catch_warnings():
            # Our one-layer models leave the output shape to inference; TVM warns about it.
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(model, keep_params_in_input=False)
        target = tvm.target.Target(self.target_dict())
        mod = self._schedule(mod, target)
        exe = tvm.compile(mod, target=target)
        vm = relax.VirtualMachine(exe, tvm.cpu())
        feeds = random_feeds(model)
        inputs = [tvm.runtime.tensor(np.ascontiguousarray(v), tvm.cpu()) for v in feeds.values()]
        return TvmRunnable(vm, inputs)

    def _schedule(self, mod, target):
        from tvm import relax

        if self.tune_trials > 0:
            with tempfile.TemporaryDirectory() as work_dir:
                pipeline = relax.pipeline.static_shape_tuning_pipeline(
                    total_trials=self.tune_trials, target=target, work_dir=work_dir
                )
                return pipeline(mod)
        # tvm.compile's default CPU pipeline legalizes ops to unscheduled TIR. dlight's CPU
        # GEMV rule is not applied: it asserts on some of MobileNetV2's kernels in 0.27.
        return relax.get_pipeline("zero")(mod)

    def _resolved_mcpu(self) -> str:
        if self.mcpu != "native":
            return self.mcpu
        import tvm

        # LLVM's name for this host (e.g. znver5), so fingerprints say what was targeted.
        get = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName", allow_missing=True)
        return str(get()) if get is not None else "native"
