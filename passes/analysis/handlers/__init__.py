"""The op handlers. Each module registers its handlers in
:data:`onnx_hwprune.passes.analysis._registry.DEFAULT_REGISTRY`; they are imported here by
name (never by wildcard) so the list of supported op families is readable in one place."""

from onnx_hwprune.passes.analysis.handlers import (  # noqa: F401  (registration)
    channel_axis,
    conv,
    elementwise,
    linear,
    normalization,
    quant,
    reshape,
    spatial,
)
