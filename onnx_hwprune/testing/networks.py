"""Full-size ImageNet networks with random weights, for benchmarks.

The layer configurations follow torchvision (channel counts, strides, kernel sizes and
where BatchNormalization is); weights are random (He init, fixed seed), so the models are
good for latency, not for accuracy. Every builder takes ``seed=0, batch=1, opset=17,
image_size=224`` and returns a model with input ``input`` (N x 3 x S x S) and output
``output`` (N x 1000 logits). Node names follow torchvision's module paths with
``block<i>`` for the blocks (``layer2.block0.downsample.conv``).

Differences from torchvision: no Dropout; VGG-16 has no AdaptiveAvgPool (an identity at
224x224: its Flatten reads the last pool directly).

Example::

    from onnx_hwprune.testing.networks import NETWORKS

    model = NETWORKS["resnet50"](seed=0)
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from ._families_cnn import basic_block, bottleneck
from ._families_mobile import inverted_residual
from ._graph import GraphBuilder

__all__ = ["NETWORKS", "NUM_CLASSES", "mobilenet_v2", "resnet18", "resnet50", "vgg16"]

NUM_CLASSES = 1000

# torchvision MobileNetV2 inverted-residual settings: expansion t, channels c, repeats n,
# first stride s.
_MBV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# torchvision VGG-16 "D" configuration: conv output channels, "M" = 2x2 max pool.
_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
_VGG16_CFG += [512, 512, 512, "M", 512, 512, 512, "M"]


def _start(
    name: str, seed: int, batch: int | str, opset: int, size: int
) -> tuple[GraphBuilder, str]:
    g = GraphBuilder(name, seed=seed, opset=opset, batch=batch)
    return g, g.input(3, size, size)


def _classifier(g: GraphBuilder, x: str) -> str:
    with g.scope("fc"):
        return g.gemm(g.flatten(g.gap(x), name="flatten"), NUM_CLASSES, name="gemm")


def _resnet(
    name: str,
    blocks: list[int],
    use_bottleneck: bool,
    seed: int,
    batch: int | str,
    opset: int,
    image_size: int,
) -> onnx.ModelProto:
    g, x = _start(name, seed, batch, opset, image_size)
    x = g.maxpool(g.conv_bn(x, 64, 7, 2, name="conv1"), 3, 2, pad=1, name="maxpool")
    for i, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512], strict=True), start=1):
        for b in range(n):
            stride = 2 if i > 1 and b == 0 else 1
            with g.scope(f"layer{i}"), g.scope(f"block{b}"):
                if use_bottleneck:
                    x = bottleneck(g, x, width, 4 * width, stride, 1)
                else:
                    x = basic_block(g, x, width, stride)
    return g.build(_classifier(g, x), f"{name}: torchvision configuration, random weights")


def resnet18(
    seed: int = 0, batch: int | str = 1, opset: int = 17, image_size: int = 224
) -> onnx.ModelProto:
    """ResNet-18: basic blocks [2, 2, 2, 2], channels 64-128-256-512, 1x1 projections."""
    return _resnet("resnet18", [2, 2, 2, 2], False, seed, batch, opset, image_size)


def resnet50(
    seed: int = 0, batch: int | str = 1, opset: int = 17, image_size: int = 224
) -> onnx.ModelProto:
    """ResNet-50 (v1.5: stride on the 3x3): bottlenecks [3, 4, 6, 3], expansion 4."""
    return _resnet("resnet50", [3, 4, 6, 3], True, seed, batch, opset, image_size)


def mobilenet_v2(
    seed: int = 0, batch: int | str = 1, opset: int = 17, image_size: int = 224
) -> onnx.ModelProto:
    """MobileNetV2 width 1.0: 32-ch stem, 17 inverted residuals, 1280-ch conv, GAP, Gemm."""
    g, x = _start("mobilenet_v2", seed, batch, opset, image_size)
    with g.scope("features.0"):
        x = g.conv_bn(x, 32, 3, 2, act="relu6", name="conv")
    index = 1
    for t, c, n, s in _MBV2_SETTINGS:
        for i in range(n):
            with g.scope(f"features.{index}"):
                x = inverted_residual(g, x, c, s if i == 0 else 1, t)
            index += 1
    with g.scope(f"features.{index}"):
        x = g.conv_bn(x, 1280, 1, act="relu6", name="conv")
    return g.build(_classifier(g, x), "mobilenet_v2: torchvision configuration, random weights")


def vgg16(
    seed: int = 0, batch: int | str = 1, opset: int = 17, image_size: int = 224
) -> onnx.ModelProto:
    """VGG-16 without BN: 13 convs with biases, Flatten(512x7x7), Gemm 4096-4096-1000."""
    g, x = _start("vgg16", seed, batch, opset, image_size)
    with g.scope("features"):
        for i, v in enumerate(_VGG16_CFG):
            if v == "M":
                x = g.maxpool(x, 2, name=f"pool{i}")
            else:
                x = g.relu(g.conv(x, int(v), 3, name=f"conv{i}"), name=f"relu{i}")
    with g.scope("classifier"):
        x = g.flatten(x)
        x = g.relu(g.gemm(x, 4096, name="fc1"), name="relu1")
        x = g.relu(g.gemm(x, 4096, name="fc2"), name="relu2")
        x = g.gemm(x, NUM_CLASSES, name="fc3")
    return g.build(x, "vgg16: torchvision configuration (no BN), random weights")


#: Network name -> builder taking ``seed=0, batch=1, opset=17, image_size=224``.
NETWORKS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "vgg16": vgg16,
}
