"""``--recover`` on the command line: distill without torch, and the auto default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from onnx import numpy_helper
from test_cli import assert_bad_input

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = EXAMPLES / "digits_resnet.onnx"
CALIB = EXAMPLES / "digits_calib.npz"


def _cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    # sys.modules["torch"] = None makes every "import torch" raise ImportError.
    code = "import sys\nfrom onnx_hwprune.cli import main\n"
    if block_torch:
        code = "import sys\nsys.modules['torch'] = None\n" + code[11:]
    code += "sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_distill_without_torch_names_the_extra(tmp_path):
    out = tmp_path / "out.onnx"
    proc = _cli(str(DIGITS), str(out), "--ratio", "0.3", "--calib", str(CALIB),
                "--recover", "distill", block_torch=True)  # fmt: skip
    assert_bad_input(proc, "pip install 'onnx-hwprune[torch]'")
    assert not out.exists()


def test_calibration_data_turns_auto_recovery_on(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    proc = _cli(str(DIGITS), str(out), "--ratio", "0.5", "--calib", str(CALIB),
                "--calib-limit", "200", "--report", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recovery = json.loads(report.read_text())["recovery"]
    assert recovery["method"] in ("bias", "lsq")
    assert recovery["held_samples"] == 40
    tried = {t["method"]: t["agreement"] for t in recovery["tried"]}
    assert set(tried) == {"bias", "lsq"}  # no target: the cheap two, never distill
    assert tried[recovery["method"]] == max(tried.values()) >= recovery["agreement_before"]
    none = _cli(str(DIGITS), str(tmp_path / "n.onnx"), "--ratio", "0.5", "--calib", str(CALIB),
                "--recover", "none", "--report", str(tmp_path / "n.json"))  # fmt: skip
    assert none.returncode == 0, none.stderr
    assert "recovery" not in json.loads((tmp_path / "n.json").read_text())


def test_recovery_options_are_checked():
    import pytest

    from onnx_hwprune.errors import UserError
    from onnx_hwprune.options import PruneOptions

    assert PruneOptions(calib="c.npz").resolved_recover() == "auto"
    assert PruneOptions(calib="c.npz", recover="none").resolved_recover() is None
    assert PruneOptions().resolved_recover() is None
    bad_options = (
        {"recover": "magic", "calib": "c.npz"},
        {"max_accuracy_drop": 150.0, "calib": "c.npz"},  # points: at most 100
        {"max_accuracy_drop": 1.5},  # needs --eval or --calib data
    )
    for bad in bad_options:
        with pytest.raises(UserError):
            PruneOptions(**bad).validate()


def test_distill_trains_on_full_batches_when_input_shape_fixes_batch_one(tmp_path):
    # --input-shape input:1,... fixes the batch for planning only; OUT keeps the dynamic
    # batch, and recovery must read calibration batches sized for it, not of one sample.
    import importlib.util

    import pytest

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the 'torch' extra)")
    report = tmp_path / "r.json"
    proc = _cli(str(DIGITS), str(tmp_path / "out.onnx"), "--input-shape", "input:1,1,8,8",
                "--ratio", "0.5", "--calib", str(CALIB), "--recover", "distill",
                "--recover-steps", "3", "--no-measure", "--report", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recovery = json.loads(report.read_text())["recovery"]
    assert recovery["steps"] == 3
    assert recovery["samples"] >= 3 * 32  # samples seen in 3 steps: batches, not single ones


def test_a_distillation_that_does_not_write_back_is_discarded_not_a_traceback(monkeypatch):
    """PP-OCRv5 rec: after training, the written-back model differed from torch by 3.2e-4
    and the job ended in a RuntimeError traceback. The model before distillation is kept
    and the report says why."""
    import pytest

    pytest.importorskip("torch", reason="the 'torch' extra")
    from onnx_hwprune.api import prune
    from onnx_hwprune.runtime import distill

    def mismatch(*args, **kwargs):
        raise distill.WriteBackMismatch("distilled weights written back differ from torch by 3e-04")

    monkeypatch.setattr(distill, "_check_write_back", mismatch)
    kept = prune(DIGITS, ratio=0.5, method="uniform", target="mali", calib=CALIB,
                 recover="lsq", measure=False)  # fmt: skip
    result = prune(DIGITS, ratio=0.5, method="uniform", target="mali", calib=CALIB,
                   recover="distill", recover_steps=2, measure=False)  # fmt: skip
    assert "written back differ" in result.report["recovery"]["discarded"]
    assert result.model.SerializeToString() == kept.model.SerializeToString()


def test_a_distillation_worse_than_lsq_on_held_back_samples_is_discarded(monkeypatch):
    """A training run cut short can make the model worse: explicit --recover distill keeps
    the lsq model unless the distilled one agrees better on the held-back fifth."""
    import pytest

    pytest.importorskip("torch", reason="the 'torch' extra")
    from onnx_hwprune.api import prune
    from onnx_hwprune.runtime import distill

    real = distill.distill

    def harmful(original, pruned, factory, **kwargs):
        model, info = real(original, pruned, factory, **kwargs)
        for tensor in model.graph.initializer:  # training gone wrong: every weight halved
            if tensor.data_type == 1 and len(tensor.dims) == 4:
                value = numpy_helper.to_array(tensor) * 0.5
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return model, info

    monkeypatch.setattr(distill, "distill", harmful)
    kept = prune(DIGITS, ratio=0.5, method="uniform", target="mali", calib=CALIB,
                 recover="lsq", measure=False)  # fmt: skip
    result = prune(DIGITS, ratio=0.5, method="uniform", target="mali", calib=CALIB,
                   recover="distill", recover_steps=2, measure=False)  # fmt: skip
    recovery = result.report["recovery"]
    held = recovery["held_back_agreement"]
    assert held["distill"] < held["lsq"] and "below lsq's" in recovery["discarded"]
    assert recovery["held_back"] > 0
    assert result.model.SerializeToString() == kept.model.SerializeToString()
