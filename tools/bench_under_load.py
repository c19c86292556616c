"""Under load: plan on a busy core, then compare with a plan made on a quiet one.

The goal (issue 16): profile and prune ResNet-18 and MobileNetV2 while a CPU-bound
background process runs on one of the cores; the loaded plan's speedup, measured
afterwards on a quiet machine, must be at least 90% of the quiet plan's speedup.

Per network (random weights, seed 0, batch 1):

1. **quiet plan** (Q): a fresh profile database, no burner, the real pruning job
   (``prune(..., target="cpu", threads=1, latency_budget=B)``: profiling, planning and
   the closed loop, exactly as the tool runs it);
2. **loaded plan** (L): the burner is started, then the same job on another fresh
   database. Recorded: the points the database flags ``noisy``/``drifted``/``retried``,
   the drift guard's events (groups redone, groups found slow), and the 1-minute load
   average sampled during the job;
3. the burner is stopped, and the original, Q and L are timed in ONE interleaved run
   (``runtime.timing``; ``--repeats`` runs of ``--rounds`` rounds, median of medians),
   so load changes hit all three alike. Reported: speedup(L) / speedup(Q) against 0.9,
   MACs kept, predicted vs measured, each job's wall time.

**The burner** is a separate process (this file with ``--burn``: stdlib only, no
onnx_hwprune import) that spins on integer arithmetic (no memory traffic) pinned with
``os.sched_setaffinity`` to ``--burner-core``. It can never outlive the benchmark: it
stops by itself after ``--burner-seconds`` and as soon as its parent (this process) is
gone, and the benchmark kills it in a ``finally`` block. ``--burner-duty`` below 1 makes
it alternate busy and idle (0.1 s periods): a machine whose speed changes under the job.

**Cores.** The benchmark pins itself (so the jobs and the final timing) to
``--job-core``, by default the burner's core. Sharing one core, the burner takes about
half of the job's time slices and preempts its samples mid-run: the hardest case for the
timing protocol, and the difference between "quiet" and "loaded" is the burner alone
(both jobs and the final timing run on the same core). With the burner on the *other*
core (``--job-core`` != ``--burner-core``) the two only share caches and memory
bandwidth on this 2-core VM: a milder load. Other tenants of the machine are not under
our control: the load average of each job is reported so their share can be judged.

Usage: python tools/bench_under_load.py [--nets resnet18 mobilenet_v2] [--image-size 224]
           [--budget 0.7] [--rounds 7] [--repeats 3] [--burner-core 1] [--job-core 1]
           [--burner-seconds 3600] [--burner-duty 1.0] [--out results.json]
           [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GOAL = 0.9  # speedup(loaded plan) / speedup(quiet plan), measured on a quiet machine
_PERIOD_S = 0.1  # the burner checks its deadline and its parent this often


# -- the burner --------------------------------------------------------------------------
def burn(core: int, seconds: float, duty: float, parent: int) -> None:
    """Spin on ``core`` for ``seconds`` (busy ``duty`` of each period), stopping early when
    ``parent`` is no longer this process's parent (it died: we were re-parented)."""
    os.sched_setaffinity(0, {core})
    end, x = time.monotonic() + seconds, 1
    while (now := time.monotonic()) < end and os.getppid() == parent:
        busy_until = now + duty * _PERIOD_S
        while time.monotonic() < busy_until:
            for _ in range(1000):  # integer work in registers: no memory traffic
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if duty < 1.0:
            time.sleep((1.0 - duty) * _PERIOD_S)


class Burner:
    """The burner process as a context manager: started on enter, stopped on exit (also
    on an exception). ``cpu_s`` and ``outlived_use`` are set when it stops."""

    def __init__(self, core: int, seconds: float, duty: float = 1.0) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self.args = [str(core), str(seconds), str(duty), str(os.getpid())]
        self.proc: subprocess.Popen | None = None
        self.cpu_s = 0.0  # CPU seconds it used: proof the load was there
        self.wall_s = 0.0
        self.outlived_use = False  # still burning when stopped (it covered the whole job)

    def __enter__(self) -> Burner:
        self.proc = subprocess.Popen([sys.executable, __file__, "--burn", *self.args])
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, grace_s: float = 2.0) -> None:
        proc = self.proc
        if proc is None:
            return
        self.cpu_s = _cpu_seconds(proc.pid)  # before poll() reaps it: a zombie still tells
        self.outlived_use = proc.poll() is None
        self.wall_s = time.monotonic() - self._t0
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (zombies included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- what a job saw ------------------------------------------------------------------------
class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval, self.samples, self._stop = interval, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"mean": statistics.fmean(self.samples), "max": max(self.samples)}


