"""``--quantize int8``: onnxruntime's quantize_static after pruning and recovery."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import random_inputs, run
from onnx import numpy_helper
from test_cli import assert_bad_input, cli

from onnx_hwprune.api import prune
from onnx_hwprune.frontends.onnx import load_graph, verify_model
from onnx_hwprune.passes.analysis.channel_groups import analyze_channel_groups
from onnx_hwprune.runtime.quantize import quantize_int8
from onnx_hwprune.testing.families import FAMILIES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _int8_weights(model: onnx.ModelProto) -> int:
    return sum(
        numpy_helper.to_array(t).dtype == np.int8 and len(t.dims) == 4
        for t in model.graph.initializer
    )


def test_quantize_int8_is_deterministic_qdq_and_close_to_float():
    model = FAMILIES["resnet_basic"]()
    batches = [random_inputs(model, batch=1, seed=s) for s in range(8)]
    a, b = (quantize_int8(model, lambda: iter(batches)) for _ in range(2))
    assert a.SerializeToString() == b.SerializeToString()
    verify_model(a)
    ops = {n.op_type for n in a.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    assert _int8_weights(a) == convs  # every conv weight is int8
    dims = {t.name: list(t.dims) for t in a.graph.initializer}
    per_channel = [
        n
        for n in a.graph.node
        if n.op_type == "DequantizeLinear" and len(dims.get(n.input[0], [])) == 4
    ]
    assert len(per_channel) == convs
    assert all(dims[n.input[1]] == dims[n.input[0]][:1] for n in per_channel)  # one per filter
    feeds = random_inputs(model, batch=2, seed=11)
    ref, got = run(model, feeds)[0], run(a, feeds)[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95
    # BatchNorms are folded into their convs first, as deployed (quantize_static would
    # leave each in float between a dequantize and a quantize); nothing dead is carried.
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert "BatchNormalization" not in ops
    read = {i for n in a.graph.node for i in n.input}
    assert all(t.name in read for t in a.graph.initializer)
    # The quantized model prunes like the float one (QDQ handlers).
    assert len(analyze_channel_groups(load_graph(a)).prunable) == len(
        analyze_channel_groups(load_graph(model)).prunable
    )


def test_prune_then_quantize_digits_reports_accuracy():
    result = prune(
        EXAMPLES / "digits_resnet.onnx",
        ratio=0.3,
        calib=str(EXAMPLES / "digits_calib.npz"),
        calib_limit=128,
        recover="lsq",
        quantize="int8",
        eval_data=str(EXAMPLES / "digits_test.npz"),
    )
    assert result.report["quantize"]["format"] == "QDQ"
    assert result.report["options"]["quantize"] == "int8"
    acc = result.report["accuracy"]
    before, after = acc["top1"]
    assert acc["top1_pruned_float"] is not None
    assert after >= before - 0.03, acc  # int8 of a recovered 30%-pruned ResNet
    timed = result.report["quantize"]["measured"]  # what int8 bought, against float
    assert set(timed) == {"original", "pruned_float", "pruned_int8"}
    assert all(timed[k]["ratio"] > 0 for k in ("pruned_float", "pruned_int8"))
    assert _int8_weights(result.model) > 0


def test_quantize_without_calibration_is_refused(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(FAMILIES["vgg"](), path)
    assert_bad_input(cli(str(path), str(out), "--ratio", "0.3", "--quantize", "int8"), "--calib")
    assert not out.exists()


@pytest.mark.slow
def test_quantize_int8_plans_against_int8_staircases(tmp_path):
    """With --quantize int8 the latency planner's layers are int8 signatures: the profile
    database holds int8 measurements afterwards, and no float32 ones."""
    db = tmp_path / "profiles.sqlite"
    result = prune(
        EXAMPLES / "digits_resnet.onnx",
        calib=str(EXAMPLES / "digits_calib.npz"),
        calib_limit=64,
        quantize="int8",
        threads=1,
        profile_db=str(db),
        measure=False,
    )
    assert result.report["latency"]["predicted"]
    with sqlite3.connect(db) as conn:
        signatures = [json.loads(s) for (s,) in conn.execute("SELECT signature FROM measurements")]
    dtypes = {s["dtype"] for s in signatures}
    assert dtypes == {"int8"}, dtypes
    # Its convs (Relu or none after them) are timed as the bare channels-last int8 kernel.
    assert {s.get("layout") for s in signatures if s["op"] == "Conv"} == {"nhwc"}


def test_cli_prunes_a_qoperator_model_by_ratio_and_explains_latency(tmp_path):
    from test_quant_families import _quantize

    path, out = tmp_path / "q.onnx", tmp_path / "out.onnx"
    onnx.save(_quantize(FAMILIES["resnet_basic"](), "QOperator", tmp_path), path)
    proc = cli(str(path), str(out), "--ratio", "0.3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert {n.op_type for n in onnx.load(out).graph.node} >= {"QLinearConv", "QGemm"}
    out.unlink()
    # The latency job cannot price integer operators: a valid model is not bad input, so it
    # is copied through unchanged with the reason, which names what works instead.
    proc = cli(str(path), str(out), "--threads", "1", "--no-measure")
    assert proc.returncode == 0, proc.stderr
    assert "integer operators" in proc.stdout and "--ratio" in proc.stdout
    assert out.read_bytes() == path.read_bytes()


def _conv_bn(rng, src: str, dst: str, ch: int) -> tuple[list, list]:
    """Unnamed Conv -> BatchNormalization nodes (as some exporters write them)."""
    w = numpy_helper.from_array(rng.standard_normal((ch, ch, 3, 3)).astype(np.float32), f"{dst}w")
    stats = [numpy_helper.from_array(v.astype(np.float32), f"{dst}{k}") for k, v in {
        "g": rng.uniform(0.5, 2, ch), "b": rng.standard_normal(ch),
        "m": rng.standard_normal(ch), "v": rng.uniform(0.5, 2, ch)}.items()]  # fmt: skip
    nodes = [
        onnx.helper.make_node("Conv", [src, w.name], [f"{dst}c"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("BatchNormalization", [f"{dst}c", *[t.name for t in stats]], [dst]),
    ]
    return nodes, [w, *stats]


def test_batchnorm_fold_keeps_outputs_and_leaves_nothing_dead():
    from onnx_hwprune.runtime.bn_fold import fold_batchnorm

    rng = np.random.default_rng(0)
    (n1, i1), (n2, i2) = _conv_bn(rng, "x", "a", 4), _conv_bn(rng, "a", "y", 4)
    info = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4, 6, 6])
            for n in ("x", "y", "ac")]  # fmt: skip
    # The first conv's output is also a graph output: that pair must stay unfolded.
    graph = onnx.helper.make_graph([*n1, *n2], "g", info[:1], [info[1], info[2]], [*i1, *i2])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    folded = fold_batchnorm(model)
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "BatchNormalization", "Conv"]
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names))
    read = {i for n in folded.graph.node for i in n.input}
    assert set(names) <= read
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)}
    for ref, got in zip(run(model, feeds), run(folded, feeds), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_written_models_are_timed_at_the_shapes_the_job_measured():
    """A written model keeps its own dims; timed as it is, random inputs fill a dynamic
    dim with 1 (a pruned PP-OCRv5 cls at 1x3x1x1 read as a 4.7x speedup)."""
    from onnx_hwprune._job_report import _as_measured
    from onnx_hwprune.frontends.onnx import normalize_model

    model = FAMILIES["resnet_basic"]()
    name = model.graph.input[0].name
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    dynamic = onnx.ModelProto.FromString(model.SerializeToString())
    for d in dynamic.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "size"
    source = normalize_model(model, {name: dims})
    timed = _as_measured(dynamic, source)
    assert [d.dim_value for d in timed.graph.input[0].type.tensor_type.shape.dim] == dims
    assert _as_measured(source, source) is source
