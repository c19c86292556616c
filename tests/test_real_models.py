"""The main job on the real-model corpus (``tests/corpus.py``): never a traceback.

Every model goes through ``--target mali`` (analytic, no measurement), ``--ratio 0.3``
and the default ``cpu`` job (measured: the larger models are marked slow). Each comes
out valid (checker + onnxruntime, same output shapes as the original) or unchanged with
a reason (exit 0, "nothing pruned", and no output file).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from corpus import CORPUS, corpus_model

from onnx_hwprune.cli import main

# Fast enough for every CI run (2 cores): small models and small spatial sizes.
FAST = ("torch_yolo_style", "torch_unet", "torch_efficientnet_style", "torch_resnet18",
        "ppocr_cls", "dddd_common_old", "zoo_squeezenet", "zoo_shufflenet")  # fmt: skip
# Profiling these on the cpu target takes 10 s - 3 min each here.
FAST_CPU = ("dddd_common_old",)  # the others take minutes each on cpu now: slow


def _marks(names, fast):
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


def _feeds(model: onnx.ModelProto, shape_arg: str | None, seed: int = 0) -> dict:
    fixed = {}
    if shape_arg:
        name, _, dims = shape_arg.rpartition(":")
        fixed[name] = [int(d) for d in dims.split(",")]
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = fixed.get(value.name) or [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check_job(model, tmp_path, capsys, *args: str) -> None:
    out = tmp_path / "out.onnx"
    code = main([str(model.path), str(out), *model.shape_args(), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 0, err
    if not out.exists():  # unchanged, with a reason on stderr
        assert "nothing pruned" in err, err
        return
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = _feeds(onnx.load(model.path), model.input_shape)
    before, after = _run(model.path, feeds), _run(out, feeds)
    assert [a.shape for a in after] == [b.shape for b in before]
    assert all(np.isfinite(a).all() for a in after)


@pytest.mark.parametrize("name", _marks(CORPUS, FAST))
def test_mali_job_never_crashes(name, corpus_cache, tmp_path, capsys):
    _check_job(corpus_model(name, corpus_cache), tmp_path, capsys, "--target", "mali")


@pytest.mark.parametrize("name", _marks(CORPUS, FAST))
def test_ratio_job_never_crashes(name, corpus_cache, tmp_path, capsys):
    # --no-measure: the baseline's latency path (profiling) is the default job's, below.
    _check_job(corpus_model(name, corpus_cache), tmp_path, capsys, "--ratio", "0.3",
               "--no-measure")  # fmt: skip


def test_ratio_job_reports_latency(corpus_cache, tmp_path, capsys):
    """Baselines are timed (cpu) and predicted where no profiling is needed (mali), so
    their summaries compare with the latency planner's."""
    model = corpus_model("torch_resnet18", corpus_cache)
    out = tmp_path / "out.onnx"
    common = [str(model.path), str(out), *model.shape_args(), "--ratio", "0.3"]
    assert main([*common, "--threads", "1"]) == 0
    summary = capsys.readouterr().out
    assert "latency measured here:" in summary
    assert "latency predicted: not for a hardware-blind method" in summary
    assert "OUT accepts: images [batch, 3, height, width]" in summary
    assert main([*common, "--target", "mali"]) == 0
    summary = capsys.readouterr().out
    assert "latency on mali, predicted:" in summary
    assert "layer points after pruning: 0 measured" in summary


@pytest.mark.parametrize("name", _marks(CORPUS, FAST_CPU))
def test_default_cpu_job_never_crashes(name, corpus_cache, tmp_path, capsys):
    db = str(corpus_cache / "profiles.sqlite")  # shared by the session's cpu jobs
    _check_job(corpus_model(name, corpus_cache), tmp_path, capsys, "--threads", "1",
               "--profile-db", db)  # fmt: skip
