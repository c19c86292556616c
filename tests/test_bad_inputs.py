"""The bad-input corpus: every row is one way a user can hand the CLI something wrong.

The contract, checked for each row: exit code 2, exactly one line on stderr (no traceback)
holding the row's message fragment, no file created in the case's folder, and every
file already there (the inputs) unchanged in bytes and modification time.
Rows run in-process through ``cli.main`` (stderr captured at the file-descriptor level, so
a warning printed by onnxruntime's C++ would count as a second line).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sqlite3
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_hwprune.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits_resnet.onnx"
CALIB = REPO / "examples" / "digits_calib.npz"

Build = Callable[[Path], list[str]]


# -- input builders ---------------------------------------------------------------------
def model(tmp: Path, name: str = "m.onnx") -> str:
    path = tmp / name
    shutil.copyfile(DIGITS, path)
    return str(path)


def edited_model(tmp: Path, edit: Callable[[onnx.ModelProto], None]) -> str:
    proto = onnx.load(DIGITS)
    edit(proto)
    path = tmp / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return str(path)


def external_model(tmp: Path, location: str | None = None, folder: str = ".") -> str:
    """The model with its weights in ``w.data``; ``location`` rewrites where it points."""
    where = tmp / folder
    where.mkdir(exist_ok=True)
    proto = onnx.load(DIGITS)
    path = where / "m.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="w.data", size_threshold=0)
    if location is not None:
        proto = onnx.load(path, load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(proto.SerializeToString())
    return str(path)


def write(tmp: Path, name: str, data: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def then(value, effect: Callable, *args):
    """``value`` after ``effect(*args)``: builds an input, then damages it."""
    effect(*args)
    return value


def fake_image(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")


GROUP = "/stem/stem.0/Conv_output_0"  # a prunable 32-channel group of the digits model


def plan_doc(**changes) -> str:
    doc = {
        "schema": "onnx-hwprune.plan",
        "version": 1,
        "method": "uniform",
        "criterion": "l1",
        "meta": {},
        "groups": {GROUP: {"size": 32, "keep": list(range(16))}},
    }
    doc.update(changes)
    return json.dumps(doc)


def prune_with_plan(text: str | bytes) -> Build:
    return lambda t: [model(t), str(t / "o.onnx"), "--plan", write(t, "p.json", text)]


def export_doc(**measurement_changes) -> str:
    m = {
        "target": "cpu",
        "fingerprint_hash": "0" * 16,
        "signature": {"op": "Conv"},
        "in_ch": 8,
        "out_ch": 8,
        "median_ms": 0.5,
        "spread": 0.01,
        "samples": 5,
        "number": 10,
    }
    m.update(measurement_changes)
    m = {k: v for k, v in m.items() if v is not None}
    return json.dumps(
        {
            "format": "onnx-hwprune-profile",
            "version": 1,
            "devices": [],
            "measurements": [m],
            "calibrations": [],
        }
    )


def import_of(text: str | bytes) -> Build:
    return lambda t: [
        "profile",
        "import",
        write(t, "x.json", text),
        "--profile-db",
        str(t / "db.sqlite"),
    ]


def sqlite_file(tmp: Path, *statements: str) -> str:
    path = tmp / "db.sqlite"
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return str(path)


def own_db(tmp: Path, *statements: str) -> str:
    """A database made by this tool, then damaged by ``statements``."""
    from onnx_hwprune.cost_models.profile_db import ProfileDB

    path = tmp / "db.sqlite"
    ProfileDB(path).close()
    return sqlite_file(tmp, *statements)


def bomb_png(folder: Path) -> None:
    """A tiny PNG whose header claims 30000x30000 pixels (a decompression bomb)."""
    from PIL import Image

    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    data = bytearray((folder / "a.png").read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    (folder / "a.png").write_bytes(bytes(data))


def with_conv_in_channels_doubled(proto: onnx.ModelProto) -> None:
    weight = next(t for t in proto.graph.initializer if t.name == proto.graph.node[3].input[1])
    array = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.concatenate([array, array], 1), weight.name))


def with_opset(version: int) -> Callable[[onnx.ModelProto], None]:
    return lambda proto: proto.opset_import[0].__setattr__("version", version)


def symlink(tmp: Path, name: str, target: str) -> str:
    os.symlink(target, tmp / name)
    return str(tmp / name)


def hardlink(tmp: Path, name: str, target: str) -> str:
    os.link(target, tmp / name)
    return str(tmp / name)


def m_out(*extra: str) -> Build:
    """``IN OUT extra...`` with extra's ``{t}`` replaced by the case folder."""
    return lambda t: [model(t), str(t / "o.onnx"), *(e.format(t=t) for e in extra)]


