"""Tests for frontends/calib/: streaming calibration data and its validation."""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib import Preprocess, input_specs, iter_calibration

SPEC = {"x": (("N", 3, 4, 4), np.dtype(np.float32))}


def _model(inputs: dict[str, tuple[list, int]]):
    """An Identity per input: enough for input_specs. IR 10 for onnxruntime 1.31."""
    values = [helper.make_tensor_value_info(n, t, s) for n, (s, t) in inputs.items()]
    outs = [helper.make_tensor_value_info(f"{n}_out", t, s) for n, (s, t) in inputs.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in inputs]
    graph = helper.make_graph(nodes, "g", values, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _collect(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_input_specs_skips_initializers_and_reads_dims():
    model = _model({"x": (["N", 3, 4, 4], TensorProto.FLOAT), "ids": ([2], TensorProto.INT64)})
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    model.graph.initializer.append(weight)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]))
    specs = input_specs(model)
    assert list(specs) == ["x", "ids"]
    assert specs["x"] == (("N", 3, 4, 4), np.dtype(np.float32))
    assert specs["ids"] == ((2,), np.dtype(np.int64))


def test_npz_streams_in_batches(tmp_path):
    data = np.random.default_rng(0).normal(size=(10, 3, 4, 4)).astype(np.float32)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, x=data, label=np.arange(10))
        batches = list(iter_calibration(path, SPEC, batch_size=4))
        assert [len(b["x"]) for b in batches] == [4, 4, 2]
        assert set(batches[0]) == {"x"}
        np.testing.assert_array_equal(_collect(batches)["x"], data)


def test_npz_limit_and_multi_input(tmp_path):
    specs = {"a": ((None, 2), np.dtype(np.float32)), "b": ((None,), np.dtype(np.int64))}
    a, b = np.ones((7, 2), np.float32), np.arange(7)
    np.savez(tmp_path / "d.npz", a=a, b=b)
    out = _collect(iter_calibration(tmp_path / "d.npz", specs, batch_size=3, limit=5))
    np.testing.assert_array_equal(out["a"], a[:5])
    np.testing.assert_array_equal(out["b"], b[:5])


def test_arrays_dicts_and_iterables():
    data = np.arange(6 * 48, dtype=np.float32).reshape(6, 3, 4, 4)
    assert [len(b["x"]) for b in iter_calibration(data, SPEC, batch_size=4)] == [4, 2]
    np.testing.assert_array_equal(_collect(iter_calibration({"x": data}, SPEC))["x"], data)
    batches = iter_calibration([data[:1], {"x": data[1:]}], SPEC, batch_size=2)
    assert [len(b["x"]) for b in batches] == [1, 5]


def test_static_batch_dim_overrides_batch_size():
    spec = {"x": ((2, 3), np.dtype(np.float32))}
    batches = list(iter_calibration(np.zeros((4, 3), np.float32), spec, batch_size=3))
    assert [len(b["x"]) for b in batches] == [2, 2]


def test_preprocess_parse():
    prep = Preprocess.parse(
        "size=224,200;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;layout=nhwc;order=BGR"
    )
    assert prep.size == (224, 200)
    assert prep.mean == (0.485, 0.456, 0.406)
    assert prep.std == (0.229, 0.224, 0.225)
    assert (prep.layout, prep.order, prep.scale) == ("NHWC", "BGR", 1 / 255)
    assert Preprocess.parse("scale=1;order=GRAY") == Preprocess(scale=1.0, order="GRAY")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size=224", "size"),
        ("size=a,b", "expected numbers"),
        ("colour=red", "unknown preprocess key 'colour'"),
        ("layout=NCWH", "layout"),
        ("order=RGB;mean=1,2", "mean needs 1 or 3"),
        ("std=0", "std must not contain 0"),
        ("size", "not key=value"),
    ],
)
def test_preprocess_parse_errors(text, message):
    with pytest.raises(UserError, match=message):
        Preprocess.parse(text)


