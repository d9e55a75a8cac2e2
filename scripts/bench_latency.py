"""How well the latency model predicts the measured latency of random policies.

    python scripts/bench_latency.py [--arch resnet56] [--runtimes torch onnxruntime] [--batches 1 64]
                                    [--policies 30] [--threads 1] [--grid 8] [--cache-dir DIR]

For each runtime and batch: builds the latency table of the model's default space (random weights:
latency does not depend on them) and says how long that took, then draws ``--policies`` random
policies (each group's keep ratio uniform within the space's bounds), builds each pruned model and
times it end to end, all of them interleaved (``--rounds`` turns of ``--repeats / --rounds`` calls each,
see autoprune.latency's timer: on a shared machine the speed swings by tens of percent within minutes),
and compares the table's prediction with the measured median: the median and 90th-percentile absolute
error in percent of the measurement, the largest, the median signed error (bias: the calibration's
share of the error; the rest is the table's and the measurements' noise), Spearman's rank correlation,
and the median spread p90/p10 - 1 of one policy's calls (how noisy the machine was). The goal of issue 15
is a median error of at most 5 % and a p90 of at most 10 %. Without ``--cache-dir`` every table is built
afresh in a temporary folder (so the build time is measured); with it, tables are reused.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune._table import format_table
from autoprune.latency import LatencySettings, build_latency_model, runtime_for, time_interleaved
from autoprune.models import create
from autoprune.pruning import PrunableSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--space", default=None, help="a space of the arch's YAML (default: its default)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="1 on a shared machine; more where cores are free")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = create(args.arch).eval()
    space = PrunableSpace(model, args.arch, args.space)
    rng = np.random.default_rng(args.seed)
    n = len(space.searchable)
    policies = [space.counts(rng.uniform(*space.spec.bounds, n)) for _ in range(args.policies)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            for batch in args.batches:
                settings = LatencySettings(runtime=runtime, batch=batch, threads=args.threads, warmup=args.warmup,
                                           repeats=args.repeats, rounds=args.rounds)
                start = time.perf_counter()
                latency = build_latency_model(space, settings, cache_dir=args.cache_dir or tmp, grid=args.grid,
                                              calibration=args.calibration)
                built = "cached" if latency.from_cache else f"{time.perf_counter() - start:.0f}"
                predicted = np.array([latency(c) for c in policies])
                prepare = runtime_for(settings).prepare
                example = torch.randn(batch, *space.info.input_size)
                runners = [prepare(latency.pruned(c), (example,)) for c in policies]
                measured = time_interleaved(runners, settings, progress=True, desc=f"{runtime} batch {batch}")
                median = np.array([m.median for m in measured])
                signed = 100 * (predicted - median) / median
                error = np.abs(signed)
                spread = np.median([100 * m.spread for m in measured])
                rows.append((runtime, batch, f"{latency.base * 1e3:.2f}", f"{median.min() * 1e3:.2f}",
                             f"{median.max() * 1e3:.2f}", f"{np.median(error):.1f}", f"{np.percentile(error, 90):.1f}",
                             f"{error.max():.1f}", f"{np.median(signed):+.1f}", f"{spearmanr(predicted, median).statistic:.3f}", f"{spread:.0f}",
                             len(latency.tables), built))
                print(format_table(HEADERS, rows[-1:]), flush=True)
    print(f"\n{args.arch} ({space.name} space, {n} groups), {args.policies} random policies, {args.threads} thread(s), "
          f"grid {args.grid}, {args.repeats} calls in {args.rounds} interleaved rounds per policy")
    print(format_table(HEADERS, rows))


HEADERS = ["runtime", "batch", "base ms", "min ms", "max ms", "median err %", "p90 err %", "max err %", "bias %", "Spearman",
           "p90/p10-1 %", "units", "build s"]


if __name__ == "__main__":
    main()
