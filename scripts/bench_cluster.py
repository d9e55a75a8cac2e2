"""Benchmark `autoprune sweep` on a real Ray cluster on this machine: one node against two, and a node lost.

    python scripts/bench_cluster.py [--root /tmp/apbench] [--repeats 1] [--episodes 3] [--epochs 4]

Starts a head node and, when a run needs it, a worker node (``ray start``,
1 CPU each, loopback, their own temp dirs; scripts/_ray_nodes.py), and times
the same 4-cell sweep (agents uniform and random at 0.5 and 0.7 of the MACs,
resnet20 on a generated 10-class 32x32 image folder: 32 training and 8 test
images a class) run by `autoprune sweep --ray-address` as a user runs it:

- one node: the head alone, so the cells run one after another;
- two nodes: head and worker, two cells at a time;
- two nodes, one lost: the worker node's processes are stopped as soon as a
  cell on it has reported a fine-tune epoch that is not its last; Tune retries
  that cell on the head from its run directory (its last epoch).

Each repeat runs the three in that order (interleaved across repeats); the
table gives the median wall time of each, the speed-up of two nodes and the
time the lost node cost (lost minus two nodes). Every run is checked: all
cells done, the same results.csv rows. Every Ray process started is stopped at
the end (by process id, not `ray stop`, which would end other users' Ray too).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ray_nodes import LocalCluster, NodeKiller  # noqa: E402

from autoprune._table import format_table  # noqa: E402
from autoprune.models import create  # noqa: E402

CELLS = ["uniform-t0.5", "uniform-t0.7", "random-t0.5", "random-t0.7"]
COMPARED = ("agent", "target", "macs_fraction", "holdout_top1", "test_top1")


def make_data(root: Path) -> Path:
    """A 10-class image folder (32 train, 8 test images a class) and a random resnet20 checkpoint in ``root``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 8)):
        for c in range(10):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": create("resnet20").state_dict()}, root / "r20.th")
    return root


def run_sweep(cluster: LocalCluster, data: Path, out: Path, args: argparse.Namespace,
              killer: NodeKiller | None = None) -> float:
    """Wall seconds of one `autoprune sweep --ray-address` (a fresh driver process), its results checked."""
    command = [sys.executable, "-c", "import sys; from autoprune.cli import main; sys.exit(main())", "sweep",
               "--arch", "resnet20", "--checkpoint", str(data / "r20.th"), "--data-dir", str(data / "data"),
               "--targets", "0.5", "0.7", "--agents", "uniform", "random", "--episodes", str(args.episodes),
               "--finetune-epochs", str(args.epochs), "--preset", "cpu", "--holdout", "40", "--reward-samples", "20",
               "--recal-batches", "1", "--device", "cpu", "--no-report", "--out", str(out),
               "--ray-address", cluster.address]
    start = time.perf_counter()
    if killer is not None:
        killer.start()
    try:
        done = subprocess.run(command, env={**os.environ, **cluster.env()}, capture_output=True,
                              text=True, timeout=args.timeout)
    finally:
        if killer is not None:
            killer.cancel()
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"sweep {out} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/tmp/apbench", help="working folder, removed first (keep it short: Ray's "
                                                                "socket paths are length-limited)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=3, help="search episodes of the random cells")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tune epochs of every cell")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one sweep may take")
    args = parser.parse_args()

    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    data = make_data(root / "tiny")
    times: dict[str, list[float]] = {"one node": [], "two nodes": [], "two nodes, one lost": []}
    victims = []
    reference = None
    with LocalCluster(root / "c") as cluster:
        cluster.start_head()
        for r in range(args.repeats):
            worker = next((n for n in cluster.nodes if n.name.startswith("worker") and not n.stopped), None)
            if worker is not None:
                cluster.stop(worker)
            runs = {}
            out = root / f"one-{r}"
            times["one node"].append(run_sweep(cluster, data, out, args))
            runs["one node"] = out
            worker = cluster.add_worker(f"worker{r}")
            out = root / f"two-{r}"
            times["two nodes"].append(run_sweep(cluster, data, out, args))
            runs["two nodes"] = out
            assert len({rows(out)[c]["node"] for c in CELLS}) == 2, "the two-node sweep used one node"
            out = root / f"lost-{r}"
            killer = NodeKiller(cluster, worker, out, CELLS)
            times["two nodes, one lost"].append(run_sweep(cluster, data, out, args, killer))
            runs["two nodes, one lost"] = out
            if killer.victim is None:
                raise RuntimeError("no cell of the worker node was caught mid-fine-tune: nothing was lost")
            victims.append(killer.victim)
            for name, out in runs.items():
                got = {c: {k: rows(out)[c][k] for k in COMPARED} for c in CELLS}
                if any(rows(out)[c]["status"] != "done" for c in CELLS):
                    raise RuntimeError(f"{name}: not every cell finished ({out / 'results.csv'})")
                reference = reference or got
                if got != reference:
                    raise RuntimeError(f"{name}: results differ from the first run's ({out / 'results.csv'})")
    median = {k: statistics.median(v) for k, v in times.items()}
    table = [(name, len(v), f"{median[name]:.1f}", " ".join(f"{t:.1f}" for t in v)) for name, v in times.items()]
    print(format_table(["4-cell sweep", "runs", "median wall s", "each run s"], table))
    print(f"two nodes against one: {median['one node'] / median['two nodes']:.2f}x faster; "
          f"the lost node cost {median['two nodes, one lost'] - median['two nodes']:.1f} s "
          f"(cells retried: {', '.join(victims)}); every run: 4 cells done, identical results")


if __name__ == "__main__":
    main()
