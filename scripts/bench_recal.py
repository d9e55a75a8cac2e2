"""How many training images BN recalibration needs to rank pruned policies.

    python scripts/bench_recal.py [--policies 24] [--sizes 500 1000 2000] [--reference 4000]

Recalibration is most of a search's time (about 70 % of an episode on CPU),
so its size is the protocol's main cost knob. This draws random policies
from the environment (equal numbers at 0.3, 0.5 and 0.7 of MACs kept; random
actions, budget-clipped as any agent's), scores each on the search's reward
part of the holdout after recalibrating BN on each size, and compares every
size with a larger reference recalibration: the rank correlation (Spearman)
of the accuracies, their mean absolute difference, and the seconds a
recalibration takes. The recalibration images of a smaller size are the
first ones of a larger size, so sizes differ only in how many images are used.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from autoprune._table import format_table
from autoprune.checkpoints import load_model
from autoprune.env import EnvConfig, PruningEnv
from autoprune.evaluate import Evaluator, recalibrate_bn
from autoprune.pruning import space_for

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "cifar10" / "resnet56-4bfd9763.th"))
    parser.add_argument("--policies", type=int, default=24)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--reference", type=int, default=4000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, _ = load_model("resnet56", args.checkpoint)
    space = space_for(model, "resnet56", None)
    sizes = [*args.sizes, args.reference]
    evaluators = {n: Evaluator.from_data_dir(args.data_dir, "resnet56", device=args.device, recal_batches=n // 100,
                                             recal_batch_size=100, reward_samples=1000) for n in sizes}
    env = PruningEnv(space, evaluators[args.reference], EnvConfig(targets=(0.3, 0.5, 0.7), reward="acc"))
    scores = space.scores("l1")
    rng = np.random.default_rng(args.seed)
    acc = {n: [] for n in sizes}
    targets = []
    seconds = {n: [] for n in sizes}
    for i in range(args.policies):
        target = (0.3, 0.5, 0.7)[i % 3]
        targets.append(target)
        env.reset(seed=int(rng.integers(2**31)), options={"target": target})
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        kept = space.select(info["counts"], scores)
        for n in sizes:
            pruned = evaluators[n].prepare(space.apply(kept))
            start = time.perf_counter()
            recalibrate_bn(pruned, evaluators[n].recal_loader)
            seconds[n].append(time.perf_counter() - start)
            acc[n].append(evaluators[n].holdout(pruned, part="reward").top1)
        print(f"policy {i + 1}/{args.policies} (target {target}): "
              + ", ".join(f"{n}: {100 * acc[n][-1]:.1f}" for n in sizes), flush=True)
    ref, targets = np.array(acc[args.reference]), np.array(targets)
    rows = []
    for n in sizes:
        a = np.array(acc[n])
        rho = spearmanr(a, ref).statistic
        # a search compares policies of one target: rank agreement within each target matters most
        within = np.mean([spearmanr(a[targets == t], ref[targets == t]).statistic for t in np.unique(targets)])
        rows.append((n, f"{rho:.3f}", f"{within:.3f}", f"{100 * np.abs(a - ref).mean():.2f}",
                     f"{100 * np.abs(a - ref).max():.2f}", f"{np.median(seconds[n]):.2f}"))
    print(f"\n{args.policies} random policies; reference: recalibration on {args.reference} images")
    print(format_table(["recal images", "Spearman vs reference", "Spearman within a target (mean)",
                        "mean |diff| (points)", "max |diff| (points)", "median recal s"], rows))


if __name__ == "__main__":
    main()
