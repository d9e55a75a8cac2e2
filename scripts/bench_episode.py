"""One search evaluation of uneven resnet56 policies, the Evaluator's way against the alternatives (issue 18).

    python scripts/bench_episode.py [--data-dir ../shared/data/cifar10] [--policies 6] [--rounds 2]

An evaluation is what a search episode costs: cut the policy, recalibrate BN on 1,000 training images
(10 batches of 100), score 1,000 holdout images. The policies are random with uneven widths, as a search's
are, at 0.3, 0.5 and 0.7 of the MACs. Variants, interleaved policy by policy (the order reversed every other
round), medians of seconds and of the ratio to the Evaluator's way:

- ``evaluator``: batches side by side on one-thread CPU workers, channels-last, 100 a batch (today's);
- ``one pass``: one multi-threaded pass, 500 a batch (before);
- ``contiguous``: as ``evaluator`` in the default NCHW layout;
- ``rounded up to 8``: as ``evaluator`` with every count rounded up to a multiple of 8 (what padding odd widths
  to aligned ones would run; more MACs).

The accuracy column says whether a variant scored every policy as the Evaluator's way did.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoprune._side_by_side import default_workers
from autoprune._table import format_table
from autoprune.evaluate import Evaluator, evaluate, recalibrate_bn
from autoprune.models import create
from autoprune.pruning import PrunableSpace

VARIANTS = ("evaluator", "one pass", "contiguous", "rounded up to 8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    parser.add_argument("--policies", type=int, default=6, help="random policies (spread over 0.3/0.5/0.7)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    ev = Evaluator.from_data_dir(args.data_dir, "resnet56", recal_batches=10, reward_samples=1000, device="cpu")
    space = PrunableSpace(create("resnet56").eval(), "resnet56")
    scores = space.scores("l1")
    full, base = space.channels, space.cost(space.channels).macs
    rng = np.random.default_rng(0)
    policies = []
    for target in [(0.3, 0.5, 0.7)[i % 3] for i in range(args.policies)]:
        while True:
            counts = space.counts(rng.uniform(0.1, 1.0, len(space.searchable)))
            if abs(space.cost(counts).macs / base - target) < 0.03:
                policies.append(counts)
                break
    recal, reward = list(ev.recal_loader), list(ev.parts["reward"])
    nchw = ([(x.contiguous(), y) for x, y in recal], [(x.contiguous(), y) for x, y in reward])
    one_pass = [(torch.cat([x for x, _ in reward[i:i + 5]]), torch.cat([y for _, y in reward[i:i + 5]]))
                for i in range(0, len(reward), 5)]
    workers = default_workers(ev.device)

    def run(variant: str, counts: np.ndarray) -> tuple[float, float]:
        if variant == "rounded up to 8":
            counts = np.minimum((counts + 7) // 8 * 8, full)
        start = time.perf_counter()
        model = space.apply(space.select(counts, scores))
        if variant == "contiguous":
            model, r, s, k = model.eval(), *nchw, workers
        elif variant == "one pass":
            model, r, s, k = ev.prepare(model), recal, one_pass, 1
        else:
            model, r, s, k = ev.prepare(model), recal, reward, workers
        recalibrate_bn(model, r, workers=k)
        top1 = evaluate(model, s, workers=k).top1
        return time.perf_counter() - start, top1

    seconds = {v: [] for v in VARIANTS}
    accuracy = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        for i, counts in enumerate(policies):
            for v in VARIANTS if (rnd + i) % 2 == 0 else VARIANTS[::-1]:
                s, a = run(v, counts)
                seconds[v].append(s)
                if rnd == 0:
                    accuracy[v].append(a)
    macs = statistics.mean(space.cost(c).macs for c in policies) / 1e6
    rows = []
    for v in VARIANTS:
        ratio = statistics.median(t / e for t, e in zip(seconds[v], seconds["evaluator"]))
        same = "the same" if accuracy[v] == accuracy["evaluator"] else "differs"
        rows.append((v, f"{statistics.median(seconds[v]):.2f}", f"x{ratio:.2f}", same))
    print(f"{len(policies)} uneven resnet56 policies (mean {macs:.0f}M MACs), {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, {workers} workers side by side")
    print(format_table(["variant", "seconds (median)", "time vs evaluator", "accuracy"], rows))


if __name__ == "__main__":
    main()
