"""In-context cost of one stage's layers at channel counts around an alignment (60..64).

Cuts the inner channels of every residual block / chain of one stage (``--prefix``) of a
network to each count in ``--counts``, times the whole networks interleaved (the timing
protocol), then profiles them per node (onnxruntime's profiler, interleaved rounds) and
prints each cut layer's in-context share, scaled to the measured whole-network time, plus
the unattributed residual (layout reorders). This is the measurement behind dropping
the cpu target's ``channel_multiple=4``: the penalty is visible in context, so the
in-context points (``runtime/context_profile.py``) can price it.

Usage::

    python tools/bench_alignment_in_context.py [--network resnet18] [--prefix layer1]
        [--counts 64,63,62,61,60,56] [--threads 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx_graphsurgeon as gs

from onnx_hwprune.cost_models.signature import extract_layers
from onnx_hwprune.frontends.onnx import normalize_model
from onnx_hwprune.runtime.node_profile import attribute_to_layers, profile_nodes_interleaved
from onnx_hwprune.runtime.targets import get_target
from onnx_hwprune.runtime.timing import TimingConfig, measure
from onnx_hwprune.testing.networks import NETWORKS

sys.path.insert(0, str(Path(__file__).parent))
from bench_latency_model import _chains, _prune  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="resnet18", choices=sorted(NETWORKS))
    p.add_argument("--prefix", default="layer1", help="cut the chains whose names start so")
    p.add_argument("--counts", default="64,63,62,61,60,56")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    model = normalize_model(NETWORKS[args.network](seed=0, image_size=args.image_size))
    names = [x.node for x in extract_layers(gs.import_onnx(model))]
    chains = [c for c in _chains(gs.import_onnx(model)) if c[0].name.startswith(args.prefix)]
    watch = [n for c in chains for n in (c[0].name, c[-1].name)]
    variants = {k: _variant(model, chains, k) for k in map(int, args.counts.split(","))}
    backend = get_target("cpu").make_backend(threads=args.threads)
    print(f"| run | count | whole ms | {' | '.join(watch)} | residual |")
    print("|---" * (len(watch) + 4) + "|")
    for rep in range(args.repeat):
        runs = {str(k): backend.prepare(m) for k, m in variants.items()}
        wall = measure({k: r.sample for k, r in runs.items()}, TimingConfig(rounds=7))
        prof = profile_nodes_interleaved({str(k): m for k, m in variants.items()}, args.threads)
        for k, m in variants.items():
            ctx = attribute_to_layers(m, prof[str(k)], names, wall[str(k)].median_ms)
            cells = " | ".join(f"{ctx.layer_ms[n]:.3f}" for n in watch)
            print(f"| {rep} | {k} | {wall[str(k)].median_ms:.2f} | {cells} | "
                  f"{ctx.residual_ms:.2f} |")  # fmt: skip
    return 0


def _variant(model, chains, k):
    keeps = {c[0].name: c[0].outputs[0].shape[1] for c in _chains(gs.import_onnx(model))}
    keeps.update({c[0].name: k for c in chains})
    return _prune(model, keeps)[0]


if __name__ == "__main__":
    sys.exit(main())
