"""Small models, one per architecture family, for tests of the channel analysis and pruning.

Every builder takes keyword arguments ``seed=0, batch=1, opset=17`` and returns an
``onnx.ModelProto`` (IR 10) with input ``input`` (N x 3 x 32 x 32) and output ``output``
(N x 10 logits, except ``unet``: N x 3 x 32 x 32). Each builder's docstring, also stored
as the graph's ``doc_string``, states the model's channel groups in plain words: the
channel spaces that must be pruned together. "Frozen" means the group touches the graph
output. Names in the docstrings are node names (``stage2.block0.conv1``).

With a symbolic batch (``batch="N"``) the constant Reshape targets hold 0 for the batch
(copy the input's), so the model runs with any batch size.

Example::

    from onnx_hwprune.testing.families import FAMILIES

    model = FAMILIES["resnet_basic"](seed=0, batch="N")
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from ._common import CLASSES, INPUT_SHAPE
from ._families_cnn import resnet_basic, resnet_bottleneck, resnext, vgg, vgg_reshape
from ._families_misc import densenet, inception, per_channel_affine, split, unet
from ._families_mobile import mobilenetv2, se, shufflenet, squeezenet

__all__ = ["CLASSES", "FAMILIES", "INPUT_SHAPE", "build_family", "output_shape"]

#: Family name -> builder taking ``seed=0, batch=1, opset=17`` keyword arguments.
FAMILIES: dict[str, Callable[..., onnx.ModelProto]] = {
    "vgg": vgg,
    "vgg_reshape": vgg_reshape,
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "resnext": resnext,
    "mobilenetv2": mobilenetv2,
    "se": se,
    "shufflenet": shufflenet,
    "squeezenet": squeezenet,
    "densenet": densenet,
    "inception": inception,
    "unet": unet,
    "split": split,
    "per_channel_affine": per_channel_affine,
}


def build_family(
    name: str, seed: int = 0, batch: int | str = 1, opset: int = 17
) -> onnx.ModelProto:
    """Builds the family ``name``; raises ``KeyError`` listing the known names."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](seed=seed, batch=batch, opset=opset)


def output_shape(name: str, batch: int = 1) -> tuple[int, ...]:
    """Shape of the family's output for a concrete batch size."""
    if name == "unet":
        return (batch, 3, INPUT_SHAPE[1], INPUT_SHAPE[2])
    return (batch, CLASSES)
