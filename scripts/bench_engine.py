"""Benchmark the foundation's hot paths and print a table against their goals.

    python scripts/bench_engine.py [--data-dir ../shared/data/cifar10] [--rounds 5]

Rows: cost-model query (goal < 50 us), apply(policy) on resnet56 with the
cached structure (goal < 50 ms; beside it, Torch-Pruning re-tracing the model
for every policy, which is what the cache avoids), cached dataset load
(goal < 1 s), evaluator throughput against a bare ``model(x)`` loop on the
same pruned model and batches (goal >= 95 %), and the search's recalibrate +
evaluate step in channels-last against contiguous layout (the Evaluator uses
channels-last on every device because it is faster), and one episode of the
search at 0.5 of the MACs (apply, recalibration, evaluation) against its
forward-pass limit: the pruned model's MACs over the episode's 2,000 images at
the dense peak this process measures (a channels-last 3x3 convolution or a
matmul; goal: the episode within 2x of it); beside it, five random policies
near 0.5 with uneven widths, as a search's are, against the same limit, run as
the Evaluator runs them (batches side by side on CPU threads) and, interleaved,
in one multi-threaded pass at 500 images a batch (as it ran them before). Alternatives are interleaved in
one process and medians reported, because timings on shared machines swing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from autoprune._device import resolve_device
from autoprune._table import format_table
from autoprune.data import DeviceLoader, load_dataset, make_splits
from autoprune._side_by_side import default_workers
from autoprune.evaluate import default_batch_size, evaluate, recalibrate_bn
from autoprune.models import create, get_model_info
from autoprune.pruning import CUSTOM_PRUNERS, PrunableSpace


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def tp_retrace_apply(model: torch.nn.Module, space: PrunableSpace, kept: dict) -> None:
    """What a caller without our cache does: copy, trace, and prune group by group with Torch-Pruning."""
    pruned = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(pruned, torch.zeros(1, 3, 32, 32),
                                                  customized_pruners=CUSTOM_PRUNERS, verbose=False)
    for g in space.searchable:
        conv = pruned.get_submodule(g.name)
        drop = sorted(set(range(g.channels)) - set(kept[g.name].tolist()))
        graph.get_pruning_group(conv, tp.prune_conv_out_channels, drop).prune()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)

    model = create("resnet56").eval()
    space = PrunableSpace(model, "resnet56")
    rng = np.random.default_rng(0)
    ratio_sets = [rng.uniform(0.2, 1.0, len(space.searchable)) for _ in range(1000)]
    count_sets = [space.counts(r) for r in ratio_sets]
    half = space.counts(np.full(len(space.searchable), 0.5))  # the uniform 0.5 policy
    kept = space.select(half, space.scores("l1"))

    query, apply_cached, apply_retrace = [], [], []
    for _ in range(args.rounds):
        query.append(timed(lambda: [space.cost(c) for c in count_sets]) / len(count_sets))
        apply_cached.append(timed(lambda: space.apply(kept)))
        apply_retrace.append(timed(lambda: tp_retrace_apply(model, space, kept)))

    dataset = load_dataset(args.data_dir)  # decodes once and fills the cache if needed
    loads = [timed(lambda: load_dataset(args.data_dir)) for _ in range(args.rounds)]

    info = get_model_info("resnet56")
    splits = make_splits(len(dataset.train_labels))
    pruned = space.apply(kept).to(device).eval()
    loader = DeviceLoader(dataset.train_images[splits.holdout], dataset.train_labels[splits.holdout],
                          batch_size=500, mean=info.mean, std=info.std, device=device)
    ready = [x for x, _ in loader]  # the bare loop gets its batches already normalised, for free

    def bare() -> None:
        with torch.no_grad():
            for x in ready:
                pruned(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    evaluate(pruned, loader)  # warm-up
    ours, baseline = [], []
    for _ in range(args.rounds):
        ours.append(loader.num_samples / timed(lambda: evaluate(pruned, loader)))
        baseline.append(loader.num_samples / timed(bare))
    ratio = statistics.median(o / b for o, b in zip(ours, baseline))

    # the search's protocol (BN recalibration on 1000 training images, then 1000 holdout images), in the
    # channels-last layout the Evaluator uses against the default contiguous one
    def protocol_loaders(channels_last: bool, batch_size: int = 500) -> tuple[DeviceLoader, DeviceLoader]:
        common = dict(mean=info.mean, std=info.std, device=device, channels_last=channels_last)
        recal = DeviceLoader(dataset.train_images[splits.train[:1000]], dataset.train_labels[splits.train[:1000]],
                             batch_size=100, **common)
        holdout = DeviceLoader(dataset.train_images[splits.holdout[:1000]], dataset.train_labels[splits.holdout[:1000]],
                               batch_size=batch_size, **common)
        return recal, holdout

    layouts = {fmt: (copy.deepcopy(pruned).to(memory_format=fmt), protocol_loaders(fmt == torch.channels_last))
               for fmt in (torch.contiguous_format, torch.channels_last)}
    protocol = {fmt: [] for fmt in layouts}
    for _ in range(args.rounds):
        for fmt, (m, (recal, holdout)) in layouts.items():
            protocol[fmt].append(timed(lambda m=m, recal=recal, holdout=holdout: (recalibrate_bn(m, recal),
                                                                                 evaluate(m, holdout))))
    layout_ratio = statistics.median(a / b for a, b in zip(protocol[torch.contiguous_format],
                                                           protocol[torch.channels_last]))

    # an episode against its forward-pass limit: the pruned model's MACs over the episode's 2,000 images at the
    # peak this process reaches on a dense channels-last 3x3 convolution or a square matmul (the best case)
    # as the Evaluator runs it: batches side by side on CPU threads (autoprune._side_by_side), 100 a batch on a CPU;
    # beside it, the uneven policies in one multi-threaded pass at 500 a batch (before)
    m = layouts[torch.channels_last][0]
    workers = default_workers(device)
    ev_batch = default_batch_size(device)
    recal, holdout = protocol_loaders(True, ev_batch)
    one_holdout = layouts[torch.channels_last][1][1]  # the same images at 500 a batch
    parts = {"apply": [], "recalibrate": [], "evaluate": [], "peak": [], "uneven": [], "one pass": []}
    # a search's policies are uneven (each group its own width): five of the random ones at 0.45-0.55 of the MACs
    full = space.cost(space.channels).macs
    uneven = [c for c in count_sets if 0.45 <= space.cost(c).macs / full <= 0.55][:5]
    uneven_kept = [space.select(c, space.scores("l1")) for c in uneven]

    def uneven_episode(i: int, side_by_side: bool = True) -> float:  # seconds per MAC of one policy's episode
        def episode() -> None:
            model = space.apply(uneven_kept[i]).to(device, memory_format=torch.channels_last).eval()
            if side_by_side:
                recalibrate_bn(model, recal, workers=workers)
                evaluate(model, holdout, workers=workers)
            else:
                recalibrate_bn(model, recal)
                evaluate(model, one_holdout)
        return timed(episode) / space.cost(uneven[i]).macs
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(128, 64, 32, 32, device=device).to(memory_format=torch.channels_last)
    a = torch.randn(1024, 1024, device=device)
    dense = {"conv": (lambda: conv(x), 64 * 64 * 9 * 32 * 32 * 128), "matmul": (lambda: a @ a, 1024 ** 3)}
    with torch.no_grad():
        for f, _ in dense.values():
            f()  # warm-up
        for _ in range(args.rounds):
            parts["apply"].append(timed(lambda: space.apply(kept)))
            parts["recalibrate"].append(timed(lambda: recalibrate_bn(m, recal, workers=workers)))
            parts["evaluate"].append(timed(lambda: evaluate(m, holdout, workers=workers)))
            parts["peak"].append(max(macs / timed(f, repeat=3) for f, macs in dense.values()))
            for i in range(len(uneven)):  # interleaved, policy by policy
                parts["uneven"].append(uneven_episode(i))
                parts["one pass"].append(uneven_episode(i, side_by_side=False))
    episode = sum(statistics.median(parts[k]) for k in ("apply", "recalibrate", "evaluate"))
    macs = space.cost(half).macs
    peak = statistics.median(parts["peak"])
    images = recal.num_samples + holdout.num_samples
    limit = macs * images / peak

    med = statistics.median
    side_gain = med(o / u for o, u in zip(parts["one pass"], parts["uneven"]))
    rows = [
        ("cost-model query (MACs+params)", f"{med(query) * 1e6:.1f} us", "< 50 us", med(query) < 50e-6),
        ("apply(policy), resnet56, cached structure", f"{med(apply_cached) * 1e3:.1f} ms", "< 50 ms", med(apply_cached) < 0.05),
        ("  vs Torch-Pruning re-tracing per policy", f"{med(apply_retrace) * 1e3:.1f} ms",
         f"x{med(apply_retrace) / med(apply_cached):.1f} slower", ""),
        ("cached dataset load (60k images)", f"{med(loads):.2f} s", "< 1 s", med(loads) < 1.0),
        ("evaluator throughput / bare model(x)", f"{ratio:.1%} (median of per-round ratios; {med(ours):.0f} vs {med(baseline):.0f} img/s)",
         ">= 95%", ratio >= 0.95),
        ("recalibrate + evaluate, channels-last speed-up", f"x{layout_ratio:.2f} ({med(protocol[torch.channels_last]):.2f} s "
         f"vs {med(protocol[torch.contiguous_format]):.2f} s contiguous)", "> 1 (the Evaluator's layout)", layout_ratio > 1),
        ("episode at 0.5: apply + recalibrate + evaluate", f"{episode:.2f} s ({med(parts['apply']):.2f} + "
         f"{med(parts['recalibrate']):.2f} + {med(parts['evaluate']):.2f})", "", ""),
        (f"  forward-pass limit ({macs / 1e6:.0f}M MACs x {images} images)", f"{limit:.2f} s at "
         f"{2 * peak / 1e9:.0f} GFLOP/s dense peak", "", ""),
        ("  episode / limit", f"x{episode / limit:.1f}", "<= 2", episode / limit <= 2),
        (f"  uneven widths ({len(uneven)} random policies at 0.45-0.55 of the MACs) / limit",
         f"x{med(parts['uneven']) * peak / images:.1f}", "<= 2", med(parts["uneven"]) * peak / images <= 2),
        (f"  their episode: {workers} batches side by side (batch {ev_batch}) vs one pass (batch 500)",
         f"x{side_gain:.2f} faster (one pass x{med(parts['one pass']) * peak / images:.1f} the limit)",
         "> 1 (the Evaluator's way)", side_gain > 1),
    ]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    print(format_table(["measure", "value", "goal", "met"], [(a, b, c, {True: "yes", False: "NO", "": ""}[d]) for a, b, c, d in rows]))


if __name__ == "__main__":
    main()
