"""In-context timing: the whole model under onnxruntime's per-node profiler.

A micro-benchmark times a layer alone; in the network the same layer shares caches with
its neighbours and skips the layout reorders that a lone NCHWc conv pays. This module
runs the whole model with ``SessionOptions.enable_profiling`` and attributes each kernel's
time to the layer it came from, so that the sum-of-layers estimate can be calibrated:

- onnxruntime names a fused kernel after one of the nodes it fused, or after that node's
  output tensor (``layer1.block0.bn2`` for Conv+BN+Add+Relu; ``_nchwc`` is appended by
  the layout transform), so each layer owns the node and output names along its chain of
  single-consumer BN / activation / Add nodes (and a Mul by a constant that was fused);
- per-node times are medians over runs, then rescaled so that they add up to the
  whole-model latency measured *without* the profiler (the profiler adds overhead);
- a node outside those chains that only passes a layer's channels on (an activation or
  BatchNorm on a tensor with several consumers, the SE block's Mul, pooling, Resize) is
  that layer's *follower*: its time scales with the layer's kept out-channels. On
  PP-OCRv5 such nodes (HardSwish everywhere) were 45-67% of the whole model; held
  constant, pruned variants ran 20-30% faster than predicted;
- a node after a channel concatenation carries several layers' channels: its time is
  split among them by their channel counts, and each part follows its layer;
- layout reorders, which onnxruntime names after no node, go to their neighbour in
  execution order, and each HardSwish (inlined by onnxruntime under invented names) is
  profiled under its own name;
- what is left (reshapes, the classifier's glue) is the *residual*.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
import onnxruntime as ort

from onnx_hwprune.runtime.ort_cpu import random_feeds, session_options

__all__ = ["InContextProfile", "attribute_to_layers", "profile_nodes", "profile_nodes_interleaved"]

logger = logging.getLogger(__name__)

# Suffixes onnxruntime appends to the node a fusion kept: the QDQ fusion's "_token_<n>",
# and "/<Fusion>" of newer fusions ("MatMul.12/MatMulAddFusion": PP-OCRv5 rec's head,
# 10% of its time, was counted as residual without this); and this module's own:
# "/hardswish_gate" (_named_functions) and "/reorder" (_kernel_times). The layout
# transform names a BatchNorm or a Mul it moved into NCHWc after its output tensor with
# "_bn"/"_mul" (the zoo DenseNet-121's 62 pre-activation BN and Mul on concatenations).
# The Gemm+activation fusion prefixes "fused " (VGG-16's classifier.fc1 and fc2, 9% of
# the model, were residual without this).
_FUSED_AFFIX = re.compile(r"(_token_\d+|/\w+Fusion|/hardswish_gate|/reorder|_bn|_mul)$|^fused ")
_EPILOGUE_OPS = ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "Add", "Sum", "HardSigmoid")
# Ops whose output carries their first input's channels, one for one (cost ~ elements).
_FOLLOW_OPS = frozenset(_EPILOGUE_OPS) | {
    "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "PRelu", "Mul", "Sub", "Div",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample",
    "Pad", "Identity", "Dropout", "Erf",
}  # fmt: skip


@dataclass(frozen=True)
class InContextProfile:
    """Per-layer in-context times and the residual, scaled to a measured total.

    Attributes:
        total_ms: whole-model latency measured with the timing protocol.
        layer_ms: layer node name -> its share of ``total_ms``.
        residual_ms: the share of everything else but the followers.
        follower_ms: layer node name -> the share of the nodes that only carry its
            out-channels on (module doc); they scale with its kept out-channels.
    """

    total_ms: float
    layer_ms: dict[str, float]
    residual_ms: float
    follower_ms: dict[str, float] = field(default_factory=dict)


def profile_nodes(model: onnx.ModelProto, threads: int, runs: int = 10) -> dict[str, float]:
    """Median milliseconds per run of each executed node, keyed by onnxruntime's name."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads, profile_prefix=os.path.join(tmp, "profile"))
        session = ort.InferenceSession(
            _named_functions(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        feeds = random_feeds(model)
        for _ in range(3):  # warm-up runs are profiled too; dropped below
            session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        per_run = _kernel_times(session.end_profiling())
    return {n: statistics.median(v[-runs:]) for n, v in per_run.items()}


def profile_nodes_interleaved(
    models: dict[str, onnx.ModelProto], threads: int, runs: int = 20
) -> dict[str, dict[str, float]]:
    """Per-node times of several models, run in interleaved rounds (one run of each model
    per round), so that a change of machine speed hits every model alike.

    Each node's time is the fastest of its runs, not the median: these times only
    *apportion* a whole-network latency that the timing protocol measures (medians over
    interleaved rounds), and on a shared machine a kernel is either preempted or not, so
    its per-run times are bimodal and the preempted mode is the load's, not the layer's.
    Seen here (ResNet-18, layer1 cut to 64..56 channels, load 8-11 on 2 cores): by
    medians the same conv read 2.3 ms in one configuration and 15-20 ms in the next, by
    lower quartiles still up to 51 ms; by the fastest run the pattern of a quiet machine
    came back (61-63 in-channels 1.25-1.3x dearer than 60 and 64, reorders 2-3x).
    """
    with tempfile.TemporaryDirectory() as tmp:
        sessions, feeds = {}, {}
        for i, (name, model) in enumerate(models.items()):
            opts = session_options(threads, profile_prefix=os.path.join(tmp, f"p{i}"))
            sessions[name] = ort.InferenceSession(
                _named_functions(model).SerializeToString(), opts,
                providers=["CPUExecutionProvider"],
            )  # fmt: skip
            feeds[name] = random_feeds(model)
        for _ in range(3 + runs):  # the first 3 rounds warm up; dropped below
            for name, session in sessions.items():
                session.run(None, feeds[name])
        files = {name: s.end_profiling() for name, s in sessions.items()}
        times = {name: _kernel_times(path) for name, path in files.items()}
    return {name: {n: min(v[-runs:]) for n, v in t.items()} for name, t in times.items()}


def _named_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each named HardSwish written out as the two nodes onnxruntime runs
    for it, named after it (``<name>/hardswish_gate``, ``<name>``).

    onnxruntime 1.32's CPU provider has no HardSwish kernel: it inlines the op's function
    body, ``x * HardSigmoid(x; 1/6, 1/2)``, as nodes named ``HardSigmoid_<n>`` and
    ``Mul_<n>``, which name no node of the model. So every HardSwish of PP-OCRv5 (one
    after nearly every conv) fell into the constant residual however many channels it
    carried; the pruned recognizer ran 12-17% faster than predicted, 90% of that in the
    residual. Written out here, the kernels are the same and carry the names."""
    if not any(n.op_type == "HardSwish" and n.name for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type != "HardSwish" or not node.name:
            nodes.append(node)
            continue
        gate = f"{node.output[0]}/hardswish_gate"
        nodes += [
            onnx.helper.make_node("HardSigmoid", [node.input[0]], [gate],
                                  name=f"{node.name}/hardswish_gate", alpha=1 / 6, beta=0.5),
            onnx.helper.make_node("Mul", [node.input[0], gate], list(node.output), name=node.name),
        ]  # fmt: skip
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _kernel_times(path: str) -> dict[str, list[float]]:
    """Milliseconds of every run of each node in an onnxruntime profile file, one sum per
    run (``_nchwc`` stripped: the layout transform renames the node it rewrote).

    The layout reorders onnxruntime inserts name no node of the model
    (``ReorderInput_token_<n>``): each is given to its neighbour in execution order as
    ``<node>/reorder``, an input reorder to the node after it (the conv that reads it),
    an output reorder to the node before it (the one whose output it converts). Their
    cost grows with those nodes' channels; left in the constant residual, they were
    most of what the pruned PP-OCRv5 recognizer ran faster than predicted once its
    HardSwish was attributed."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f)
    nodes = sorted((ev for ev in events if ev.get("cat") == "Node"
                    and ev.get("name", "").endswith("_kernel_time")),
                   key=lambda ev: ev.get("ts", 0))  # fmt: skip
    sums: dict[str, dict[int, float]] = {}
    first, run, prev, waiting = None, -1, None, []
    for ev in nodes:
        name, ms = ev["name"][: -len("_kernel_time")].removesuffix("_nchwc"), ev["dur"] / 1e3
        if name.startswith("ReorderInput"):
            waiting.append(ms)  # belongs to the next node
            continue
        if name.startswith("ReorderOutput"):
            name = f"{prev}/reorder" if prev else name
        else:
            if first is None:
                first = name
            run += name == first
            if waiting:
                _add(sums, f"{name}/reorder", run, sum(waiting))
                waiting = []
            prev = name
        _add(sums, name, run, ms)
    return {n: [by_run[r] for r in sorted(by_run)] for n, by_run in sums.items()}


def _add(sums: dict[str, dict[int, float]], name: str, run: int, ms: float) -> None:
    by_run = sums.setdefault(name, {})
    by_run[run] = by_run.get(run, 0.0) + ms


def attribute_to_layers(
    model: onnx.ModelProto, node_ms: dict[str, float], layers: list[str], total_ms: float
) -> InContextProfile:
    """Give each profiled node's time to the layer whose fusion chain names it.

    Args:
        model: the model that was profiled (original node names).
        node_ms: from :func:`profile_nodes`.
        layers: node names of the layers' Conv/Gemm/MatMul nodes.
        total_ms: the whole-model latency to scale to.
    """
    owner = _chain_owners(model, layers, {_strip(n) for n in node_ms})
    follows = _followers(model, owner)
    raw, followed = dict.fromkeys(layers, 0.0), dict.fromkeys(layers, 0.0)
    other = 0.0
    for name, ms in node_ms.items():
        # The QDQ fusion names the QLinearConv it made of a conv "<conv>_token_<n>"
        # (without this, an int8 model's layers had no in-context time at all).
        name = _known(name, owner, follows)
        if name in owner:
            raw[owner[name]] += ms
        elif name in follows:
            for layer, share in follows[name].items():
                followed[layer] += ms * share
            other += ms * (1.0 - sum(follows[name].values()))
        else:
            other += ms
    profiled = sum(raw.values()) + sum(followed.values()) + other
    scale = total_ms / profiled if profiled > 0 else 0.0
    missing = [n for n, v in raw.items() if v == 0.0]
    if missing:
        logger.info("no in-context time found for %d layers, e.g. %s", len(missing), missing[0])
    return InContextProfile(
        total_ms,
        {n: v * scale for n, v in raw.items()},
        other * scale,
        {n: v * scale for n, v in followed.items() if v > 0},
    )


def _known(name: str, owner: dict, follows: dict) -> str:
    """``name`` less the affixes fusions and this module add, until it names a node a
    layer owns or follows (``<node>/hardswish_gate/reorder``), else as it came."""
    return next((n for n in _shorter(name) if n in owner or n in follows), name)


def _strip(name: str) -> str:
    """``name`` less every affix: the model's node or tensor a kernel ran for."""
    *_, bare = _shorter(name)
    return bare


def _shorter(name: str) -> Iterator[str]:
    """``name``, then each form of it with one more round of affixes stripped."""
    yield name
    while (shorter := _FUSED_AFFIX.sub("", name)) != name:
        name = shorter
        yield name


def _followers(model: onnx.ModelProto, owner: dict[str, str]) -> dict[str, dict[str, float]]:
    """node name (and output name: fused kernels) -> {layer: share of the node's channels
    that are that layer's out-channels}, for the nodes outside the layers' chains that
    carry channels on (:data:`_FOLLOW_OPS`, channel concatenations). The shares of a node
    after a Concat split its time among the concatenated layers by their channel counts
    (DenseNet-121's pre-activation BatchNorm, Mul, Add and Relu on every concatenation
    were 15% of the model, held constant however many channels were kept); what is no
    layer's (a Reshape, a graph input on the way) is residual."""
    producer = {t: n for n in model.graph.node for t in n.output}
    walk = _Carriers(owner, producer, _channel_counts(model))
    follows: dict[str, dict[str, float]] = {}
    for node in model.graph.node:
        if node.name in owner or not (node.op_type in _FOLLOW_OPS or _channel_concat(node)):
            continue
        carried = walk.of(node)
        total = sum(carried.values())
        shares = {layer: c / total for layer, c in carried.items() if layer and total > 0}
        if shares:
            follows[node.name] = follows[node.output[0]] = shares
    return follows


@dataclass
class _Carriers:
    """Whose out-channels a node's output carries: {layer or "": channel count}, where ""
    is channels of no layer (memoised by output tensor, which unlike a node's name is
    never empty: DenseNet's concatenations nest 24 deep)."""

    owner: dict[str, str]
    producer: dict[str, onnx.NodeProto]
    channels: dict[str, int]
    memo: dict[str, dict[str, float]] = field(default_factory=dict)

    def of(self, node: onnx.NodeProto | None, depth: int = 0) -> dict[str, float]:
        if node is None or depth > 256:
            return {"": 1.0}
        key = node.output[0]
        if key not in self.memo:
            self.memo[key] = self._walk(node, depth)
        return self.memo[key]

    def _walk(self, node: onnx.NodeProto, depth: int) -> dict[str, float]:
        if node.name in self.owner:
            return {self.owner[node.name]: 1.0}
        if node.op_type in _FOLLOW_OPS:
            return self.of(_carried(node, self.producer), depth + 1)
        if not _channel_concat(node):
            return {"": 1.0}
        merged: dict[str, float] = {}
        for t in node.input:
            width = self.channels.get(t)
            if not width:  # an unknown width cannot be apportioned
                return {"": 1.0}
            part = self.of(self.producer.get(t), depth + 1)
            norm = width / sum(part.values())
            for layer, c in part.items():
                merged[layer] = merged.get(layer, 0.0) + c * norm
        return merged


def _channel_concat(node: onnx.NodeProto) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    return node.op_type == "Concat" and axis in (1, -3)


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> its dimension 1 where shape inference knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes, concatenations stay residual
        return {}
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    counts = {}
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            counts[info.name] = dims[1].dim_value
    return counts


def _carried(node: onnx.NodeProto, producer: dict) -> onnx.NodeProto | None:
    """The node that made the tensor ``node`` carries on: its first input a node
    produced (``scale * x`` names the constant first: PP-OCRv5's affine blocks)."""
    made = (producer[t] for t in node.input if t in producer)
    return next((n for n in made if n.op_type != "Constant"), None)


def _chain_owners(
    model: onnx.ModelProto, layers: list[str], executed: set[str] = frozenset()
) -> dict[str, str]:
    """node name -> layer name, walking each layer's single-consumer epilogue chain
    (``executed``: the names the profile ran kernels under, see :func:`_fuses`)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    constant = _constant_tensors(model)
    owner = {}
    for layer in layers:
        node = by_name.get(layer)
        while node is not None:
            # Fused kernels are named after a fused node or its output tensor (NCHWc).
            owner.setdefault(node.name, layer)
            owner.setdefault(node.output[0], layer)
            users = consumers.get(node.output[0], [])
            node = users[0] if len(users) == 1 and _fuses(users[0], constant, executed) else None
    return owner


def _fuses(node: onnx.NodeProto, constant: set[str], executed: set[str]) -> bool:
    """``node`` may be folded into the conv before it: an epilogue op, or a ``Mul`` by a
    constant that ran no kernel of its own (onnxruntime's Conv-Mul fusion folded it into
    the weights). The zoo's DenseNet-121 writes each BatchNorm as BN, Mul, Add; the
    kernel fused from Conv+BN+Mul+Add+Relu is named after the Relu's output, which the
    chain did not reach with the Mul left out: 59 of its 121 layers had no in-context
    time, their fused kernels counted as followers on top of the layers' isolated times,
    and the residual came out at -5.7 ms of 34.8 (pruned variants predicted 11-17% fast).
    A constant ``Mul`` that runs by itself (PP-OCRv5's affine blocks) stays a follower."""
    if node.op_type in _EPILOGUE_OPS:
        return True
    fused = node.name not in executed and node.output[0] not in executed
    return node.op_type == "Mul" and fused and any(t in constant for t in node.input)


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    return names | {t for n in model.graph.node if n.op_type == "Constant" for t in n.output}
