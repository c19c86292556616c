"""ONNX model builders (no torch): small family models, full-size networks, the light zoo.

- :data:`~.families.FAMILIES`: one small model per architecture family (tests).
- :data:`~.networks.NETWORKS`: torchvision-configured ImageNet networks (benchmarks).
- :func:`~.zoo.load_light_zoo`: the onnx package's light zoo with random real weights.
- :class:`~._graph.GraphBuilder`: the deterministic builder behind the first two.

All builders are deterministic: the same arguments give byte-identical models.
"""

from ._core import IR_VERSION
from ._graph import GraphBuilder
from .families import FAMILIES, build_family
from .networks import NETWORKS
from .zoo import LIGHT_ZOO, light_zoo_path, load_light_zoo

__all__ = [
    "FAMILIES",
    "IR_VERSION",
    "LIGHT_ZOO",
    "NETWORKS",
    "GraphBuilder",
    "build_family",
    "light_zoo_path",
    "load_light_zoo",
]
