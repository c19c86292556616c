"""Inputs synthesised from a model's BatchNorm statistics (runtime/synthesize.py) and the
jobs that use them when no data is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch", reason="synthesis needs the torch extra")

from onnx_hwprune.api import prune  # noqa: E402
from onnx_hwprune.runtime.activations import make_session, with_extra_outputs  # noqa: E402
from onnx_hwprune.runtime.synthesize import bn_statistics, synthesize, unusable  # noqa: E402

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits_resnet.onnx"
TEST = DIGITS.with_name("digits_test.npz")


def _bn_gap(model: onnx.ModelProto, x: np.ndarray) -> float:
    """Mean over BN layers of the relative distance of the batch's per-channel mean and
    std from the running ones."""
    stats = bn_statistics(model)
    names = list(stats)
    session = make_session(with_extra_outputs(model, names))
    values = session.run(names, {model.graph.input[0].name: x})
    gaps = []
    for name, a in zip(names, values, strict=True):
        mean, var = stats[name]
        dims = tuple(d for d in range(a.ndim) if d != 1)
        mu, sd = a.mean(dims), a.std(dims)
        gap = np.abs(mu - mean).sum() + np.abs(sd - np.sqrt(var)).sum()
        gaps.append(gap / np.sqrt(var).sum())
    return float(np.mean(gaps))


@pytest.fixture(scope="module")
def digits_synthesis():
    model = onnx.load(DIGITS)
    arrays, info = synthesize(model, samples=24, steps=100, seed=0)
    return model, arrays, info


def test_synthesised_inputs_match_the_statistics_and_the_classes(digits_synthesis):
    model, arrays, info = digits_synthesis
    (x,) = arrays.values()
    assert x.shape == (24, 1, 8, 8) and info["bn_layers"] == 8 and info["class_targets"] == 10
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    assert _bn_gap(model, x) < 0.5 * _bn_gap(model, noise)
    scores = make_session(model).run(None, {model.graph.input[0].name: x})[0]
    hits = scores.argmax(1) == np.arange(24) % 10  # sample i was pushed towards class i mod 10
    assert hits.mean() >= 0.9


def test_synthesis_is_deterministic(digits_synthesis):
    model, arrays, _ = digits_synthesis
    again, _ = synthesize(model, samples=24, steps=100, seed=0)
    np.testing.assert_array_equal(next(iter(again.values())), next(iter(arrays.values())))


def test_models_without_batchnorm_statistics_are_refused_with_the_reason():
    from onnx_hwprune.runtime.bn_fold import fold_batchnorm

    folded = fold_batchnorm(onnx.load(DIGITS))  # as exporters often leave a model
    assert "BatchNorm statistics for 0 of its 8 convs" in unusable(folded)
    assert unusable(onnx.load(DIGITS)) is None


def _top1(model: onnx.ModelProto) -> float:
    data = np.load(TEST)
    scores = make_session(model).run(None, {model.graph.input[0].name: data["input"]})[0]
    return float((scores.argmax(1) == data["label"]).mean())


def test_the_headline_job_without_data_checks_and_recovers_on_synthesised_inputs():
    """`--target mali` without data. On noise the guard could not tell a good plan from a
    bad one and relaxed the budget far; on held-back synthesised inputs (recovery never
    saw them) it keeps a deeper cut, and the real accuracy stays."""
    synth = prune(DIGITS, target="mali")
    noise = prune(DIGITS, target="mali", synthetic_data="off")
    info = synth.report["synthetic_data"]
    assert info["used"] and info["held_back"] == 16
    assert "held-back inputs synthesised" in synth.report["fidelity"]["data"]
    assert "N(0,1)" in noise.report["fidelity"]["data"]
    assert synth.report["recovery"]["method"] in ("bias", "lsq")
    macs = [r.report["network"]["macs"] for r in (synth, noise)]
    assert macs[0][1] < macs[1][1] < macs[0][0]
    assert _top1(synth.model) > 0.95


def test_a_second_job_reuses_the_synthesis_and_writes_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = prune(DIGITS, ratio=0.3, method="uniform", target="mali")
    second = prune(DIGITS, ratio=0.3, method="uniform", target="mali")
    assert first.report["synthetic_data"]["used"] and "cached" not in first.report["synthetic_data"]
    assert second.report["synthetic_data"]["cached"]
    assert list((tmp_path / "onnx-hwprune" / "synthetic").glob("*.npz"))
    assert first.model.SerializeToString() == second.model.SerializeToString()


def test_without_torch_the_job_falls_back_to_noise_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no synthesis cached by other tests
    from onnx_hwprune.errors import UserError
    from onnx_hwprune.runtime import distill

    def missing(feature="--recover distill"):
        raise UserError(f"{feature} needs PyTorch: pip install 'onnx-hwprune[torch]'")

    monkeypatch.setattr(distill, "require_torch", missing)
    result = prune(DIGITS, ratio=0.3, method="uniform", target="mali", measure=False)
    info = result.report["synthetic_data"]
    assert not info["used"] and "onnx-hwprune[torch]" in info["reason"]
    assert "N(0,1)" in result.report["fidelity"]["data"]


def test_a_synthesis_that_does_not_converge_is_cached_too(monkeypatch, tmp_path):
    """Random-weight test networks do not converge (loss 10.8 -> 1.23 on one): every job
    on them re-ran the 100 steps (~15 s) only to fall back to noise."""
    from onnx_hwprune.runtime import synthesize as module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def stalled(model, **kwargs):
        calls.append(1)
        x = np.zeros((kwargs["samples"], 1, 8, 8), np.float32)
        return {"input": x}, {"steps": 100, "loss": [10.0, 2.0], "seconds": 1.0}

    monkeypatch.setattr(module, "synthesize", stalled)
    reports = [prune(DIGITS, ratio=0.3, method="uniform", target="mali", measure=False).report
               for _ in range(2)]  # fmt: skip
    assert len(calls) == 1
    assert [r["synthetic_data"].get("cached", False) for r in reports] == [False, True]
    assert all("no convergence" in r["synthetic_data"]["reason"] for r in reports)
    assert all("N(0,1)" in r["fidelity"]["data"] for r in reports)


def test_a_model_whose_activations_would_not_fit_is_refused_before_any_step(monkeypatch):
    """48 samples of DenseNet-121 at 224x224 held 15.8 GB: such a model is refused with the
    estimate, before torch allocates anything."""
    from onnx_hwprune.runtime import synthesize as synth

    model = onnx.load(DIGITS)
    per_sample = synth.activation_bytes(model)
    assert per_sample > 0
    monkeypatch.setattr(synth, "MEMORY_LIMIT", 10 * per_sample)
    with pytest.raises(synth.TooSlow, match="would hold about .* GB of activations"):
        synth.synthesize(model, samples=11, steps=1)
    arrays, _ = synth.synthesize(model, samples=9, steps=1)  # under the limit: runs
    assert next(iter(arrays.values())).shape[0] == 9


def test_activation_estimate_survives_a_model_shape_inference_refuses(monkeypatch):
    """A model over 2 GB makes onnx's shape inference raise: the estimate then reads the
    shapes the model carries instead of ending the job in a traceback."""
    from onnx_hwprune.runtime import synthesize as synth

    model = onnx.shape_inference.infer_shapes(onnx.load(DIGITS))
    want = synth.activation_bytes(model)

    def refuse(_model):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    assert synth.activation_bytes(model) == want > 0