class DriftTally(logging.Handler):
    """Counts the drift guard's log events during a job (``runtime/drift.py`` logs each
    group that moved or ran slow; ``runtime/microbench.py`` each group it measures again)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts = {"moved": 0, "slow": 0, "redone": 0}

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith("drift:"):
            self.counts["moved" if "moved" in msg else "slow"] += 1
        elif msg.startswith("group of %d points drifted"):
            self.counts["redone"] += 1

    def __enter__(self) -> DriftTally:
        root = logging.getLogger("onnx_hwprune")
        self._level = root.level
        root.addHandler(self)
        root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger("onnx_hwprune")
        root.removeHandler(self)
        root.setLevel(self._level)


# -- the jobs ------------------------------------------------------------------------------
def run_job(model, db_path: Path, budget: str) -> dict:
    """The real pruning job on a fresh profile database; what it produced and saw."""
    from onnx_hwprune.api import prune
    from onnx_hwprune.cost_models.profile_db import ProfileDB

    for stale in (db_path, *(db_path.with_name(db_path.name + x) for x in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)  # fresh: a --keep folder may hold an earlier run's
    t0 = time.monotonic()
    with DriftTally() as tally, LoadSampler() as load:
        result = prune(model, target="cpu", threads=1, latency_budget=budget,
                       profile_db=str(db_path))  # fmt: skip
    wall_s = time.monotonic() - t0
    if result.model is None:
        raise RuntimeError(f"nothing pruned: {result.reason}")
    with ProfileDB(db_path) as db:
        quality, spreads = db.quality_counts("cpu"), _spreads(db)
    return {"model": result.model, "wall_s": wall_s, "load": load.summary(),
            "quality": quality, "drift_events": tally.counts, "spreads": spreads,
            **_from_report(result.report)}  # fmt: skip


def _spreads(db) -> dict:
    """How wild the stored points are: a point whose IQR exceeds its median (spread
    over 1) is not located within a factor of 2, whatever its flag says."""
    got = [m["spread"] for m in db.export_json()["measurements"]]
    return {"points": len(got), "over_1": sum(s > 1.0 for s in got),
            "median": statistics.median(got) if got else 0.0,
            "max": max(got, default=0.0)}  # fmt: skip


def _from_report(report: dict) -> dict:
    before, after = report["network"]["macs"]
    latency = report.get("latency", {})
    pred = latency.get("predicted", {}).get("network_ms", [None, None])
    rounds = latency.get("closed_loop") or []
    kept = next((r for r in rounds if r.get("kept")), None)
    return {
        "macs_kept": after / before,
        "predicted_ms": pred,
        "predicted_speedup": pred[0] / pred[1] if pred[1] else None,
        "loop_rounds": len(rounds),
        "loop_kept": kept,  # measured while planning (under load for L)
        "loop_note": "; ".join(r["note"] for r in rounds if r.get("note")),
    }


def time_quiet(models: dict, rounds: int, repeats: int) -> dict:
    """Each model's median of ``repeats`` interleaved runs, its worst spread, and the
    per-run speedups over ``original``."""
    from onnx_hwprune.runtime.targets import get_target
    from onnx_hwprune.runtime.timing import TimingConfig, measure

    backend = get_target("cpu").make_backend(threads=1)
    runnables = {k: backend.prepare(m) for k, m in models.items()}
    runs = []
    try:
        for seed in range(repeats):
            config = TimingConfig(rounds=rounds, seed=seed)
            runs.append(measure({k: r.sample for k, r in runnables.items()}, config))
    finally:
        for r in runnables.values():
            r.close()
    return {k: {"ms": statistics.median(run[k].median_ms for run in runs),
                "spread": max(run[k].spread for run in runs),
                "speedups": [run["original"].median_ms / run[k].median_ms for run in runs]}
            for k in models}  # fmt: skip


def bench_network(name: str, args, workdir: Path) -> dict:
    """Quiet job, loaded job, then the quiet interleaved timing of both plans."""
    from onnx_hwprune.testing.networks import NETWORKS

    model = NETWORKS[name](seed=0, image_size=args.image_size)
    quiet = run_job(model, workdir / f"{name}-quiet.sqlite", args.budget)
    _say(f"{name}: quiet job {quiet['wall_s']:.0f} s")
    with Burner(args.burner_core, args.burner_seconds, args.burner_duty) as burner:
        loaded = run_job(model, workdir / f"{name}-loaded.sqlite", args.budget)
    loaded["burner"] = {"cpu_s": burner.cpu_s, "wall_s": burner.wall_s,
                        "covered_job": burner.outlived_use}  # fmt: skip
    _say(f"{name}: loaded job {loaded['wall_s']:.0f} s (burner used {burner.cpu_s:.0f} CPU s)")
    if not burner.outlived_use:
        _say(f"warning: the burner stopped before the {name} job ended: raise --burner-seconds")
    models = {"original": model, "quiet": quiet.pop("model"), "loaded": loaded.pop("model")}
    if args.keep:
        _save(models, args.keep, name)
    load_before = os.getloadavg()[0]
    times = time_quiet(models, args.rounds, args.repeats)
    return _summary(name, quiet, loaded, times, load_before)


def _summary(name: str, quiet: dict, loaded: dict, times: dict, load: float) -> dict:
    speed = {k: times["original"]["ms"] / times[k]["ms"] for k in ("quiet", "loaded")}
    per_run = [ls / qs for ls, qs in zip(times["loaded"]["speedups"], times["quiet"]["speedups"],
                                         strict=True)]  # fmt: skip
    ratio = speed["loaded"] / speed["quiet"]
    return {"network": name, "quiet": quiet, "loaded": loaded, "timing": times,
            "timing_load_avg": load, "speedup": speed, "ratio": ratio,
            "ratio_per_run": per_run, "goal_met": ratio >= GOAL}  # fmt: skip


def _save(models: dict, folder: Path, name: str) -> None:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    for key, m in models.items():
        onnx.save(m, folder / f"{name}-{key}.onnx")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- output --------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    head = ("| network | plan | job s | load avg (mean/max) | points clean/noisy/drifted/"
            "retried | spread >1 | groups redone/slow | loop rounds | MACs kept | predicted "
            "speedup | measured ms (spread) | measured speedup |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        t = r["timing"]
        lines.append(
            f"| {r['network']} | original | | | | | | | 100% | | "
            f"{t['original']['ms']:.3f} ({t['original']['spread']:.0%}) | 1.00x |"
        )
        for key in ("quiet", "loaded"):
            lines.append(_plan_row(r, key))
    return "\n".join(lines)


def _plan_row(r: dict, key: str) -> str:
    job, t = r[key], r["timing"][key]
    q, d = job["quality"], job["drift_events"]
    pred = f"{job['predicted_speedup']:.2f}x" if job["predicted_speedup"] else "-"
    cells = [r["network"], key, f"{job['wall_s']:.0f}",
             f"{job['load']['mean']:.2f}/{job['load']['max']:.2f}",
             f"{q['clean']}/{q['noisy']}/{q['drifted']}/{q['retried']}",
             f"{job['spreads']['over_1']}", f"{d['redone']}/{d['slow']}",
             f"{job['loop_rounds']}{' (stopped: noisy)' if 'noisy' in job['loop_note'] else ''}",
             f"{job['macs_kept']:.1%}", pred,
             f"{t['ms']:.3f} ({t['spread']:.0%})", f"{r['speedup'][key]:.2f}x"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def verdicts(rows: list[dict]) -> str:
    out = []
    for r in rows:
        lo, hi = min(r["ratio_per_run"]), max(r["ratio_per_run"])
        out.append(f"{r['network']}: speedup(loaded)/speedup(quiet) = {r['ratio']:.3f} "
                   f"(per run {lo:.3f}-{hi:.3f}) vs goal {GOAL}: "
                   f"{'met' if r['goal_met'] else 'MISSED'}")  # fmt: skip
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["resnet18", "mobilenet_v2"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--budget", default="0.7", help="latency budget (fraction or ms)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of each interleaved run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs (median)")
    p.add_argument("--burner-core", type=int, default=1)
    p.add_argument("--job-core", type=int, default=None, help="default: the burner's core")
    p.add_argument("--burner-seconds", type=float, default=3600.0, help="its deadline")
    p.add_argument("--burner-duty", type=float, default=1.0, help="busy share of each 0.1 s")
    p.add_argument("--out", type=Path, default=None, help="results as JSON")
    p.add_argument("--keep", type=Path, default=None, help="profiles, models: here (overwritten)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cores = os.sched_getaffinity(0)
    job_core = args.burner_core if args.job_core is None else args.job_core
    if not {args.burner_core, job_core} <= cores or not 0.0 < args.burner_duty <= 1.0:
        print(f"error: cores must be among {sorted(cores)}, duty in (0, 1]", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {job_core})  # the jobs, their timing threads, the final timing
    rows = []
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.nets:
            rows.append(bench_network(name, args, workdir))
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1, default=str))
    print(f"cpu, 1 thread, budget {args.budget}, {args.image_size}x{args.image_size}; job on "
          f"core {job_core}, burner on core {args.burner_core} (duty {args.burner_duty}); "
          f"ms: median of {args.repeats} interleaved runs of {args.rounds} rounds, burner "
          "stopped")  # fmt: skip
    print(table(rows))
    print(verdicts(rows))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--burn"]:  # the burner process: stdlib only, nothing else imported
        core, seconds, duty, parent = sys.argv[2:6]
        burn(int(core), float(seconds), float(duty), int(parent))
        sys.exit(0)
    sys.exit(main())