def profile_of(*extra: str) -> Build:
    return lambda t: ["profile", model(t), *(e.format(t=t) for e in extra)]


# -- the corpus: (name, argv builder, fragment of the one stderr line) -------------------
# fmt: off
CASES: list[tuple[str, Build, str]] = [
    # 1. external data
    ("ext_missing", lambda t: then([external_model(t), str(t / "o.onnx")],
     os.unlink, t / "w.data"), "external data"),
    ("ext_dotdot", lambda t: [external_model(t, "../w.data", "sub"), str(t / "o.onnx")],
     "external data"),
    ("ext_absolute", lambda t: [external_model(t, str(t / "w.data")), str(t / "o.onnx")],
     "external data"),
    ("ext_symlink", lambda t: [external_model(t, "l.data"), symlink(t, "l.data", "w.data")][:1]
     + [str(t / "o.onnx")], "external data"),
    ("ext_truncated", lambda t: then([external_model(t), str(t / "o.onnx")],
     os.truncate, t / "w.data", 100), "external data"),
    ("analyze_ext_missing", lambda t: then(["analyze", external_model(t)],
     os.unlink, t / "w.data"), "external data"),
    # 2. plan files
    ("plan_non_utf8", prune_with_plan(b'{"schema": "\xff\xfe"}'), "not UTF-8"),
    ("plan_size_1e400", prune_with_plan(plan_doc(groups={GROUP: {"size": 1e400,
     "keep": [0]}}).replace("Infinity", "1e400")), "out of range"),
    ("plan_meta_list", prune_with_plan(plan_doc(meta=[1])), '"meta" must be an object'),
    ("plan_deep_nesting", prune_with_plan("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    ("plan_keep_floats", prune_with_plan(plan_doc(groups={GROUP: {"size": 32,
     "keep": [0.5, 1.7]}})), "list of integers"),
    ("plan_keep_bools", prune_with_plan(plan_doc(groups={GROUP: {"size": 32,
     "keep": [True]}})), "list of integers"),
    ("plan_size_string", prune_with_plan(plan_doc(groups={GROUP: {"size": "32",
     "keep": [0]}})), "positive integer"),
    ("plan_is_list", prune_with_plan("[1]"), "not an onnx-hwprune plan"),
    ("plan_nan", prune_with_plan(plan_doc(meta={"x": float("nan")})), "NaN"),
    ("plan_truncated", prune_with_plan(plan_doc()[:40]), "cannot read plan"),
    ("plan_empty", prune_with_plan(b""), "cannot read plan"),
    ("plan_groups_list", prune_with_plan(plan_doc(groups=[1])), '"groups" must be an object'),
    ("plan_version_2", prune_with_plan(plan_doc(version=2)), "version 2"),
    ("plan_unknown_group", prune_with_plan(plan_doc(groups={"nope": {"size": 4, "keep": [0]}})),
     "does not have"),
    ("plan_keep_out_of_range", prune_with_plan(plan_doc(groups={GROUP: {"size": 32,
     "keep": [0, 40]}})), "invalid indices"),
    ("plan_keep_empty", prune_with_plan(plan_doc(groups={GROUP: {"size": 32,
     "keep": []}})), "zero channels"),
    ("plan_missing", m_out("--plan", "{t}/absent.json"), "not found"),
    ("plan_is_folder", m_out("--plan", "{t}"), "cannot read plan"),
    # 3. profile export / import
    ("export_missing_folder", lambda t: ["profile", "export", str(t / "no" / "x.json"),
     "--profile-db", str(t / "db.sqlite")], "does not exist"),
    ("export_to_folder", lambda t: ["profile", "export", str(t), "--profile-db",
     str(t / "db.sqlite")], "is a folder"),
    ("export_under_proc", lambda t: ["profile", "export", "/proc/x.json", "--profile-db",
     str(t / "db.sqlite")], "cannot write"),
    ("export_onto_db", lambda t: ["profile", "export", own_db(t), "--profile-db",
     str(t / "db.sqlite")], "same file"),
    ("export_no_file", lambda t: ["profile", "export"], "needs a FILE"),
    ("import_list", import_of("[1]"), "not an onnx-hwprune profile export"),
    ("import_missing_keys", import_of(export_doc(median_ms=None)), "lacks 'median_ms'"),
    ("import_unknown_sig_field", import_of(export_doc(signature={"op": "Conv", "colour": 1})),
     "unknown fields ['colour']"),
    ("import_median_text", import_of(export_doc(median_ms="x")), "median_ms must be float"),
    ("import_median_negative", import_of(export_doc(median_ms=-1.0)), "is not in"),
    ("import_median_zero", import_of(export_doc(median_ms=0)), "is not in"),
    ("import_median_nan", import_of(export_doc(median_ms=float("nan"))), "NaN"),
    ("import_in_ch_float", import_of(export_doc(in_ch=8.5)), "in_ch must be int"),
    ("import_sig_kernel_text", import_of(export_doc(signature={"op": "Conv", "kernel": ["a"]})),
     "must hold numbers"),
    ("import_non_utf8", import_of(b"\xff\xfe{}"), "not UTF-8"),
    ("import_missing_file", lambda t: ["profile", "import", str(t / "absent.json")],
     "cannot read profile export"),
    # 4. the profile database
    ("db_schema_garbage", lambda t: ["profile", "export", str(t / "x.json"), "--profile-db",
     own_db(t, "UPDATE meta SET value='abc' WHERE key='schema_version'")],
     "schema version"),
    ("db_median_text", lambda t: ["profile", "export", str(t / "x.json"), "--profile-db",
     own_db(t, "INSERT INTO measurements (target, fp_hash, signature, in_ch, out_ch, median_ms, "
               "spread, samples, number, created) VALUES ('cpu','h','{}',1,1,'x',0,1,1,0)")],
     "malformed rows"),
    ("db_fingerprint_garbage", lambda t: ["profile", "export", str(t / "x.json"),
     "--profile-db", own_db(t, "INSERT INTO devices VALUES ('cpu','h','{')")],
     "malformed rows"),
    ("db_foreign_export", lambda t: ["profile", "export", str(t / "x.json"), "--profile-db",
     sqlite_file(t, "CREATE TABLE users (name TEXT)")],
     "not an onnx-hwprune profile database"),
    ("db_foreign_prune", lambda t: [model(t), str(t / "o.onnx"), "--no-measure",
     "--profile-db", sqlite_file(t, "CREATE TABLE users (name TEXT)")],
     "not an onnx-hwprune profile database"),
    ("db_foreign_app_id", lambda t: ["profile", "export", str(t / "x.json"), "--profile-db",
     sqlite_file(t, "PRAGMA application_id = 7", "CREATE TABLE meta (k)")],
     "not an onnx-hwprune profile database"),
    ("db_foreign_rebuild", lambda t: ["profile", "export", str(t / "x.json"), "--rebuild",
     "--profile-db", sqlite_file(t, "CREATE TABLE users (name TEXT)")],
     "leaves it untouched"),
    ("db_not_sqlite", lambda t: ["profile", "export", str(t / "x.json"), "--profile-db",
     write(t, "db.sqlite", b"\x00garbage" * 100)], "--rebuild"),
    ("db_is_input", lambda t: [(p := model(t)), str(t / "o.onnx"), "--profile-db", p],
     "same file"),
    # 5. image folders
    ("calib_bomb", lambda t: then([model(t), str(t / "o.onnx"), "--ratio", "0.5",
     "--criterion", "mean_abs", "--calib", str(t / "img")], bomb_png, t / "img"),
     "decompression bomb"),
    ("eval_bomb", lambda t: then(["eval", model(t), "--data", str(t / "img")],
     bomb_png, t / "img"), "decompression bomb"),
    ("calib_not_image", lambda t: then([model(t), str(t / "o.onnx"), "--ratio", "0.5",
     "--criterion", "mean_abs", "--calib", str(t / "img")], fake_image, t / "img"),
     "cannot read image"),
    # 6. output paths
    ("plot_existing_file", lambda t: ["profile", model(t), "--plot", write(t, "p.png", "x")],
     "not a folder"),
    ("json_missing_folder", profile_of("--json", "{t}/no/c.json"), "does not exist"),
    ("out_under_proc", lambda t: [model(t), "/proc/x.onnx"], "cannot write"),
    ("out_missing_folder", lambda t: [model(t), str(t / "no" / "o.onnx")], "does not exist"),
    ("out_is_folder", lambda t: [model(t), str(t)], "is a folder"),
    ("report_missing_folder", m_out("--report", "{t}/no/r.json"), "does not exist"),
    ("save_plan_is_folder", m_out("--save-plan", "{t}"), "is a folder"),
    ("emit_folder_is_file", lambda t: then([model(t), str(t / "o.onnx"), "--emit", "tvm"],
     write, t, "o.tvm", b"x"), "not a folder"),
    ("out_in_readonly_folder", lambda t: [model(t), "/sys/o.onnx"], "cannot write"),
    # 7. path collisions
    ("out_is_input", lambda t: [(p := model(t)), p], "same file"),
    ("report_is_out", m_out("--report", "{t}/o.onnx"), "same file"),
    ("out_is_calib", lambda t: [model(t), str(CALIB_COPY(t)), "--calib", str(CALIB_COPY(t))],
     "same file"),
    ("report_is_calib", lambda t: [model(t), str(t / "o.onnx"), "--calib", str(CALIB_COPY(t)),
     "--report", str(t / "c.npz")], "same file"),
    ("save_plan_is_plan", lambda t: [model(t), str(t / "o.onnx"), "--plan",
     write(t, "p.json", plan_doc()), "--save-plan", str(t / "p.json")], "same file"),
    ("out_symlink_to_input", lambda t: [(p := model(t)), symlink(t, "o.onnx", p)], "same file"),
    ("out_hardlink_to_input", lambda t: [(p := model(t)), hardlink(t, "o.onnx", p)],
     "same file"),
    ("report_is_input", lambda t: [(p := model(t)), str(t / "o.onnx"), "--report", p],
     "same file"),
    ("save_plan_is_report", m_out("--report", "{t}/r.json", "--save-plan", "{t}/r.json"),
     "same file"),
    ("out_is_eval", lambda t: [model(t), str(CALIB_COPY(t)), "--eval", str(CALIB_COPY(t))],
     "same file"),
    ("out_dotdot_to_input", lambda t: [model(t), str(t / ".." / t.name / "m.onnx")],
     "same file"),
    ("out_is_profile_db", lambda t: [model(t), own_db(t), "--profile-db", str(t / "db.sqlite")],
     "same file"),
    ("json_is_input", profile_of("--json", "{t}/m.onnx"), "same file"),
    # 8. models onnxruntime cannot run
    ("opset_99", lambda t: [edited_model(t, with_opset(99)), str(t / "o.onnx")], "opset 99"),
    ("conv_in_mismatch", lambda t: [edited_model(t, with_conv_in_channels_doubled),
     str(t / "o.onnx")], "onnxruntime cannot run"),
    ("shape_channels", m_out("--input-shape", "input:1,2,8,8"), "the model takes 1"),
    ("shape_huge", m_out("--input-shape", "input:1,1,100000,100000"), "the limit is"),
    ("shape_rank", m_out("--input-shape", "input:1,1,8"), "rank 3 given"),
    ("shape_unknown_name", m_out("--input-shape", "x:1,1,8,8"), "unknown input 'x'"),
    ("shape_zero", m_out("--input-shape", "input:1,1,0,8"), "positive integers"),
    ("shape_text", m_out("--input-shape", "input:a,b"), "bad --input-shape"),
    ("analyze_shape_channels", lambda t: ["analyze", model(t), "--input-shape", "1,3,8,8"],
     "the model takes 1"),
    ("not_onnx", lambda t: [write(t, "m.onnx", "hello"), str(t / "o.onnx")], "not an ONNX"),
    ("empty_model", lambda t: [write(t, "m.onnx", b""), str(t / "o.onnx")], "not an ONNX"),
    ("truncated_model", lambda t: [write(t, "m.onnx", DIGITS.read_bytes()[:5000]),
     str(t / "o.onnx")], "not an ONNX"),
    ("model_missing", lambda t: [str(t / "absent.onnx"), str(t / "o.onnx")], "not found"),
    ("model_is_folder", lambda t: [str(t), str(t / "o.onnx")], "not found"),
    ("analyze_opset_99", lambda t: ["analyze", edited_model(t, with_opset(99))], "opset 99"),
    ("eval_opset_99", lambda t: ["eval", edited_model(t, with_opset(99)), "--data",
     str(CALIB_COPY(t))], "opset 99"),
    ("profile_opset_99", lambda t: ["profile", edited_model(t, with_opset(99))], "opset 99"),
    # 9. options
    ("time_budget_negative", profile_of("--time-budget", "-1"), "--time-budget"),
    ("time_budget_nan", profile_of("--time-budget", "nan"), "--time-budget"),
    ("time_budget_inf", profile_of("--time-budget", "inf"), "--time-budget"),
    ("time_budget_zero", profile_of("--time-budget", "0"), "--time-budget"),
    ("profile_threads_zero", profile_of("--threads", "0"), "positive integer"),
    ("ratio_nan", m_out("--ratio", "nan"), "--ratio"),
    ("ratio_one", m_out("--ratio", "1"), "--ratio"),
    ("budget_text", m_out("--latency-budget", "fast"), "budget"),
    ("threads_zero", m_out("--threads", "0"), "positive integer"),
    ("calib_limit_zero", m_out("--calib-limit", "0"), "positive integer"),
    ("recover_time_zero", m_out("--recover-time", "0"), "--recover-time"),
    ("recover_time_nan", m_out("--recover-time", "nan"), "--recover-time"),
    ("recover_without_calib", m_out("--ratio", "0.5", "--recover", "lsq"), "needs calibration"),
    ("unknown_option", m_out("--frobnicate"), "unrecognized arguments"),
    ("unknown_target", m_out("--target", "abacus"), "invalid choice"),
    ("no_args", lambda t: [], "give IN OUT"),
    ("rpc_boards_too_many", profile_of("--rpc-tracker", "127.0.0.1:9", "--rpc-key", "k",
     "--rpc-boards", "1000"), "--rpc-boards must be in"),
    ("rpc_key_alone", profile_of("--rpc-key", "k"), "go together"),
    ("rpc_tracker_malformed", profile_of("--rpc-tracker", "nohost", "--rpc-key", "k"),
     "HOST:PORT"),
    ("rpc_tracker_unreachable", lambda t: ["profile", model(t), "--target", "tvm-llvm",
     "--rpc-tracker", f"127.0.0.1:{closed_port()}", "--rpc-key", "k"],
     "unreachable" if importlib.util.find_spec("tvm") else "onnx-hwprune[tvm]"),
    ("eval_batch_zero", lambda t: ["eval", model(t), "--data", str(CALIB_COPY(t)),
     "--batch-size", "0"], "must be positive"),
    ("eval_limit_zero", lambda t: ["eval", model(t), "--data", str(CALIB_COPY(t)),
     "--limit", "0"], "must be positive"),
]
# fmt: on


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def CALIB_COPY(tmp: Path) -> Path:  # noqa: N802 - reads as the constant it stands for
    path = tmp / "c.npz"
    if not path.exists():
        shutil.copyfile(CALIB, path)
    return path


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: link target or (bytes, mtime, mode)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        st = os.lstat(path)
        if path.is_symlink():
            state[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            state[str(path)] = (path.read_bytes(), st.st_mtime_ns, st.st_mode)
        else:
            state[str(path)] = ("dir", st.st_mode)
    return state


def test_corpus_names_are_unique_and_the_readme_counts_them():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names))
    found = re.search(r"corpus of \*\*(\d+) bad inputs\*\*", (REPO / "README.md").read_text())
    assert found and int(found.group(1)) == len(CASES)


@pytest.mark.parametrize(("build", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(build: Build, fragment: str, tmp_path: Path, capfd) -> None:
    case = tmp_path / "case"
    case.mkdir()
    argv = build(case)
    before = _snapshot(case)
    code = main(argv)
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("onnx-hwprune: error:"), lines[0]
    assert fragment in lines[0], lines[0]
    assert _snapshot(case) == before
