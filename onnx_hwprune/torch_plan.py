"""Apply a pruning plan to the PyTorch model an ONNX file was exported from, to fine-tune it.

Exporters keep parameter names as initializer names (``stem.0.weight``,
``block1.bn1.running_mean``...), so every constant member of a pruned channel group names
a parameter or buffer of the module. :func:`apply_plan_to_torch` slices each of them along
the member's axis to the kept positions (the same positions ``remove_channels`` keeps in
the ONNX model), then updates the layer attributes PyTorch reads: ``in_channels``,
``out_channels``, ``groups`` (depthwise convs) of ``Conv*d``, ``num_features`` of
``BatchNorm*d``, ``in_features``/``out_features`` of ``Linear``.

Preconditions: the ONNX was exported without folding BatchNorm into Conv (folded weights
get generated names such as ``onnx::Conv_123``, which name no parameter: a
:class:`UserError` lists them), and the plan was made on that ONNX model.

torch is a development extra, not a runtime dependency: it is imported inside the
functions only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.passes.transform.remove_channels import kept_positions

if TYPE_CHECKING:
    import torch

__all__ = ["apply_plan_to_torch", "load_onnx_weights"]

logger = logging.getLogger(__name__)


def _state(module: torch.nn.Module) -> dict[str, Any]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def load_onnx_weights(module: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> list[str]:
    """Copy ONNX initializer values into the module's same-named parameters/buffers.

    Returns the names copied. Shapes must match (load before applying a plan).
    """
    import torch

    state = _state(module)
    copied = []
    with torch.no_grad():
        for name, value in weights.items():
            if name in state:
                state[name].copy_(torch.from_numpy(np.array(value)))  # writable copy
                copied.append(name)
    return copied


def apply_plan_to_torch(
    module: torch.nn.Module, plan: Plan | Mapping[str, Any], groups: ChannelGroups
) -> torch.nn.Module:
    """Slice ``module`` in place to the architecture ``plan`` gives; returns ``module``.

    Args:
        module: the PyTorch model the ONNX was exported from (eval or train mode).
        plan: a :class:`Plan` or its JSON form.
        groups: the channel groups of the ONNX model the plan was made on.

    Raises:
        UserError: a constant to slice names no parameter or buffer of ``module``.
    """
    import torch

    plan = plan if isinstance(plan, Plan) else Plan.from_json(dict(plan))
    plan.validate(groups)
    kept = kept_positions(groups, plan)
    state = _state(module)
    missing = sorted({name for name, _ in kept if name in _constant_names(groups)} - set(state))
    if missing:
        raise UserError(f"the module has no parameter/buffer named {', '.join(missing[:5])}")
    with torch.no_grad():
        for (name, axis), positions in sorted(kept.items()):
            if name in state:
                _slice_tensor(state[name], axis, positions)
    _update_layer_attributes(module)
    return module


def _constant_names(groups: ChannelGroups) -> set[str]:
    return {m.tensor for g in groups for m in g.members if m.is_param}


def _slice_tensor(tensor: Any, axis: int, positions: np.ndarray) -> None:
    """Replace ``tensor.data`` by its slice (keeps Parameter identity for optimisers)."""
    import torch

    index = torch.as_tensor(positions, dtype=torch.long, device=tensor.device)
    tensor.data = tensor.data.index_select(axis, index).contiguous()


def _update_layer_attributes(module: torch.nn.Module) -> None:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            _update_conv(sub)
        elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.num_features = sub.weight.shape[0] if sub.weight is not None else sub.num_features
            if sub.running_mean is not None:
                sub.num_features = sub.running_mean.shape[0]
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape


def _update_conv(conv: Any) -> None:
    """Conv weights are ``[out, in/groups, *k]`` (transposed: ``[in, out/groups, *k]``);
    a depthwise conv stays depthwise."""
    if conv.transposed:
        in_ch, out_per_group = conv.weight.shape[:2]
        conv.in_channels, conv.out_channels = in_ch, out_per_group * conv.groups
        return
    out_ch, in_per_group = conv.weight.shape[:2]
    was_depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if was_depthwise and in_per_group == 1:
        multiplier = conv.out_channels // conv.groups
        conv.groups = out_ch // multiplier
    conv.out_channels = out_ch
    conv.in_channels = in_per_group * conv.groups
