"""Family builders: plain CNNs (VGG) and residual networks (ResNet, ResNeXt).

See ``families.py`` for the conventions; each docstring lists the model's channel groups.
"""

from __future__ import annotations

import onnx

from ._common import CLASSES, head, start
from ._graph import GraphBuilder

#: Gain of the last BN of a residual branch: keeps the residual stream's scale bounded.
RESIDUAL_GAIN = 0.3

__all__ = [
    "RESIDUAL_GAIN",
    "basic_block",
    "bottleneck",
    "resnet_basic",
    "resnet_bottleneck",
    "resnext",
    "vgg",
    "vgg_reshape",
]


def vgg(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """VGG-style conv-BN-ReLU chain with max pools, then Flatten -> Gemm -> Relu -> Gemm.

    Channel groups: ``features.conv1`` out (16) alone; ``features.conv2`` out (32);
    ``features.conv3`` out (32); ``features.conv4`` out (64) coupled with the input
    features of ``classifier.fc1`` in blocks of 4*4=16 (Flatten of 64x4x4: channel c owns
    features [16c, 16c+16)); ``classifier.fc1`` out (64) with ``classifier.fc2`` in;
    ``classifier.fc2`` out is frozen (graph output).
    """
    g, x = start("vgg", seed, batch, opset)
    with g.scope("features"):
        x = g.maxpool(g.conv_bn(x, 16, 3, name="conv1"), name="pool1")
        x = g.conv_bn(g.conv_bn(x, 32, 3, name="conv2"), 32, 3, name="conv3")
        x = g.maxpool(x, name="pool2")
        x = g.maxpool(g.conv_bn(x, 64, 3, name="conv4"), name="pool3")
    with g.scope("classifier"):
        x = g.relu(g.gemm(g.flatten(x), 64, name="fc1"), name="relu1")
        x = g.gemm(x, CLASSES, name="fc2")
    return g.build(x, vgg.__doc__ or "")


def vgg_reshape(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """VGG without BN (conv biases), flattened by Reshape with a constant [N, C*H*W] target.

    The target is ``[batch, 1024]`` (``[0, 1024]`` for a symbolic batch), never -1, so a
    pruner must rewrite the constant. Channel groups: ``features.conv1`` out (16);
    ``features.conv2`` out (32); ``features.conv3`` out (64) with ``classifier.fc1`` input
    features in blocks of 4*4=16 and with the Reshape constant's 1024 (= 64*16);
    ``classifier.fc1`` out (32) with ``classifier.fc2`` in; ``classifier.fc2`` out frozen.
    """
    g, x = start("vgg_reshape", seed, batch, opset)
    with g.scope("features"):
        x = g.maxpool(g.relu(g.conv(x, 16, 3, name="conv1"), name="relu1"), name="pool1")
        x = g.maxpool(g.relu(g.conv(x, 32, 3, name="conv2"), name="relu2"), name="pool2")
        x = g.maxpool(g.relu(g.conv(x, 64, 3, name="conv3"), name="relu3"), name="pool3")
    n, c, h, w = g.shapes[x]
    with g.scope("classifier"):
        x = g.reshape(x, [n, c * h * w], name="reshape")
        x = g.relu(g.gemm(x, 32, name="fc1"), name="relu1")
        x = g.gemm(x, CLASSES, name="fc2")
    return g.build(x, vgg_reshape.__doc__ or "")


def basic_block(g: GraphBuilder, x: str, cout: int, stride: int) -> str:
    y = g.conv_bn(x, cout, 3, stride, name="conv1")
    y = g.conv_bn(y, cout, 3, act=None, name="conv2", gain=RESIDUAL_GAIN)
    if stride != 1 or g.channels(x) != cout:
        x = g.conv_bn(x, cout, 1, stride, act=None, name="downsample.conv")
    return g.relu(g.add(y, x), name="relu")


def resnet_basic(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """ResNet with basic blocks: stem, stage1 (16, identity), stage2 (32, stride 2, 2 blocks).

    Channel groups: {``stem.conv`` out, ``stage1.block0.conv2`` out} (joined by the
    identity Add); {``stage2.block0.conv2`` out, ``stage2.block0.downsample.conv`` out,
    ``stage2.block1.conv2`` out, ``head.fc`` in} (Adds and GAP/Flatten, 1 feature per
    channel); each ``conv1`` out alone (3 groups); ``head.fc`` out frozen.
    """
    g, x = start("resnet_basic", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 16, 3, name="conv")
    for s, (cout, stride) in enumerate([(16, 1), (32, 2)], start=1):
        for b in range(2 if s == 2 else 1):
            with g.scope(f"stage{s}"), g.scope(f"block{b}"):
                x = basic_block(g, x, cout, stride if b == 0 else 1)
    return g.build(head(g, x), resnet_basic.__doc__ or "")


def bottleneck(g: GraphBuilder, x: str, width: int, cout: int, stride: int, groups: int) -> str:
    y = g.conv_bn(x, width, 1, name="conv1")
    y = g.conv_bn(y, width, 3, stride, groups=groups, name="conv2")
    y = g.conv_bn(y, cout, 1, act=None, name="conv3", gain=RESIDUAL_GAIN)
    if stride != 1 or g.channels(x) != cout:
        x = g.conv_bn(x, cout, 1, stride, act=None, name="downsample.conv")
    return g.relu(g.add(y, x), name="relu")


def resnet_bottleneck(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """ResNet with bottleneck blocks (1x1, 3x3, 1x1, expansion 4), two stages of two blocks.

    Stage1: width 8 -> 32 channels (stride 1, projection in block0); stage2: width 16 -> 64
    (stride 2, projection in block0). Channel groups: ``stem.conv`` out (16) alone (only
    consumed by convs); per stage {``block0.conv3`` out, ``block0.downsample.conv`` out,
    ``block1.conv3`` out} (+ ``head.fc`` in for stage2); every ``conv1`` and ``conv2`` out
    alone (8 groups); ``head.fc`` out frozen.
    """
    g, x = start("resnet_bottleneck", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 16, 3, name="conv")
    for s, (width, stride) in enumerate([(8, 1), (16, 2)], start=1):
        for b in range(2):
            with g.scope(f"stage{s}"), g.scope(f"block{b}"):
                x = bottleneck(g, x, width, 4 * width, stride if b == 0 else 1, 1)
    return g.build(head(g, x), resnet_bottleneck.__doc__ or "")


def resnext(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """ResNeXt: bottlenecks whose 3x3 conv is grouped (groups=4, 8 channels per group).

    Channel groups: ``stem.conv`` out (16) alone; {``stage1.block0.conv3`` out,
    ``stage1.block0.downsample.conv`` out, ``stage1.block1.conv3`` out, ``head.fc`` in}
    (64); in each block ``conv1`` out (32) and ``conv2`` out (32) are separate groups, but
    both are split into the 4 conv groups of ``conv2`` (8 channels each): ``conv1`` out
    feeds ``conv2`` group k through its channels [8k, 8k+8), so a pruner must keep the
    same number of channels in every conv group, in and out; ``head.fc`` out frozen.
    """
    g, x = start("resnext", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 16, 3, name="conv")
    for b in range(2):
        with g.scope("stage1"), g.scope(f"block{b}"):
            x = bottleneck(g, x, 32, 64, 1, groups=4)
    return g.build(head(g, x), resnext.__doc__ or "")
