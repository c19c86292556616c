"""--input-shape fixes dims for measuring and planning only: the written model keeps the
model's own dynamic batch, height and width (issue 11)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from corpus import corpus_model

from onnx_hwprune.cli import main


def _shapes(path, shape):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return [o.shape for o in sess.run(None, {sess.get_inputs()[0].name: x})]


@pytest.mark.parametrize("name", ["torch_yolo_style", "torch_unet", "ppocr_cls"])
def test_pruned_model_runs_at_other_sizes_and_batch(name, corpus_cache, tmp_path, capsys):
    model = corpus_model(name, corpus_cache)
    out = tmp_path / "out.onnx"
    args = [str(model.path), str(out), *model.shape_args(), "--target", "mali", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    pruned = onnx.load(out)
    original = onnx.load(model.path)
    assert pruned.graph.input[0].type == original.graph.input[0].type
    assert _macs_cut(out, model.path)
    n, c, h, w = (int(d) for d in model.input_shape.split(":")[1].split(","))
    for shape in [(1, c, h + 32, w + 64), (1, c, 2 * h, w), (4, c, h, w)]:
        assert _shapes(out, shape) == _shapes(model.path, shape), shape


def _macs_cut(out, original) -> bool:
    return out.stat().st_size < original.stat().st_size


def test_fix_input_shape_writes_the_fixed_dims(corpus_cache, tmp_path):
    model = corpus_model("torch_unet", corpus_cache)
    out = tmp_path / "out.onnx"
    args = [str(model.path), str(out), *model.shape_args(), "--target", "mali", "--quiet",
            "--fix-input-shape"]  # fmt: skip
    assert main(args) == 0
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]


def test_missing_shape_message_names_the_real_dims(corpus_cache, tmp_path, capsys):
    model = corpus_model("ppocr_rec", corpus_cache)
    assert main([str(model.path), str(tmp_path / "o.onnx"), "--target", "mali"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape x:1,3,48,W" in err
    assert not (tmp_path / "o.onnx").exists()
