"""Family builders: concatenating and odd-op models (DenseNet, Inception, U-Net, Split, ops).

See ``families.py`` for the conventions; each docstring lists the model's channel groups.
"""

from __future__ import annotations

import onnx

from ._common import CLASSES, head, start
from ._graph import GraphBuilder

__all__ = ["densenet", "inception", "per_channel_affine", "split", "unet"]


def _dense_layer(g: GraphBuilder, x: str, growth: int) -> str:
    y = g.conv(g.relu(g.bn(x, name="bn1"), name="relu1"), 4 * growth, 1, bias=False, name="conv1")
    y = g.conv(g.relu(g.bn(y, name="bn2"), name="relu2"), growth, 3, bias=False, name="conv2")
    return g.concat([x, y])


def densenet(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """DenseNet: a 3-layer dense block (growth 8, BN-ReLU-Conv order) and a transition.

    ``stem.conv`` 16; ``block.layer{0,1,2}``: BN-ReLU-``conv1`` 1x1 32 -> BN-ReLU-
    ``conv2`` 3x3 8 -> Concat(input, conv2 out) (16 -> 24 -> 32 -> 40);
    ``transition``: BN-ReLU-``conv`` 1x1 20 -> AveragePool 2; then BN-ReLU-GAP-Gemm.
    Channel groups (Concat offsets): ``stem.conv`` out (16) is channels [0,16) of every
    Concat, of the BN before every later conv and of ``transition.conv`` in;
    ``block.layer{i}.conv2`` out (8) is channels [16+8i, 24+8i) of the Concats that follow
    (and of the BN params there); each ``conv1`` out (32) alone with its ``bn2``;
    {``transition.conv`` out, ``final.bn``, ``head.fc`` in} (20); ``head.fc`` out frozen.
    """
    g, x = start("densenet", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv(x, 16, 3, bias=False, name="conv")
    for i in range(3):
        with g.scope("block"), g.scope(f"layer{i}"):
            x = _dense_layer(g, x, 8)
    with g.scope("transition"):
        x = g.conv(g.relu(g.bn(x)), 20, 1, bias=False, name="conv")
        x = g.avgpool(x, 2)
    with g.scope("final"):
        x = g.relu(g.bn(x))
    return g.build(head(g, x), densenet.__doc__ or "")


def _inception_module(g: GraphBuilder, x: str) -> str:
    b1 = g.conv_bn(x, 8, 1, name="branch1.conv")
    b2 = g.conv_bn(g.conv_bn(x, 8, 1, name="branch2.conv1"), 12, 3, name="branch2.conv2")
    b3 = g.conv_bn(g.conv_bn(x, 4, 1, name="branch3.conv1"), 6, 5, name="branch3.conv2")
    b4 = g.conv_bn(g.maxpool(x, 3, 1, pad=1, name="branch4.pool"), 6, 1, name="branch4.conv")
    return g.concat([b1, b2, b3, b4])


def inception(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """Inception module: four branches concatenated on channels, consumed by a 1x1 conv.

    ``stem.conv`` 16 -> MaxPool; ``mixed``: ``branch1.conv`` 1x1 8; ``branch2.conv1`` 1x1
    8 -> ``branch2.conv2`` 3x3 12; ``branch3.conv1`` 1x1 4 -> ``branch3.conv2`` 5x5 6;
    MaxPool 3x3 s1 -> ``branch4.conv`` 1x1 6; Concat (32) -> ``post.conv`` 1x1 32.
    Channel groups: ``stem.conv`` out (16: input of all four branches and of the pool);
    Concat offsets: ``branch1.conv`` out = [0,8), ``branch2.conv2`` out = [8,20),
    ``branch3.conv2`` out = [20,26), ``branch4.conv`` out = [26,32) of ``post.conv`` in,
    four separate groups; ``branch2.conv1`` out and ``branch3.conv1`` out alone;
    {``post.conv`` out, ``head.fc`` in}; ``head.fc`` out frozen.
    """
    g, x = start("inception", seed, batch, opset)
    with g.scope("stem"):
        x = g.maxpool(g.conv_bn(x, 16, 3, name="conv"))
    with g.scope("mixed"):
        x = _inception_module(g, x)
    with g.scope("post"):
        x = g.conv_bn(x, 32, 1, name="conv")
    return g.build(head(g, x), inception.__doc__ or "")


def unet(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """Small U-Net; output is a N x 3 x 32 x 32 feature map (not logits).

    ``down1`` (``conv1``, ``conv2``: 8, 32x32) -> MaxPool -> ``down2`` (16, 16x16) ->
    MaxPool -> ``bottom.conv`` 32 (8x8) -> ``up1.upconv`` ConvTranspose k2 s2 -> 16 ->
    Concat(``down2.conv2``, upconv) -> ``up1.conv`` 16 -> ``up2.resize`` (nearest, scales
    [1,1,2,2]) -> Concat(``down1.conv2``, resize) -> ``up2.conv`` 8 -> ``out.conv`` 1x1 3.
    Channel groups: each ``conv1`` out alone; ``down1.conv2`` out (8) = ``up2.concat``
    [0,8) and feeds ``down2.conv1``; ``down2.conv2`` out (16) = ``up1.concat`` [0,16);
    ``bottom.conv`` out (32) = ConvTranspose in (dim 0 of its weight);
    ``up1.upconv`` out (16, dim 1 of its weight) = ``up1.concat`` [16,32); ``up1.conv``
    out (16) through the Resize = ``up2.concat`` [8,24); ``up2.conv`` out (8);
    ``out.conv`` out frozen (graph output).
    """
    g, x = start("unet", seed, batch, opset)
    skips = []
    for i, c in enumerate([8, 16], start=1):
        with g.scope(f"down{i}"):
            x = g.conv_bn(g.conv_bn(x, c, 3, name="conv1"), c, 3, name="conv2")
            skips.append(x)
            x = g.maxpool(x)
    with g.scope("bottom"):
        x = g.conv_bn(x, 32, 3, name="conv")
    with g.scope("up1"):
        x = g.concat([skips[1], g.conv_transpose(x, 16)])
        x = g.conv_bn(x, 16, 3, name="conv")
    with g.scope("up2"):
        x = g.concat([skips[0], g.resize(x, 2)])
        x = g.conv_bn(x, 8, 3, name="conv")
    with g.scope("out"):
        x = g.conv(x, 3, 1, name="conv")
    return g.build(x, unet.__doc__ or "")


def split(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """A conv split into unequal channel parts (Split with sizes), and a channel Slice.

    ``stem.conv`` 24 -> Split [8, 10, 6] -> ``part{0,1,2}.conv`` (8, 12, 4) + Relu ->
    Concat (24) -> ``mid.conv`` 32 -> Slice channels [4, 20) -> ``post.conv`` 16.
    Channel groups: ``stem.conv`` out ranges [0,8), [8,18), [18,24) are the inputs of
    ``part0.conv``, ``part1.conv``, ``part2.conv`` (the Split sizes input must shrink with
    them); ``part{0,1,2}.conv`` outs are Concat [0,8), [8,20), [20,24) of ``mid.conv`` in;
    ``mid.conv`` out channels [4,20) are ``post.conv`` in [0,16) (the Slice starts/ends
    must move), channels [0,4) and [20,32) are dead (unused: prunable for free);
    {``post.conv`` out, ``head.fc`` in}; ``head.fc`` out frozen.
    """
    g, x = start("split", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv(x, 24, 3, name="conv")
    parts = g.split(x, [8, 10, 6])
    outs = []
    for i, (part, cout) in enumerate(zip(parts, [8, 12, 4], strict=True)):
        with g.scope(f"part{i}"):
            outs.append(g.relu(g.conv(part, cout, 3, name="conv")))
    with g.scope("mid"):
        x = g.slice(g.conv_bn(g.concat(outs), 32, 3, name="conv"), 4, 20)
    with g.scope("post"):
        x = g.conv_bn(x, 16, 3, name="conv")
    return g.build(head(g, x), split.__doc__ or "")


def per_channel_affine(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """Decomposed BN as Mul/Add/Sub/Div with [1,C,1,1] constants, plus many simple ops.

    ``block1.conv`` 16 -> Mul c -> Add c -> LeakyRelu -> MaxPool; ``block2.conv`` 24 ->
    Sub c -> Div c -> Tanh -> Pad (spatial 1) -> ``block3.conv`` 24 (pad 0) -> HardSigmoid
    -> Dropout -> Identity -> AveragePool; ``block4.conv`` 32 -> InstanceNormalization ->
    Relu -> ReduceMean(axes [2,3], keepdims=1) -> Flatten -> MatMul [32, 10].
    Channel groups: {``block1.conv`` out, its Mul and Add constants} (16);
    {``block2.conv`` out, Sub and Div constants} (24); ``block3.conv`` out (24);
    {``block4.conv`` out, InstanceNormalization scale/bias, ``head.matmul`` weight rows}
    (32); ``head.matmul`` out frozen.
    """
    g, x = start("per_channel_affine", seed, batch, opset)
    with g.scope("block1"):
        x = g.conv(x, 16, 3, bias=False, name="conv")
        x = g.channel_const(g.channel_const(x, "Mul", "mul"), "Add", "add")
        x = g.maxpool(g.unary("LeakyRelu", x, "leakyrelu", alpha=0.1))
    with g.scope("block2"):
        x = g.conv(x, 24, 3, name="conv")
        x = g.channel_const(g.channel_const(x, "Sub", "sub"), "Div", "div")
        x = g.pad(g.unary("Tanh", x, "tanh"), 1)
    with g.scope("block3"):
        x = g.conv(x, 24, 3, pad=0, name="conv")
        x = g.unary("HardSigmoid", x, "hardsigmoid", alpha=0.2, beta=0.5)
        x = g.unary("Identity", g.unary("Dropout", x, "dropout"), "identity")
        x = g.avgpool(x)
    with g.scope("block4"):
        x = g.relu(g.instance_norm(g.conv(x, 32, 3, name="conv")))
    with g.scope("head"):
        x = g.matmul(g.flatten(g.reduce_mean(x)), CLASSES)
    return g.build(x, per_channel_affine.__doc__ or "")
