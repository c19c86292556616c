"""Lossless weight compression: every scheme round-trips, the model comes back byte for
byte (float, pruned and int8 models), and the CLI writes ``OUT-stem.hwz``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import random_inputs
from test_cli import assert_bad_input, cli

from onnx_hwprune import compress
from onnx_hwprune._weight_codec import SCHEMES, Coded, decode, encode_best
from onnx_hwprune.api import prune
from onnx_hwprune.frontends.onnx import serialize
from onnx_hwprune.runtime.quantize import quantize_int8
from onnx_hwprune.testing.families import FAMILIES


def _int8_weights(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    widths = rng.uniform(2, 30, (32, 1, 1, 1))  # per-tensor scale: channels differ in width
    return np.clip(np.round(rng.laplace(0, 1, (32, 16, 3, 3)) * widths), -128, 127).astype(np.int8)


@pytest.mark.parametrize("name", sorted(SCHEMES))
@pytest.mark.parametrize(
    "values",
    [
        _int8_weights(),
        _int8_weights(1).view(np.uint8),
        np.random.default_rng(2).standard_normal((24, 8, 3, 3)).astype(np.float32),
        np.arange(-500, 500, dtype=np.int32).reshape(10, 100),
        np.zeros((16, 4), np.int8),
    ],
    ids=["int8", "uint8", "float32", "int32", "zeros"],
)
def test_every_scheme_round_trips(name, values):
    payload = SCHEMES[name].encode(values)
    if payload is None:
        assert name in ("shuffle-zstd", "ans-hist", "ans-laplace", "ans-gauss", "ans-clustered")
        return
    assert SCHEMES[name].decode(payload, values.dtype, values.shape) == values.tobytes()


def test_best_scheme_is_smallest_and_entropy_coders_win_on_int8():
    values = _int8_weights()
    best = encode_best(values)
    sizes = {n: len(p) for n in SCHEMES if (p := SCHEMES[n].encode(values)) is not None}
    assert len(best.payload) == min(sizes.values())
    assert best.scheme.startswith("ans-")  # beats zstd -19 on per-channel-width int8
    assert sizes[best.scheme] < sizes["zstd"]
    assert decode(best, values.dtype, values.shape) == values.tobytes()


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown weight coding"):
        decode(Coded("lz4", b""), np.dtype(np.int8), (1,))


def _models() -> dict[str, onnx.ModelProto]:
    base = FAMILIES["resnet_basic"]()
    pruned = prune(base, ratio=0.3).model
    batches = [random_inputs(base, batch=1, seed=s) for s in range(4)]
    return {
        "float": base,
        "pruned": pruned,
        "int8": quantize_int8(base, lambda: iter(batches)),
        "pruned_int8": quantize_int8(pruned, lambda: iter(batches)),
    }


def test_models_round_trip_byte_for_byte(tmp_path):
    for kind, model in _models().items():
        data = serialize(model)
        path = tmp_path / f"{kind}.hwz"
        stats = compress.save(data, path)
        assert compress.load_bytes(path) == data, kind
        assert compress.load(path).SerializeToString() == data, kind
        assert stats.file_bytes == path.stat().st_size < len(data), kind
        assert stats.coded_weight_bytes < stats.weight_bytes, kind


def test_corrupt_file_is_refused(tmp_path):
    data = serialize(FAMILIES["vgg"]())
    blob, _ = compress.compress_bytes(data)
    broken = bytearray(blob)
    broken[-10] ^= 0xFF
    with pytest.raises(Exception, match="corrupt|checksum|[Ee]rror|ANS|decod"):
        compress.decompress_bytes(bytes(broken))
    with pytest.raises(Exception, match="bad magic"):
        compress.decompress_bytes(b"PK" + blob[2:])


def test_cli_emit_compressed_writes_hwz_beside_out(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "pruned.onnx"
    onnx.save(FAMILIES["resnet_basic"](), src)
    proc = cli(str(src), str(out), "--ratio", "0.3", "--emit", "compressed", "--quiet")
    assert proc.returncode == 0, proc.stderr
    hwz = tmp_path / "pruned.hwz"
    assert compress.load(hwz).SerializeToString() == out.read_bytes()
    bad = cli(str(src), str(tmp_path / "x.hwz"), "--ratio", "0.3", "--emit", "compressed")
    assert_bad_input(bad, "beside OUT")