def _write_images(folder, count=5, size=(6, 5), mode="RGB"):
    rng = np.random.default_rng(1)
    images = []
    for i in range(count):
        channels = (size[0], size[1], 3) if mode == "RGB" else size
        pixels = rng.integers(0, 256, channels, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{i:02d}.png")
        images.append(pixels)
    return images


def test_image_folder_nchw_rgb(tmp_path):
    images = _write_images(tmp_path, size=(4, 4))
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    prep = Preprocess.parse("mean=0.5,0.25,0;std=0.5,0.5,1")
    out = _collect(iter_calibration(tmp_path, SPEC, batch_size=2, preprocess=prep))["x"]
    expected = (np.stack(images).astype(np.float32) / 255 - [0.5, 0.25, 0]) / [0.5, 0.5, 1]
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32


def test_image_folder_bgr_nhwc_resized(tmp_path):
    images = _write_images(tmp_path, count=3, size=(8, 8))
    spec = {"x": ((None, 4, 4, 3), np.dtype(np.float32))}
    prep = Preprocess(layout="NHWC", order="BGR", scale=1.0)
    out = _collect(iter_calibration(tmp_path, spec, preprocess=prep))["x"]
    assert out.shape == (3, 4, 4, 3)
    resized = np.asarray(Image.fromarray(images[0]).resize((4, 4), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(out[0], resized[..., ::-1])


def test_image_folder_gray(tmp_path):
    images = _write_images(tmp_path, count=2, size=(4, 4), mode="L")
    spec = {"x": ((None, 1, 4, 4), np.dtype(np.float32))}
    out = _collect(iter_calibration(tmp_path, spec, preprocess=Preprocess(order="GRAY")))["x"]
    np.testing.assert_allclose(out[:, 0], np.stack(images) / 255, rtol=1e-6)


def _bad_cases(tmp_path):
    """(source, specs, expected message fragment) for every documented bad input."""
    good = np.zeros((2, 3, 4, 4), np.float32)
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((2, 3, 5, 4), np.float32))
    np.savez(tmp_path / "wrong_dtype.npz", x=good.astype(np.float64))
    np.savez(tmp_path / "missing.npz", y=good)
    np.savez(tmp_path / "extra.npz", x=good, z=good)
    np.savez(tmp_path / "empty.npz", x=good[:0])
    (tmp_path / "text.npz").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("readme.txt", "no arrays")
    (tmp_path / "no_images").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "broken.png").write_bytes(b"\x89PNG not really")
    two = {"x": SPEC["x"], "y": SPEC["x"]}
    return [
        (tmp_path / "wrong_shape.npz", SPEC, r"input 'x': shape \[2, 3, 5, 4\].*\[\?, 3, 4, 4\]"),
        (tmp_path / "wrong_dtype.npz", SPEC, "input 'x': dtype float64.*float32"),
        (tmp_path / "missing.npz", SPEC, "lacks input 'x'; the model expects 'x'"),
        (tmp_path / "extra.npz", SPEC, "unknown key 'z'"),
        (tmp_path / "empty.npz", SPEC, "zero samples"),
        (tmp_path / "text.npz", SPEC, "not an .npz"),
        (tmp_path / "plain.zip", SPEC, "not an .npz"),
        (tmp_path / "nope.npz", SPEC, "does not exist"),
        (tmp_path / "no_images", SPEC, "no .png/.jpg/.jpeg images"),
        (tmp_path / "corrupt", SPEC, "cannot read image .*broken.png"),
        (good[:, :2], SPEC, r"shape \[2, 2, 4, 4\]"),
        (good.astype(np.int32), SPEC, "dtype int32"),
        ({"x": good, "y": good[:1]}, two, "different sample counts"),
        (good, two, "single-input"),
        ({"x": good, "w": good}, SPEC, "unknown key 'w'"),
        ([], SPEC, "zero samples"),
        (good[:0], SPEC, "zero samples"),
        ([3.0], SPEC, "must be an array or a dict"),
    ]


def test_bad_inputs_raise_user_error(tmp_path):
    for source, specs, message in _bad_cases(tmp_path):
        with pytest.raises(UserError, match=message):
            list(iter_calibration(source, specs, batch_size=2))


def test_messages_fit_on_one_line(tmp_path):
    for source, specs, _ in _bad_cases(tmp_path):
        with pytest.raises(UserError) as info:
            list(iter_calibration(source, specs))
        assert "\n" not in str(info.value)


def test_bad_batch_size_and_limit():
    data = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(UserError, match="batch size"):
        list(iter_calibration(data, SPEC, batch_size=0))
    with pytest.raises(UserError, match="limit"):
        list(iter_calibration(data, SPEC, limit=0))


def test_image_size_taken_from_non_square_model_input(tmp_path):
    _write_images(tmp_path, count=2, size=(8, 12))
    spec = {"x": ((None, 3, 4, 6), np.dtype(np.float32))}
    assert _collect(iter_calibration(tmp_path, spec))["x"].shape == (2, 3, 4, 6)


def test_limit_stops_reading_the_source():
    data = np.zeros((4, 3, 4, 4), np.float32)

    def batches():
        yield data
        raise AssertionError("read past the limit")

    assert [len(b["x"]) for b in iter_calibration(batches(), SPEC, limit=4)] == [4]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_peak_memory_is_one_batch(tmp_path, save):
    """Streaming a 12 MB member must allocate about one batch (48 KB), not the member."""
    rows = np.random.default_rng(2).normal(size=(1000, 3, 32, 32)).astype(np.float32)
    save(tmp_path / "big.npz", x=rows)
    spec = {"x": ((None, 3, 32, 32), np.dtype(np.float32))}
    del rows
    tracemalloc.start()
    try:
        total = sum(len(b["x"]) for b in iter_calibration(tmp_path / "big.npz", spec, 4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 1000
    assert peak < 2_000_000
