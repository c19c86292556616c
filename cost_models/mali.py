"""``--target mali`` without a board: an analytic staircase model of a named Mali GPU.

This is an **estimate**, not a measurement: every number below is a named assumption
with its source, and every prediction carries provenance ``"estimated"``. As soon as the
profile database holds measurements of the model's layers from a real board (``onnx-hwprune
profile IN --target mali --rpc-tracker ... --rpc-key ...``), :func:`mali_cost_model`
returns the measured model instead.

What is modelled: TVM 0.27 compiles for Mali through its generic OpenCL target
(``{"kind": "opencl", "device": "mali"}``), scheduled by dlight's default GPU rules. We
read the kernels it generates (``onnx-hwprune --emit tvm --target mali`` embeds their
OpenCL source) and model their tiling:

- **Dense conv / batched matmul** (dlight ``gpu.Matmul``, default ``Config`` since Mali is
  neither Adreno nor Android-hosted): the conv is an implicit GEMM ``M = H_out*W_out``
  (spatial), ``N = out_channels``, ``K = in_channels/group * kh*kw``. Work-groups of 8x8
  threads, each thread a 4x4 micro-tile, so one work-group computes a 32x32 output tile;
  ``M`` and ``N`` are padded to 32 and ``K`` to 8 (``pad_einsum``). Latency is then a
  staircase in out-channels with a step every 32 channels, plus wave quantization of the
  ``ceil(M/32)*ceil(N/32)`` work-groups over the shader cores; along in-channels a 1x1
  conv steps every 8 channels and a 3x3 conv is almost linear (K grows by 9 per channel).
- **Depthwise / grouped conv** (dlight ``gpu.Reduction``: one output element per
  work-group row, a cross-thread tree reduction over the taps): latency follows the
  number of output elements in waves; no channel tile, so no stairs beyond the waves.
- **Gemm / MatMul with one row** (dlight ``gpu.GEMV``): memory-bound on the weights.

A layer's latency is ``launch + max(compute, memory)``; the compute time counts the
padded tiles on the busiest core at an assumed fraction of its peak FMA throughput
(a staircase in ``ceil(tiles / cores)``), the memory time streams inputs, weights and
outputs once at an assumed fraction of DRAM bandwidth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from onnx_hwprune.cost_models.signature import Layer, LayerSignature, layer_shapes
from onnx_hwprune.cost_models.staircase import Estimate

__all__ = [
    "GPUS",
    "MALI_G72_MP12",
    "MaliCostModel",
    "MaliGpu",
    "MaliLayer",
    "analytic_from_layers",
    "layer_ms",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaliGpu:
    """Public specifications of one Mali GPU configuration (see :data:`MALI_G72_MP12`)."""

    name: str
    shader_cores: int
    fma_lanes_per_core: int
    clock_hz: float
    dram_bytes_per_s: float
    max_threads_per_core: int


MALI_G72_MP12 = MaliGpu(
    name="Mali-G72 MP12 (HiKey 970, Kirin 970)",
    # MP12 = 12 shader cores (Arm Mali-G72 product brief; HiSilicon Kirin 970 spec).
    shader_cores=12,
    # Bifrost G72 core: 3 execution engines, each 4-wide (quad) FP32 FMA per clock
    # (Arm Mali-G72 product brief: "3 execution engines"; Bifrost quad-based warps).
    fma_lanes_per_core=12,
    # GPU clock of the Kirin 970 on HiKey 970: up to 767 MHz (96Boards HiKey 970 docs).
    clock_hz=767e6,
    # LPDDR4X-1866, 4 channels x 16 bit: 1866e6 * 2 (DDR) * 8 bytes = 29.9 GB/s (Kirin 970).
    dram_bytes_per_s=29.9e9,
    # Bifrost: up to 384 concurrent threads per core (Arm Bifrost architecture overview).
    max_threads_per_core=384,
)
GPUS: dict[str, MaliGpu] = {"mali-g72-mp12": MALI_G72_MP12}

# -- TVM 0.27 dlight default schedules for {"kind": "opencl", "device": "mali"} ----------
TILE_M = 32  # gpu.Matmul Config: block_size_x 8 * micro_size_x 4 (spatial rows per group)
TILE_N = 32  # block_size_y 8 * micro_size_y 4 (output channels per work-group)
TILE_K = 8  # micro_size_k: the reduction is padded to a multiple of 8
MATMUL_THREADS = 64  # 8 x 8 threads per work-group
REDUCTION_THREADS = 64  # gpu.Reduction: threads sharing one output's tree reduction
# -- efficiencies and overheads: assumptions, to be replaced by board measurements -------
# Fraction of peak FMA throughput that TVM's untuned generic tiles reach on Bifrost:
# __local memory on Mali is ordinary cached memory, so the shared-memory tiling buys no
# bandwidth, and 16 accumulators per thread limit occupancy. Assumed, not measured.
COMPUTE_EFFICIENCY = 0.3
MEMORY_EFFICIENCY = 0.6  # fraction of DRAM peak reached by streaming kernels (assumed)
LAUNCH_S = 25e-6  # OpenCL enqueue + dispatch per kernel on a Mali driver (assumed)
REDUCTION_STEP_CYCLES = 20  # one barrier + add of the tree reduction (assumed)
# Ops TVM fuses into the preceding conv's kernel (no launch of their own).
_FUSED = {"Relu", "Clip", "BatchNormalization", "Add", "LeakyRelu", "Sigmoid", "HardSigmoid"}


def _out_hw(sig: LayerSignature) -> int:
    """Output spatial elements of a conv (1 for Gemm; leading dims for MatMul)."""
    if sig.op in ("Gemm", "MatMul"):
        return math.prod(sig.input_hw) if sig.input_hw else 1
    size = 1
    for i, n in enumerate(sig.input_hw):
        k = (sig.kernel[i] - 1) * sig.dilations[i] + 1
        pads = sig.pads[i] + sig.pads[i + len(sig.input_hw)]
        if sig.op == "ConvTranspose":
            size *= (n - 1) * sig.strides[i] + k - pads
        else:
            size *= (n + pads - k) // sig.strides[i] + 1
    return size


def _waves(work_groups: int, threads: int, gpu: MaliGpu) -> int:
    """Rounds of latency-bound work-groups: a core holds ``max_threads_per_core //
    threads`` of them at once."""
    per_core = max(1, gpu.max_threads_per_core // threads)
    return math.ceil(work_groups / (gpu.shader_cores * per_core))


def _matmul_s(m: int, n: int, k: int, batch: int, gpu: MaliGpu) -> float:
    """gpu.Matmul: padded 32x32 tiles, K padded to 8; the busiest core sets the time."""
    groups = batch * math.ceil(m / TILE_M) * math.ceil(n / TILE_N)
    fma_per_group = TILE_M * TILE_N * math.ceil(k / TILE_K) * TILE_K
    core_rate = gpu.fma_lanes_per_core * gpu.clock_hz * COMPUTE_EFFICIENCY
    # Work-groups are spread evenly over the cores; resident groups share a core's FMA
    # lanes, so a core's time is its group count times one group's work.
    return math.ceil(groups / gpu.shader_cores) * fma_per_group / core_rate


def _reduction_s(outputs: int, taps: int, gpu: MaliGpu) -> float:
    """gpu.Reduction: one output per work-group row, tree reduction over ``taps``."""
    steps = math.ceil(taps / REDUCTION_THREADS) + math.ceil(math.log2(REDUCTION_THREADS))
    return _waves(outputs, REDUCTION_THREADS, gpu) * steps * REDUCTION_STEP_CYCLES / gpu.clock_hz


def layer_ms(sig: LayerSignature, in_ch: int, out_ch: int, gpu: MaliGpu = MALI_G72_MP12) -> float:
    """Estimated latency (ms) of one layer at (``in_ch``, ``out_ch``) on ``gpu``."""
    xshape, wshape, group = layer_shapes(sig, in_ch, out_ch)
    hw, taps = _out_hw(sig), math.prod(sig.kernel) if sig.kernel else 1
    n_out = wshape[0] if sig.op in ("Conv", "Gemm") else wshape[-1] * group
    if sig.op in ("Gemm", "MatMul") and hw * sig.batch == 1:
        compute = 0.0  # gpu.GEMV: bound by reading the weights (memory term below)
    elif group > 1:
        compute = _reduction_s(sig.batch * n_out * hw, taps * in_ch // group, gpu)
    else:
        compute = _matmul_s(hw, n_out, in_ch * taps, sig.batch, gpu)
    elements = math.prod(xshape) + math.prod(wshape) + sig.batch * n_out * hw
    memory = elements * 4 / (gpu.dram_bytes_per_s * MEMORY_EFFICIENCY)
    return (LAUNCH_S + max(compute, memory)) * 1e3


@dataclass(frozen=True)
class MaliLayer:
    """One prunable layer: node, signature, unpruned channel counts."""

    node: str
    signature: LayerSignature
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class MaliCostModel:
    """Analytic network cost model with the interface of ``NetworkCostModel``.

    Attributes:
        target: ``"mali"``; gpu: the modelled GPU; layers: prunable layers in graph order;
        residual_ms: one launch per unfused non-layer op (pooling, adds, reshapes).
    """

    target: str
    gpu: MaliGpu
    layers: tuple[MaliLayer, ...]
    residual_ms: float
    fingerprint_hash: str = "analytic"
    measured_full_ms: float | None = None
    provenance: str = "estimated"

    @property
    def source(self) -> str:
        """One line for reports."""
        return f"estimate: analytic model of {self.gpu.name} (cost_models/mali.py), not measured"

    def layer(self, node: str) -> MaliLayer:
        """The layer called ``node`` (KeyError names it)."""
        for entry in self.layers:
            if entry.node == node:
                return entry
        raise KeyError(f"no prunable layer named {node!r}")

    def layer_latency(self, node: str, in_ch: int, out_ch: int) -> Estimate:
        """Estimated latency of ``node`` at (in, out) channels; provenance "estimated"."""
        return Estimate(layer_ms(self.layer(node).signature, in_ch, out_ch, self.gpu), "estimated")

    def stair_edges(self, node: str, axis: str) -> list[tuple[int, float]]:
        """Largest count at each latency level along ``axis`` (other axis full)."""
        entry = self.layer(node)
        full = entry.out_channels if axis == "out" else entry.in_channels
        edges: list[tuple[int, float]] = []
        for count in range(full, 0, -1):
            i, o = (entry.in_channels, count) if axis == "out" else (count, entry.out_channels)
            ms = self.layer_latency(node, i, o).ms
            if not edges or ms < edges[-1][1] * (1 - 1e-9):
                edges.append((count, ms))
        return edges

    def predict(self, channels: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Network latency in ms; layers missing from ``channels`` keep full counts."""
        return self.predict_detail(channels)["total_ms"]

    def predict_detail(self, channels: Mapping[str, tuple[int, int]] | None = None) -> dict:
        """Total, per-layer estimates and a count of provenances (all "estimated")."""
        channels = channels or {}
        per_layer = {}
        for e in self.layers:
            counts = channels.get(e.node, (e.in_channels, e.out_channels))
            per_layer[e.node] = self.layer_latency(e.node, *counts)
        total = sum(e.ms for e in per_layer.values()) + self.residual_ms
        provenance = {"measured": 0, "interpolated": 0, "estimated": len(per_layer)}
        return {"total_ms": total, "layers": per_layer, "provenance": provenance}

    def to_dict(self) -> dict:
        """JSON-able summary (the assumptions are in this module)."""
        return {
            "target": self.target,
            "source": self.source,
            "gpu": self.gpu.__dict__,
            "residual_ms": self.residual_ms,
            "layers": [{"node": e.node, "in": e.in_channels, "out": e.out_channels,
                        "signature": e.signature.to_dict()} for e in self.layers],
        }  # fmt: skip


def analytic_from_layers(
    layers: list[Layer], other_ops: int, gpu: str | MaliGpu = "mali-g72-mp12"
) -> MaliCostModel:
    """The analytic model of a network given its layers and its count of other kernels
    (each pays one launch). ``runtime/mali_models.py`` builds these from ONNX models."""
    from onnx_hwprune.errors import UserError

    spec = gpu if isinstance(gpu, MaliGpu) else GPUS.get(gpu)
    if spec is None:
        raise UserError(f"unknown Mali GPU {gpu!r}; known: {', '.join(GPUS)}")
    entries = tuple(MaliLayer(x.node, x.signature, x.in_channels, x.out_channels) for x in layers)
    return MaliCostModel("mali", spec, entries, other_ops * LAUNCH_S * 1e3)
