"""The accuracy guard's fidelity measures (``runtime/fidelity.py``) on constructed models.

The case in point is a CTC recognizer: the blank wins almost every position, so a model
that reads every character wrong still keeps a high cosine and a high per-position top-1
agreement. The agreement on content (non-blank) positions must show the damage, and the
guard (``accuracy_drop``) must act on it.
"""

from __future__ import annotations

import numpy as np
import onnx
from helpers import run
from onnx import TensorProto, helper, numpy_helper

from onnx_hwprune._accuracy_search import GUARD_COSINE, accuracy_drop
from onnx_hwprune.runtime.fidelity import output_fidelity

T, C, BLANK_BIAS = 100, 4, 10.0


def _sequence_model(perm: list[int]) -> onnx.ModelProto:
    """(1, T, C) logits = x @ P + [10, 0, 0, 0]: P permutes the classes."""
    p = np.eye(C, dtype=np.float32)[perm]
    bias = np.array([BLANK_BIAS, 0, 0, 0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "P"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, C])],
        [numpy_helper.from_array(p, "P"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _line() -> dict[str, np.ndarray]:
    """A 'text line': blank everywhere but two positions that read class 1."""
    x = np.zeros((1, T, C), np.float32)
    x[0, [12, 57], 1] = 12.0
    return {"x": x}


def test_content_agreement_sees_what_cosine_and_top1_miss():
    original = _sequence_model([0, 1, 2, 3])
    misreading = _sequence_model([0, 2, 1, 3])  # reads class 2 where the original read 1
    fid = output_fidelity(original, misreading, [_line()])
    # Both whole-tensor measures stay at or above the guard's 0.95 floor ...
    assert fid["top1_agreement"] == (T - 2) / T
    assert fid["cosine"] >= GUARD_COSINE
    # ... the content positions disagree everywhere.
    assert fid["content_positions"] == 2
    assert fid["content_agreement"] == 0.0
    assert accuracy_drop({"fidelity": fid}) == 100.0
    guard_limit = 100.0 * (1.0 - GUARD_COSINE)
    assert accuracy_drop({"fidelity": {**fid, "content_agreement": None}}) <= guard_limit


def test_identical_sequences_agree_fully_and_blank_only_outputs_have_no_content():
    model = _sequence_model([0, 1, 2, 3])
    fid = output_fidelity(model, model, [_line()])
    assert fid["content_agreement"] == 1.0 and fid["cosine"] > 0.999999
    blank = output_fidelity(model, model, [{"x": np.zeros((1, T, C), np.float32)}])
    assert blank["content_agreement"] is None and blank["content_positions"] == 0
    assert accuracy_drop({"fidelity": blank}) < 1e-6


def test_classifier_outputs_have_no_content_measure():
    """(N, C) scores have one position per sample: top-1 agreement is the measure."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = {"x": np.arange(C, dtype=np.float32)[None]}
    fid = output_fidelity(model, model, [x])
    assert fid["top1_agreement"] == 1.0 and fid["content_agreement"] is None


def test_no_dominant_class_leaves_top1_agreement_alone():
    """A detector's box head (argmax over coordinates) has no blank: where the most
    frequent class holds under 80% of the positions, content agreement is not measured."""
    x = np.zeros((1, T, C), np.float32)
    x[0, :30, 1] = 12.0  # 30% of the positions read class 1: no dominant background
    fid = output_fidelity(_sequence_model([0, 1, 2, 3]), _sequence_model([0, 2, 1, 3]), [{"x": x}])
    assert fid["content_agreement"] is None and fid["top1_agreement"] == 0.7


def test_summary_says_random_inputs_are_a_weak_check_unless_data_was_given():
    from onnx_hwprune._summary import SYNTHETIC_NOTE, _fidelity_lines

    synthetic = {"data": "16 synthetic N(0,1) inputs (no data given)", "cosine": 0.99,
                 "top1_agreement": 1.0, "content_agreement": None}  # fmt: skip
    assert SYNTHETIC_NOTE in _fidelity_lines({"fidelity": synthetic})
    checked = {"fidelity": synthetic, "accuracy": {"top1": [0.99, 0.98]}}
    assert SYNTHETIC_NOTE not in _fidelity_lines(checked)
    calib = {**synthetic, "data": "the calibration data"}
    assert SYNTHETIC_NOTE not in _fidelity_lines({"fidelity": calib})


def test_recovery_scores_sequences_on_their_content():
    """``--recover auto`` and distillation's held-back check score a CTC-like output on its
    content positions: here a misreading keeps 1 - relative MSE near 1 (the blanks'
    logits dominate) while it reads nothing right."""
    from onnx_hwprune.runtime.recover_auto import fidelity

    original, misreading = _sequence_model([0, 1, 2, 3]), _sequence_model([0, 2, 1, 3])
    err = run(original, _line())[0] - run(misreading, _line())[0]
    assert 1.0 - np.sum(err**2) / np.sum(run(original, _line())[0] ** 2) > 0.9
    assert fidelity(original, misreading, lambda: [_line()]) == 0.0
    assert fidelity(original, original, lambda: [_line()]) == 1.0
