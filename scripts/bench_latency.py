"""How well the latency model predicts the measured latency of random policies; what channel rounding does.

    python scripts/bench_latency.py [--arch resnet56] [--runtimes torch onnxruntime] [--batches 1 64]
                                    [--policies 30] [--threads 1] [--grid 8] [--cache-dir DIR]
    python scripts/bench_latency.py --cells rounding [--round-to 1 8 16] [--macs 0.4 0.6 0.8]

The ``prediction`` cell (the default). For each runtime and batch: builds the latency table of the model's default space (random weights:
latency does not depend on them) and says how long that took, then draws ``--policies`` random
policies (each group's keep ratio uniform within the space's bounds), builds each pruned model and
times it end to end with the unpruned model among them, all interleaved (``--rounds`` turns of
``--repeats / --rounds`` calls each, see autoprune.latency's timer), and compares the table's prediction
with the fastest call (the figure autoprune predicts, see ``Measurement``):

- median and p90 absolute error in percent of the measurement, and the median signed error (bias): an
  absolute budget (``--target-latency 4.5ms``) depends on these;
- the same for the fraction of the unpruned model's latency, predicted (``latency(c) / latency.base``)
  against measured (both timed together now): a fractional budget (``--target-latency 0.6``) depends on
  these, and they are immune to the machine running at another speed now than when the table was built;
- "again": the policies timed a second time, and the median error of that timing against the first: the
  noise floor of this machine, below which no model's error can be read; "again frac" and "again frac
  median" the same for the fraction of the unpruned model timed with them, by the fastest call and by the
  median (why autoprune budgets the fastest call);
- Spearman's rank correlation of prediction and measurement, and the median spread p90/p10 - 1 of one
  policy's calls (how noisy the machine was).

The goal of issue 15 is a median error of at most 5 % and a p90 of at most 10 %. Without ``--cache-dir``
every table is built afresh in a temporary folder (so the build time is measured); with it, tables are reused.

The ``rounding`` cell: uniform-L1 policies at each ``--macs`` target, in the space with every kept count a
multiple of each ``--round-to`` (``PrunableSpace(round_to=...)``, ``--round-to`` of the commands), all timed
together with the unpruned model: the MACs and the latency each keeps.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune._table import format_table
from autoprune.latency import LatencySettings, Measurement, build_latency_model, runtime_for, time_interleaved
from autoprune.latency._units import pruned_model
from autoprune.models import create
from autoprune.pruning import PrunableSpace, make_metric, reachable, uniform_counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--space", default=None, help="a space of the arch's YAML (default: its default)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="1 on a shared machine; more where cores are free")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=LatencySettings.warmup, help="default: a user's (LatencySettings)")
    parser.add_argument("--repeats", type=int, default=LatencySettings.repeats)
    parser.add_argument("--rounds", type=int, default=LatencySettings.rounds)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", nargs="+", default=["prediction"], choices=["prediction", "rounding"],
                        help="prediction: the latency model against measurements; rounding: the effect of --round-to")
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16], help="the rounding cell's roundings")
    parser.add_argument("--macs", type=float, nargs="+", default=[0.4, 0.6, 0.8],
                        help="the rounding cell's MACs targets (uniform-L1 policies)")
    parser.add_argument("--no-remeasure", dest="remeasure", action="store_false",
                        help="time the policies once (by default twice: the second timing's error is the noise floor)")
    return parser


def prediction(args: argparse.Namespace) -> None:
    """The latency model's predictions against end-to-end timings of random policies (see the module docstring)."""
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
                passes = [latency.measure_all([space.channels, *policies], progress=True)
                          for _ in range(2 if args.remeasure else 1)]
                base, *measured = passes[0]
                fastest = np.array([m.fastest for m in measured])
                absolute = 100 * (predicted - fastest) / fastest
                fraction = 100 * (predicted / latency.base - fastest / base.fastest) / (fastest / base.fastest)
                again = again_fraction = again_median = "-"
                if args.remeasure:  # the same policies timed again: how well a measurement predicts the next one
                    second = np.array([m.fastest for m in passes[1][1:]])
                    again = f"{np.median(np.abs(100 * (second - fastest) / fastest)):.1f}"
                    # as fractions of the unpruned model timed with them, by the fastest call and by the median
                    again_fraction, again_median = (f"{_change(passes, statistic):.1f}" for statistic in ("fastest", "median"))
                spread = np.median([100 * m.spread for m in measured])
                rows.append((runtime, batch, f"{latency.base * 1e3:.2f}", f"{base.fastest * 1e3:.2f}",
                             f"{fastest.min() * 1e3:.2f}", f"{fastest.max() * 1e3:.2f}",
                             f"{np.median(np.abs(absolute)):.1f}", f"{np.percentile(np.abs(absolute), 90):.1f}",
                             f"{np.median(absolute):+.1f}", f"{np.median(np.abs(fraction)):.1f}",
                             f"{np.percentile(np.abs(fraction), 90):.1f}", again, again_fraction, again_median,
                             f"{spearmanr(predicted, fastest).statistic:.3f}", f"{spread:.0f}", len(latency.tables), built))
                print(format_table(HEADERS, rows[-1:]), flush=True)
    print(f"\n{args.arch} ({space.name} space, {n} groups), {args.policies} random policies, {args.threads} thread(s), "
          f"grid {args.grid}, {args.repeats} calls in {args.rounds} interleaved rounds per policy")
    print(format_table(HEADERS, rows))


