"""Benchmark the training loop, and fine-tune given policies on the same short budget.

    python scripts/bench_train.py [--arch resnet56] [--data-dir ../shared/data/cifar10] [--rounds 5] [--batches 8]
    python scripts/bench_train.py --policies a.json b.json [--epochs 2] [--checkpoint ...resnet56-4bfd9763.th]
        [--precision auto|float32]

Figure 1 (always): training throughput (images/s) of autoprune's fine-tune
loop (``Trainer.train_epoch``: the per-batch lr schedule, loss and accuracy
sums on the device, the progress bar, channels-last, the autocast of precision
"auto": float16 on CUDA, bfloat16 on a CPU with native bfloat16) against
a bare PyTorch loop (``zero_grad``, ``cross_entropy``, ``backward``, ``step``)
on the same model (``--arch`` pruned uniformly to 50 % of its MACs), the same
optimiser and the same augmented batches from the same on-device loader,
in both memory layouts: the bare loop in the Trainer's layout and precision
differs from it only by the loop's own overhead (goal >= 95 %); the contiguous
one shows what the layout buys, and the Trainer with ``precision="float32"``
what the autocast buys (on a CPU without native bfloat16 the two Trainers are
the same). The loops take turns round by
round in one process (timings on shared machines swing) and their medians are
compared. It also prints the time a full CIFAR-10 training epoch (45,000
images) would take. The torch thread count is torch's default (set
``OMP_NUM_THREADS`` to change it).

Figure 2 (``--policies``): each policy fine-tuned with the same budget (by
default 2 epochs, lr 0.01 cosine, batch 128) from the checkpoint it was cut
from; its holdout accuracy before (BN-recalibrated, as the search measured it)
and after, and its test accuracy, measured once at the end.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from autoprune._device import autocast_dtype, resolve_device
from autoprune._table import format_table
from autoprune.data import DeviceLoader, load_dataset
from autoprune.models import create, get_model_info
from autoprune.policy import Policy
from autoprune.pruning import prune
from autoprune.training import Recipe, Trainer, make_config, train

SHARED = Path(__file__).resolve().parents[2] / "shared"
FULL_EPOCH = 45_000  # CIFAR-10 training images less the 5,000 of the holdout


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DeviceLoader,
               scaler: torch.amp.GradScaler, dtype: torch.dtype | None) -> float:
    """The textbook loop over one pass of ``loader``; seconds taken."""
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(loader.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if loader.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def throughput(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    base = create(args.arch).eval()
    _, pruned = prune(base, args.arch, 0.5, method="uniform", criterion="l1")
    info = get_model_info(args.arch)
    if args.data_dir and Path(args.data_dir).exists():
        data = load_dataset(args.data_dir)
        images, labels, source = data.train_images, data.train_labels, args.data_dir
    else:  # the loop's speed does not depend on the pixels
        images = torch.randint(0, 256, (args.batches * args.batch_size, 3, 32, 32), dtype=torch.uint8)
        labels, source = torch.randint(0, 10, (len(images),)), "random images"
    n = args.batches * args.batch_size
    common = {"batch_size": args.batch_size, "mean": info.mean, "std": info.std, "device": device, "shuffle": True,
              "augment": True, "drop_last": True}
    devnull = open(os.devnull, "w")  # noqa: SIM115 (the bars' cost is part of the loop; their text is not wanted)
    loops = {}
    for name, precision in (("autoprune Trainer", "auto"), ("autoprune Trainer, float32", "float32")):
        recipe = Recipe(epochs=args.rounds + 1, lr=0.01, batch_size=args.batch_size, precision=precision)
        trainer = Trainer(copy.deepcopy(pruned), recipe, DeviceLoader(images[:n], labels[:n], channels_last=True,
                                                                      **common), device)
        loops[name] = functools.partial(lambda t: t.train_epoch(progress=True, file=devnull).seconds, trainer)
    dtype = autocast_dtype(device)
    for name, fmt in (("bare loop, channels-last", torch.channels_last), ("bare loop, contiguous",
                                                                          torch.contiguous_format)):
        model = copy.deepcopy(pruned).to(device, memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        loader = DeviceLoader(images[:n], labels[:n], channels_last=fmt is torch.channels_last, **common)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        loops[name] = functools.partial(bare_epoch, model, optimizer, loader, scaler, dtype)
    speed: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds + 1):  # round 0 warms every loop up and is not counted; the order rotates
        names = list(loops)[r % len(loops):] + list(loops)[:r % len(loops)]
        for name in names:
            seconds = loops[name]()
            if r:
                speed[name].append(n / seconds)
    devnull.close()
    median = {name: statistics.median(s) for name, s in speed.items()}
    same = median["bare loop, channels-last"]
    rows = [(name, f"{m:.0f}", f"{FULL_EPOCH / m:.1f}", f"{m / same:.3f}") for name, m in median.items()]
    print(f"{args.arch} at 50% MACs, batch {args.batch_size}, {args.batches} batches x {args.rounds} rounds, "
          f"device {device}, autocast {dtype}, torch threads {torch.get_num_threads()}, data: {source}")
    print(format_table(["loop", "images/s (median)", "s per 45k-image epoch", "vs bare channels-last"], rows))
    ratio = median["autoprune Trainer"] / same
    print(f"Trainer / bare loop in its layout {ratio:.3f} (goal >= 0.95): {'met' if ratio >= 0.95 else 'NOT met'}; "
          f"channels-last / contiguous {same / median['bare loop, contiguous']:.2f}x; "
          f"autocast / float32 {median['autoprune Trainer'] / median['autoprune Trainer, float32']:.2f}x")


def finetune_policies(args: argparse.Namespace) -> None:
    rows = []
    for path in args.policies:
        policy = Policy.load(path)
        name = f"{Path(path).parent.name}-{Path(path).stem}"
        config = make_config("finetune", args.data_dir, policy=path, checkpoint=args.checkpoint, preset="cpu",
                             device=args.device, seed=args.seed,
                             recipe={"epochs": args.epochs, "lr": args.lr, "schedule": "cosine",
                                     "batch_size": args.batch_size, "precision": args.precision})
        start = time.perf_counter()
        result = train(config, Path(args.out) / name, overwrite=True)
        m = result.metrics
        before = policy.accuracy.get("holdout")
        rows.append((str(path), policy.provenance.get("agent", "?"), f"{100 * policy.macs_fraction:.1f}",
                     f"{100 * before:.2f}" if before is not None else "-", f"{100 * m['holdout_top1']:.2f}",
                     f"{100 * m['test_top1']:.2f}", f"{(time.perf_counter() - start) / 60:.1f}"))
    print(f"fine-tuned {args.epochs} epochs, lr {args.lr} cosine, batch {args.batch_size}, seed {args.seed}, "
          f"precision {args.precision} (autocast {autocast_dtype(resolve_device(args.device), args.precision)}); "
          f"runs in {args.out}")
    print(format_table(["policy", "agent", "MACs kept %", "holdout before %", "holdout after %", "test %", "minutes"],
                       rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet56", help="the zoo model pruned to 50 %% of its MACs (figure 1)")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each loop (figure 1)")
    parser.add_argument("--batches", type=int, default=8, help="batches per round (figure 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--policies", nargs="+", metavar="POLICY", help="fine-tune these instead (figure 2)")
    parser.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "cifar10" / "resnet56-4bfd9763.th"),
                        help="the checkpoint the policies were cut from")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "float32"], default="auto",
                        help="of the fine-tunes (figure 2): see `autoprune finetune --precision`")
    parser.add_argument("--out", default="runs/bench-train", help="run directories of figure 2")
    args = parser.parse_args()
    if args.policies:
        finetune_policies(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
