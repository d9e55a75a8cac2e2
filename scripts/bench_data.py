"""Streaming image folders on CPU: loader throughput, memory while streaming, and one search episode at 224 px.

    python scripts/bench_data.py [--root /work/bench/data-bench] [--rounds 5] [--quick]

The folder (20,000 training JPEGs of random sizes in 300-500 px, 100 classes,
plus 2,000 in val/) is generated once under ``--root`` and reused.

1. Throughput: autoprune's StreamLoader (random-resized-crop 224 + flip, the
   training transform) against a bare ``torch.utils.data.DataLoader`` with a
   Pillow dataset doing the same decode, crop, resize and flip, the same
   workers and batch size. The two alternate in one process for several
   rounds (timings here swing 30-50 %); medians and their ratio are reported.
2. Peak RSS while streaming the whole training split (evaluation transform)
   with ``--cache-limit`` far below its decoded size.
3. One search episode of a ResNet-50-like bottleneck network (random init,
   registered as ``bench_resnet50``) at 224 px: BN recalibration on the
   search's default 10 x 100 training images, then the reward evaluation on
   its 1,000 holdout images, with the time split into the workers' decoding
   and transforms (overlapped with the forward passes), the time the model
   waited for data, the forward passes, and the rest.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune._table import format_table  # noqa: E402
from autoprune.data import StreamLoader, Transforms, load_dataset, make_splits  # noqa: E402
from autoprune.data._sources import FileImages  # noqa: E402
from autoprune.evaluate import Evaluator, evaluate, recalibrate_bn  # noqa: E402
from autoprune.models import register_model  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- the folder -------------------------------------------------------------------------------------
def _write(job: tuple[str, int, int]) -> None:
    path, label, seed = job
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(300, 501, 2))
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    small[..., label % 3] = (small[..., label % 3] // 2 + 128).astype(np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=90)


def make_folder(root: Path, train: int, val: int, classes: int = 100) -> None:
    done = root / ".complete"
    if done.is_file():
        return
    jobs = []
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            c = i % classes
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((str(folder / f"{i}.jpg"), c, hash((split, i)) % (1 << 31)))
    with Pool(os.cpu_count()) as pool:
        for k, _ in enumerate(pool.imap_unordered(_write, jobs, chunksize=64)):
            if k % 2000 == 0:
                print(f"  generated {k}/{len(jobs)}", flush=True)
    done.write_text("ok\n")


# -- the bare baseline ------------------------------------------------------------------------------
class BarePillow(torch.utils.data.Dataset):
    """What a user writes by hand: open, RGB, random-resized-crop (torchvision's rule), flip, to a tensor."""

    def __init__(self, paths: list[str], crop: int = 224) -> None:
        self.paths, self.crop = paths, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
        width, height = im.size
        area = width * height
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                break
        else:
            top, left, h, w = 0, 0, height, width
        im = im.resize((self.crop, self.crop), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(im)).permute(2, 0, 1)


def _batches_per_s(make_iter, batches: int, batch_size: int) -> float:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    it = make_iter()
    next(it)  # workers started, first batch in: steady state from here
    start = time.perf_counter()
    for _ in range(batches):
        x = next(it)
        if x.dtype == torch.uint8:  # the bare loader normalises in the main process, as users do
            x = x.float().div_(255).sub_(mean).div_(std)
    seconds = time.perf_counter() - start
    del it
    return batches * batch_size / seconds


def throughput(paths: list[str], labels: torch.Tensor, workers: int, rounds: int, batches: int,
               batch_size: int = 64) -> list[tuple]:
    stream = StreamLoader(FileImages(paths), labels, transforms=Transforms(224), batch_size=batch_size, mean=MEAN,
                          std=STD, shuffle=True, augment=True, workers=workers)
    bare = torch.utils.data.DataLoader(BarePillow(paths), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       prefetch_factor=4, multiprocessing_context="fork", drop_last=True)
    results: dict[str, list[float]] = {"autoprune StreamLoader": [], "bare DataLoader + Pillow": []}
    for r in range(rounds):
        for name, make in (("autoprune StreamLoader", lambda: (x for x, _ in stream)), ("bare DataLoader + Pillow", lambda: iter(bare))):
            results[name].append(_batches_per_s(make, batches, batch_size))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["autoprune StreamLoader"] / med["bare DataLoader + Pillow"]
    rows = [(k, f"{med[k]:.0f}", " ".join(f"{v:.0f}" for v in results[k])) for k in results]
    rows.append(("ratio (goal >= 95 %)", f"{100 * ratio:.1f} %", ""))
    return rows


# -- memory -----------------------------------------------------------------------------------------
def _rss_mib() -> tuple[float, float]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def peak_rss(root: Path, workers: int, limit: str, cache_dir: Path, max_images: int | None) -> list[tuple]:
    ds = load_dataset(root, cache_limit=limit, cache_dir=cache_dir)
    decoded = ds.extra["survey"].decoded_bytes()
    before = _rss_mib()[0]
    n = len(ds.train_labels) if max_images is None else min(max_images, len(ds.train_labels))
    loader = StreamLoader(ds.train_images, ds.train_labels, transforms=Transforms(224), batch_size=100, mean=MEAN,
                          std=STD, workers=workers, limit=n)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    seconds = time.perf_counter() - start
    main, child = _rss_mib()
    return [("folder decoded (uint8)", f"{decoded / 2**30:.2f} GiB"), ("--cache-limit", limit),
            ("loader chosen", ds.why),
            ("images streamed", f"{seen} in {seconds:.0f} s ({seen / seconds:.0f} img/s)"),
            ("peak RSS, main process", f"{main:.0f} MiB (before streaming {before:.0f} MiB)"),
            ("peak RSS, largest worker", f"{child:.0f} MiB")]


# -- one episode ------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class BenchResNet50(nn.Module):
    """ResNet-50's layout (3, 4, 6, 3 bottlenecks; 4.1 GMACs at 224 px), random init."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        cin = 64
        for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for b in range(n):
                blocks.append(Bottleneck(cin, mid, stride if b == 0 else 1))
                cin = mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(x), 1), 1))


@register_model(dataset="imagenet", input_size=(3, 224, 224), first_conv="conv1", classifier="fc")
def bench_resnet50(num_classes: int = 1000) -> nn.Module:
    """A ResNet-50-sized network for this bench (random init)."""
    return BenchResNet50(num_classes)


def episode(root: Path, workers: int, cache_dir: Path, recal: int, reward: int) -> list[tuple]:
    from autoprune.models import create

    ds = load_dataset(root, cache_dir=cache_dir, loader="stream")
    splits = make_splits(len(ds.train_labels), holdout=max(5000, reward + 1), seed=0)
    ev = Evaluator(ds, splits, mean=MEAN, std=STD, batch_size=100, recal_batches=recal // 100, recal_batch_size=100,
                   reward_samples=reward, input_size=224, workers=workers)
    model = ev.prepare(create("bench_resnet50", num_classes=ds.num_classes))
    forward = [0.0]
    marks: list[float] = []
    model.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
    model.register_forward_hook(lambda *_: forward.__setitem__(0, forward[0] + time.perf_counter() - marks.pop()))
    loaders = [ev.recal_loader, ev.parts["reward"]]
    start = time.perf_counter()
    recalibrate_bn(model, ev.recal_loader)
    acc = evaluate(model, ev.parts["reward"])
    wall = time.perf_counter() - start
    wait = sum(loader.timings["wait"] for loader in loaders)
    decode = sum(loader.timings["decode"] for loader in loaders)
    rest = wall - forward[0] - wait
    pct = lambda s: f"{100 * s / wall:.1f} %"  # noqa: E731
    return [("episode (recalibrate + reward)", f"{wall:.1f} s", "100 %",
             f"{recal} recalibration + {acc.samples} reward images, {workers} workers"),
            ("forward passes", f"{forward[0]:.1f} s", pct(forward[0]), "the model"),
            ("waiting for data", f"{wait:.1f} s", pct(wait), "decode/transform not hidden behind the forward"),
            ("rest", f"{rest:.1f} s", pct(rest), "goal < 10 %: copies, normalisation, BN resets, top-k"),
            ("decode/transform in the workers", f"{decode:.1f} s", "(overlapped)", "summed over workers")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("bench-results/data-bench"),
                        help="where the generated folder lives (made once, about 1 GB); its cache goes beside it")
    parser.add_argument("--parts", type=int, nargs="+", choices=(1, 2, 3), default=[1, 2, 3],
                        help="which measurements to run (the long benchmark can be run in parts)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches of 64 timed per round and loader")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="3 rounds of 8 batches, a 200+200-image episode")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    make_folder(args.root, 20000, 2000)
    cache_dir = args.root.parent / "data-bench-cache"
    rounds, batches = (3, 8) if args.quick else (args.rounds, args.batches)
    ds = load_dataset(args.root, cache_dir=cache_dir, loader="stream")
    print(f"{ds!r}; {ds.extra['survey'].summary()}", flush=True)
    if 1 in args.parts:
        print(f"\n1. Training-transform throughput, {args.workers} workers, batch 64, {rounds} rounds x {batches} batches "
              "(interleaved; medians)", flush=True)
        print(format_table(["loader", "images/s (median)", "per round"],
                           throughput(list(ds.train_images.paths), ds.train_labels, args.workers, rounds, batches)))
    if 2 in args.parts:
        print("\n2. Streaming the training split with --cache-limit 256M (evaluation transform)", flush=True)
        print(format_table(["", ""], peak_rss(args.root, args.workers, "256M", cache_dir, 3000 if args.quick else None)))
    recal, reward = (200, 200) if args.quick else (1000, 1000)
    if 3 in args.parts:
        print(f"\n3. One search episode of bench_resnet50 at 224 px, streamed (CPU, {torch.get_num_threads()} threads)",
              flush=True)
        print(format_table(["part", "seconds", "share", "what"], episode(args.root, args.workers, cache_dir, recal, reward)))


if __name__ == "__main__":
    main()