def rounding(args: argparse.Namespace) -> None:
    """What channel rounding does to latency: uniform-L1 policies at the same MACs targets with every group's kept
    count a multiple of each ``--round-to``, timed together with the unpruned model (interleaved)."""
    torch.manual_seed(args.seed)
    model = create(args.arch).eval()
    spaces = {r: PrunableSpace(model, args.arch, args.space, round_to=r) for r in args.round_to}
    first = spaces[args.round_to[0]]
    named = {"unpruned": first.channels}
    for target in args.macs:
        for r, sp in spaces.items():
            low, _ = reachable(sp, make_metric(sp))
            if target >= low:  # a coarse rounding of a narrow network may not reach low targets: left out
                named[f"{target:g}/{r}"] = uniform_counts(sp, target)
    rows = []
    for runtime in args.runtimes:
        for batch in args.batches:
            settings = LatencySettings(runtime=runtime, batch=batch, threads=args.threads, warmup=args.warmup,
                                       repeats=args.repeats, rounds=args.rounds)
            prepare = runtime_for(settings).prepare
            example = torch.randn(batch, *first.info.input_size)
            runners = [prepare(pruned_model(first, c), (example,)) for c in named.values()]
            base, *measured = time_interleaved(runners, settings, progress=True, desc=f"{runtime} batch {batch}")
            for (name, counts), m in zip(list(named.items())[1:], measured):
                target, r = name.split("/")
                rows.append((runtime, batch, target, r, f"{first.macs(counts) / first.base.macs:.3f}",
                             f"{m.fastest / base.fastest:.3f}", f"{base.fastest / m.fastest:.2f}",
                             f"{1e3 * m.fastest:.2f}", f"{100 * m.spread:.0f}"))
            print(format_table(ROUNDING_HEADERS, rows[-len(measured):]), flush=True)
    print(f"\n{args.arch} ({first.name} space), uniform-L1 at each MACs target, kept counts multiples of the rounding; "
          f"{args.threads} thread(s), fastest of {args.repeats} calls in {args.rounds} interleaved rounds")
    print(format_table(ROUNDING_HEADERS, rows))


def _change(passes: list[list[Measurement]], statistic: str) -> float:
    """Median change in % between two timings of the same policies, each as a fraction of the unpruned model
    (the first of each timing) by ``statistic``: how reproducible that statistic makes a fractional budget."""
    first, second = ([getattr(m, statistic) / getattr(p[0], statistic) for m in p[1:]] for p in passes[:2])
    return float(np.median(np.abs(100 * (np.array(second) - np.array(first)) / np.array(first))))


def main() -> None:
    args = _parser().parse_args()
    for cell in args.cells:
        globals()[cell](args)


HEADERS = ["runtime", "batch", "base ms", "base now", "min ms", "max ms", "median err %", "p90 err %", "bias %",
           "frac median err %", "frac p90 err %", "again err %", "again frac %", "again frac median %", "Spearman", "p90/p10-1 %", "units", "build s"]


ROUNDING_HEADERS = ["runtime", "batch", "MACs target", "round to", "MACs kept", "latency kept", "speed-up x", "ms",
                    "p90/p10-1 %"]


if __name__ == "__main__":
    main()
