"""No data given: the job's calibration data, synthesised from the model's BatchNorm
statistics (``runtime/synthesize.py``) and cached.

The synthesis is deterministic (seeded, a fixed number of steps), so its result, or its
failure to converge, is stored in the tool's cache folder beside the default profile
database, keyed by the model at its planning shape and the synthesis settings: re-running
a job, or another budget for the same model, reuses it (PP-OCRv5's direction classifier
takes ~1-2 min to synthesise on this project's 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_hwprune.errors import UserError
from onnx_hwprune.options import PruneOptions

__all__ = ["synthetic_calibration"]

SYNTHESIS_TIME = 360.0  # seconds the 100 steps may take, projected from the first
CONVERGED = 0.1  # the statistics loss must fall under this share of its start
STEPS = 100
# Synthesis runs torch on this machine's CPU kernels, whose rounding differs between CPUs;
# a pinned job promises the same bytes on any machine.
PINNED = "--profile pins the job to give the same bytes on any machine; give --calib DATA"
SEED = 0


def synthetic_calibration(opts: PruneOptions, source: onnx.ModelProto):
    """``(fit, check, info)``: synthesised inputs split into calibration arrays and
    held-back ones for the checks (recovery fits the first; checked on those same
    samples, a PP-OCRv5 direction classifier at 58% real accuracy agreed with its original
    on 97%); ``info`` says what was done, or why not (fit and check are then None and the
    job checks on random inputs)."""
    if opts.calib is not None or opts.synthetic_data == "off":
        return None, None, {}
    if opts.pinned_profile is not None:
        return None, None, {"used": False, "reason": PINNED}
    arrays, info = _cached(opts, source)
    if arrays is None:
        return None, None, info
    held = max(2, opts.synthetic_samples // 3)
    fit = {k: v[:-held] for k, v in arrays.items()}
    check = {k: v[-held:] for k, v in arrays.items()}
    return fit, check, {**info, "held_back": held}


def _cached(opts: PruneOptions, source: onnx.ModelProto) -> tuple[dict | None, dict]:
    from onnx_hwprune.runtime.synthesize import METHOD, unusable

    reason = unusable(source)
    if reason is not None:
        return None, {"used": False, "reason": reason}
    key = hashlib.sha256(source.SerializeToString())
    key.update(f"{METHOD}|{opts.synthetic_samples}|{STEPS}|{SEED}".encode())
    path = _cache_dir() / f"{key.hexdigest()[:32]}.npz"
    stored = _load(path)
    if stored is not None:
        return stored
    arrays, info = _synthesise(opts, source)
    if arrays is not None or info.get("converged") is False:  # both follow from the model
        _store(path, arrays or {}, info)
    return arrays, info


def _synthesise(opts: PruneOptions, source: onnx.ModelProto) -> tuple[dict | None, dict]:
    from onnx_hwprune.runtime.synthesize import TooSlow, synthesize

    try:
        arrays, info = synthesize(source, samples=opts.synthetic_samples, steps=STEPS,
                                  seed=SEED, time_limit=SYNTHESIS_TIME)  # fmt: skip
    except (UserError, TooSlow) as exc:  # torch missing, an op the converter lacks, size
        return None, {"used": False, "reason": str(exc)}
    except RuntimeError as exc:  # onnxruntime or torch: e.g. a batch size baked in
        first = str(exc).splitlines()[0]
        return None, {"used": False, "reason": f"the model does not run on a batch ({first})"}
    start, end = info["loss"]
    if end > CONVERGED * start:
        reason = f"no convergence in {info['steps']} steps (loss {start:.3g} -> {end:.3g})"
        return None, {"used": False, "converged": False, "reason": reason}
    return arrays, {"used": True, **info}


def _cache_dir() -> Path:
    """The tool's own cache folder (never the folder of a user's ``--profile-db``)."""
    from onnx_hwprune.cost_models.profile_db import default_db_path

    return default_db_path().parent / "synthetic"


def _load(path: Path) -> tuple[dict, dict] | None:
    """A stored synthesis, or None (absent or unreadable: synthesised again)."""
    try:
        with np.load(path) as stored:
            info = json.loads(str(stored["__info__"]))
            arrays = {k: stored[k] for k in stored.files if k != "__info__"}
    except (OSError, ValueError, KeyError):
        return None
    return (arrays or None), {**info, "cached": True}


def _store(path: Path, arrays: dict[str, Any], info: dict) -> None:
    """Atomically (a reader never sees half a file); a cache that cannot be written is
    only a slower next run."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __info__=np.array(json.dumps(info)), **arrays)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
