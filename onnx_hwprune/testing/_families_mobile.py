"""Family builders: mobile architectures (MobileNetV2, SE, ShuffleNetV2, SqueezeNet).

See ``families.py`` for the conventions; each docstring lists the model's channel groups.
"""

from __future__ import annotations

import onnx

from ._common import head, start
from ._graph import GraphBuilder

__all__ = ["inverted_residual", "mobilenetv2", "se", "shufflenet", "squeezenet"]


def inverted_residual(g: GraphBuilder, x: str, cout: int, stride: int, expand: int) -> str:
    cin = g.channels(x)
    y = x
    if expand != 1:
        y = g.conv_bn(y, cin * expand, 1, act="relu6", name="expand.conv")
    y = g.conv_bn(y, g.channels(y), 3, stride, groups=g.channels(y), act="relu6", name="dw.conv")
    y = g.conv_bn(y, cout, 1, act=None, name="project.conv")
    return g.add(x, y, name="add") if stride == 1 and cin == cout else y


def mobilenetv2(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """MobileNetV2 inverted residuals, then a depthwise conv with channel multiplier 2.

    Blocks: ``stem.conv`` 16 (stride 2); ``block1`` t=1 16->8; ``block2`` t=4 8->16 s2;
    ``block3`` t=4 16->16 (residual Add); ``block4`` t=4 16->24; ``multiplier.conv``
    depthwise 24->48 (groups=24, 2 outputs per input channel); ``last.conv`` 1x1 -> 64.
    Channel groups: {``stem.conv`` out, ``block1.dw.conv`` out} (depthwise: out channel c
    is in channel c); {``block1.project.conv`` out} (8); each expand conv out with its
    depthwise conv out (32, 64, 64); {``block2.project.conv`` out, ``block3.project.conv``
    out} (16, residual Add); {``block4.project.conv`` out, ``multiplier.conv`` out} with
    the multiplier map: in channel c owns out channels 2c and 2c+1 (24 -> 48);
    {``last.conv`` out, ``head.fc`` in} (64); ``head.fc`` out frozen.
    """
    g, x = start("mobilenetv2", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 16, 3, 2, act="relu6", name="conv")
    for i, (cout, stride, expand) in enumerate([(8, 1, 1), (16, 2, 4), (16, 1, 4), (24, 1, 4)]):
        with g.scope(f"block{i + 1}"):
            x = inverted_residual(g, x, cout, stride, expand)
    with g.scope("multiplier"):
        x = g.conv_bn(x, 2 * g.channels(x), 3, groups=g.channels(x), act="relu6", name="conv")
    with g.scope("last"):
        x = g.conv_bn(x, 64, 1, act="relu6", name="conv")
    return g.build(head(g, x), mobilenetv2.__doc__ or "")


def _squeeze_excite(g: GraphBuilder, x: str, reduced: int) -> str:
    with g.scope("se"):
        s = g.relu(g.conv(g.gap(x), reduced, 1, name="reduce.conv"))
        s = g.sigmoid(g.conv(s, g.channels(x), 1, name="expand.conv"))
        return g.mul(x, s, name="scale")


def se(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """Squeeze-excite block, with HardSwish, SiLU (Sigmoid+Mul) and per-channel PRelu.

    ``stem.conv`` 16 + HardSwish; ``block.conv`` 3x3 32 stride 2 + SiLU; SE: GAP ->
    ``block.se.reduce.conv`` 8 -> Relu -> ``block.se.expand.conv`` 32 -> Sigmoid -> Mul
    with the feature map; ``block.proj.conv`` 1x1 32 + PRelu (slope [32, 1, 1]).
    Channel groups: ``stem.conv`` out (16); {``block.conv`` out, ``block.se.expand.conv``
    out} (32, joined by the Mul: the SE gate's channel c scales feature channel c);
    ``block.se.reduce.conv`` out (8); {``block.proj.conv`` out, PRelu slope, ``head.fc``
    in} (32); ``head.fc`` out frozen.
    """
    g, x = start("se", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 16, 3, act="hardswish", name="conv")
    with g.scope("block"):
        x = g.conv_bn(x, 32, 3, 2, act="silu", name="conv")
        x = _squeeze_excite(g, x, 8)
        x = g.prelu(g.conv_bn(x, 32, 1, act=None, name="proj.conv"))
    return g.build(head(g, x), se.__doc__ or "")


def _channel_shuffle(g: GraphBuilder, x: str, groups: int) -> str:
    n, c, h, w = g.shapes[x]
    with g.scope("shuffle"):
        y = g.reshape(x, [n, groups, c // groups, h, w], name="reshape1")
        y = g.transpose(y, [0, 2, 1, 3, 4])
        return g.reshape(y, [n, c, h, w], name="reshape2")


def _shuffle_branch(g: GraphBuilder, x: str, cout: int, stride: int) -> str:
    y = g.conv_bn(x, cout, 1, name="conv1")
    y = g.conv_bn(y, cout, 3, stride, groups=cout, act=None, name="dwconv")
    return g.conv_bn(y, cout, 1, name="conv2")


def shufflenet(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """ShuffleNetV2 units: a stride-1 unit (Split) and a stride-2 unit (two branches).

    ``stem.conv`` 24; ``unit1``: Split [12, 12] -> branch (``conv1``, ``dwconv``,
    ``conv2``, 12 each) on the second half -> Concat(first half, branch) -> shuffle (g=2:
    Reshape [N,2,12,H,W] -> Transpose [0,2,1,3,4] -> Reshape [N,24,H,W]); ``unit2``
    (stride 2): ``branch1`` (``dwconv`` s2 24, ``conv`` 24) and ``branch2`` (``conv1``,
    ``dwconv`` s2, ``conv2``, 24 each) -> Concat (48) -> shuffle; ``last.conv`` 64.
    Couplings (index maps): the unit1 shuffle sends Concat channel i to 2i and 12+i to
    2i+1. So ``stem.conv`` out c < 12 is unit2-input channel 2c and
    ``unit2.branch1.dwconv`` out 2c (depthwise); ``unit1.branch.conv2`` out i is
    unit2-input channel 2i+1 and ``unit2.branch1.dwconv`` out 2i+1; ``stem.conv`` out
    c >= 12 only feeds ``unit1.branch.conv1`` in channel c-12 (a Split range). Other
    groups: {``unit1.branch.conv1`` out, ``unit1.branch.dwconv`` out} (12, depthwise);
    {``unit2.branch2.conv1`` out, ``unit2.branch2.dwconv`` out} (24); ``unit2.branch1.conv``
    out i = ``last.conv`` in 2i and ``unit2.branch2.conv2`` out i = ``last.conv`` in 2i+1
    (two groups of 24); {``last.conv`` out, ``head.fc`` in} (64); ``head.fc`` out frozen.
    """
    g, x = start("shufflenet", seed, batch, opset)
    with g.scope("stem"):
        x = g.conv_bn(x, 24, 3, name="conv")
    with g.scope("unit1"):
        left, right = g.split(x, [12, 12])
        with g.scope("branch"):
            right = _shuffle_branch(g, right, 12, 1)
        x = _channel_shuffle(g, g.concat([left, right]), 2)
    with g.scope("unit2"):
        with g.scope("branch1"):
            b1 = g.conv_bn(x, 24, 3, 2, groups=24, act=None, name="dwconv")
            b1 = g.conv_bn(b1, 24, 1, name="conv")
        with g.scope("branch2"):
            b2 = _shuffle_branch(g, x, 24, 2)
        x = _channel_shuffle(g, g.concat([b1, b2]), 2)
    with g.scope("last"):
        x = g.conv_bn(x, 64, 1, name="conv")
    return g.build(head(g, x), shufflenet.__doc__ or "")


def _fire(g: GraphBuilder, x: str, squeeze: int, expand: int) -> str:
    s = g.relu(g.conv(x, squeeze, 1, name="squeeze.conv"), name="squeeze.relu")
    e1 = g.relu(g.conv(s, expand, 1, name="expand1x1.conv"), name="expand1x1.relu")
    e3 = g.relu(g.conv(s, expand, 3, name="expand3x3.conv"), name="expand3x3.relu")
    return g.concat([e1, e3])


def squeezenet(seed: int = 0, batch: int | str = 1, opset: int = 17) -> onnx.ModelProto:
    """SqueezeNet fire modules and a conv classifier (output N x 10 from GAP + Flatten).

    ``stem.conv`` 3x3 s2 16 -> MaxPool; ``fire1``/``fire2``: squeeze 1x1 8 -> expand1x1 16
    and expand3x3 16 -> Concat (32); ``classifier.conv`` 1x1 10 -> Relu -> GAP -> Flatten.
    Channel groups: ``stem.conv`` out (16); each ``squeeze.conv`` out (8: feeds both
    expands); {``fire1.expand1x1.conv`` out = fire1 Concat [0,16)} and
    {``fire1.expand3x3.conv`` out = Concat [16,32)} are separate groups, each feeding the
    matching input channels of ``fire2.squeeze.conv``; same for fire2's expands into
    ``classifier.conv``; ``classifier.conv`` out is frozen (graph output).
    """
    g, x = start("squeezenet", seed, batch, opset)
    with g.scope("stem"):
        x = g.maxpool(g.relu(g.conv(x, 16, 3, 2, name="conv")), 3, 2, pad=1)
    for i in (1, 2):
        with g.scope(f"fire{i}"):
            x = _fire(g, x, 8, 16)
    with g.scope("classifier"):
        x = g.flatten(g.gap(g.relu(g.conv(x, 10, 1, name="conv"))))
    return g.build(x, squeezenet.__doc__ or "")
