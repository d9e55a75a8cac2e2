"""What a latency budget buys: the latency-targeted search's pick against the FLOPs-targeted one at the same
measured latency, and against uniform-L1.

    python scripts/bench_latency_search.py [--arch resnet20] [--batches 1 64] [--latency 0.6] [--epochs 1]

For each batch size (CPU, the ``--runtime`` runtime, ``--threads`` threads, channels rounded to ``--round-to``), with the pretrained ``--arch`` on the
../shared CIFAR-10 data, each step the command a user would type:

1. ``autoprune prune --method uniform --target-latency L``: uniform-L1 at ``L`` of the unpruned model's latency;
2. ``autoprune search --target-latency L --agent cacp``: the latency-targeted pick;
3. ``autoprune search --target-flops T1 T2 ... --agent cacp``: FLOPs-targeted picks at MACs fractions around
   the uniform policy's (``--flops-offsets``), one conditional run answering them all;
4. every policy's latency predicted by that table (the fraction of the base's the search's budget constrains) and
   every policy and the unpruned model timed end to end, interleaved (``LatencyModel.measure_all``); of the
   FLOPs picks, the one whose measured latency is nearest the latency pick's is the row compared (the
   others are listed below the table);
5. the compared policies fine-tuned alike (the ``cpu`` preset, ``--epochs`` epochs from the pretrained weights),
   holdout after each epoch, test once.

A latency the space cannot reach is refused by the first command with the reachable range: on this CPU, torch
eager at batch 1 cannot take resnet20 below 0.61 of its latency (its per-layer overheads stay), so that batch
needs ``--latency 0.7``; FLOPs targets below the space's MACs floor are left out.

Every step is stored in ``--results`` (per batch and budget) and reused, so the benchmark resumes where it was stopped. The latency
tables live in ``--results``/cache (AUTOPRUNE_CACHE), so the prune, the search and the measurement share one
table per setting. The goal (issue 15): the latency-targeted pick more accurate at equal measured speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import SHARED

from autoprune._table import format_table
from autoprune.latency import LatencySettings, build_latency_model
from autoprune.models import create
from autoprune.policy import Policy
from autoprune.pruning import PrunableSpace, make_metric, reachable
from autoprune.training import make_config, train

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
               "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}
HEADER = ["batch", "policy", "MACs kept", "params kept", "latency predicted", "latency kept", "speed-up x", "holdout %",
          "test %", "holdout % tuned", "test % tuned"]


def _run(command: list[str], out: Path) -> Path:
    """Run an autoprune command once: skipped when ``out`` holds its finished output, and a search that was
    stopped part-way continued from its last checkpoint (``--resume``)."""
    if (out / "policy.json").exists():
        return out
    if command[1] == "search" and (out / "config.yaml").is_file():
        command = ["autoprune", "search", "--resume", str(out)]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out


def _latency_flags(args: argparse.Namespace, batch: int) -> list[str]:
    return ["--latency-runtime", args.runtime, "--latency-batch", str(batch), "--latency-threads", str(args.threads)]


def _common(args: argparse.Namespace) -> list[str]:
    return ["--arch", args.arch, "--checkpoint", args.checkpoint, "--data-dir", args.data_dir, "--device", "cpu",
            "--seed", str(args.seed)] + (["--round-to", str(args.round_to)] if args.round_to else [])


def _finetune(args: argparse.Namespace, policy: Path, out: Path) -> dict:
    path = out / "finetune.json"
    if path.exists():
        return json.loads(path.read_text())
    config = make_config("finetune", args.data_dir, policy=str(policy), checkpoint=args.checkpoint, preset="cpu",
                         device="cpu", seed=args.seed, recipe={"epochs": args.epochs})
    start = time.perf_counter()
    run = out / "run"  # resumes from its last epoch when a previous attempt was stopped
    result = train(config, run, resume=(run / "config.yaml").is_file())
    record = {"epochs": args.epochs, "minutes": (time.perf_counter() - start) / 60,
              "holdout": result.metrics["holdout_top1"], "test": result.metrics["test_top1"]}
    path.write_text(json.dumps(record, indent=1))
    return record


def one_batch(args: argparse.Namespace, batch: int) -> list[tuple]:
    target = f"{args.latency:g}"
    rounding = f"-round{args.round_to}" if args.round_to else ""
    root = Path(args.results) / f"{args.runtime}-batch{batch}-latency{target}{rounding}"
    root.mkdir(parents=True, exist_ok=True)
    uniform_dir = _run(["autoprune", "prune", *_common(args), "--target-latency", target, *_latency_flags(args, batch),
                        "--method", "uniform", "--criterion", "l1", "--out", str(root / "uniform"), "--overwrite"],
                       root / "uniform")
    uniform = Policy.load(uniform_dir / "policy.json")
    episodes = ["--episodes", str(args.episodes)] if args.episodes else []
    latency_episodes = ["--episodes", str(args.latency_episodes)] if args.latency_episodes else episodes
    latency_dir = _run(["autoprune", "search", *_common(args), "--agent", "cacp", "--target-latency", target,
                        *_latency_flags(args, batch), *latency_episodes, "--out", str(root / "search-latency"),
                        "--overwrite"], root / "search-latency")
    space = PrunableSpace(create(args.arch).eval(), args.arch, round_to=args.round_to)
    low, _ = reachable(space, make_metric(space))  # MACs targets below the space's floor are left out
    flops_targets = [f"{t:g}" for t in sorted({round(uniform.macs_fraction + d, 3) for d in args.flops_offsets})
                     if low < t < 1]
    flops_dir = _run(["autoprune", "search", *_common(args), "--agent", "cacp", "--target-flops", *flops_targets,
                      *episodes, "--out", str(root / "search-flops"), "--overwrite"], root / "search-flops")
    if args.searches_only:
        return []

    result = json.loads((latency_dir / "result.json").read_text())
    uniform.accuracy = {k: result["uniform"][target][k] for k in ("holdout", "test")}  # judged by the search
    picks = {"latency-targeted pick": Policy.load(latency_dir / "policy.json"), "uniform-L1": uniform}
    flops = {t: Policy.load(flops_dir / f"policy-{t}.json") for t in flops_targets}

    settings = LatencySettings(runtime=args.runtime, batch=batch, threads=args.threads)
    latency = build_latency_model(space, settings)  # the table the prune and the search built (the cache)
    measured_path = root / "measured.json"
    if not measured_path.exists():
        named = {**picks, **{f"flops {t}": p for t, p in flops.items()}}
        base, *times = latency.measure_all([space.channels] + [p.counts(space.names) for p in named.values()],
                                           progress=True)
        measured_path.write_text(json.dumps({"base": base.fastest, **{n: m.fastest for n, m in zip(named, times)}},
                                            indent=1))
    measured = json.loads(measured_path.read_text())
    base = measured["base"]
    nearest = min(flops_targets, key=lambda t: abs(measured[f"flops {t}"] - measured["latency-targeted pick"]))
    picks = {"latency-targeted pick": picks["latency-targeted pick"],
             f"FLOPs-targeted pick ({nearest} of the MACs)": flops[nearest], "uniform-L1": uniform}
    times = {**measured, f"FLOPs-targeted pick ({nearest} of the MACs)": measured[f"flops {nearest}"]}
    rows = []
    for name, policy in picks.items():
        folder = root / "finetune" / name.split(" ")[0].lower()
        folder.mkdir(parents=True, exist_ok=True)
        policy_path = folder / "policy.json"
        if not policy_path.exists():
            policy.save(policy_path)
        tuned = _finetune(args, policy_path, folder)
        predicted = latency(np.asarray(policy.counts(space.names))) / latency.base
        rows.append((batch, name, f"{policy.macs_fraction:.3f}", f"{policy.params_fraction:.3f}", f"{predicted:.3f}",
                     f"{times[name] / base:.3f}", f"{base / times[name]:.2f}", f"{100 * policy.accuracy['holdout']:.2f}",
                     f"{100 * policy.accuracy['test']:.2f}", f"{100 * tuned['holdout']:.2f}", f"{100 * tuned['test']:.2f}"))
    others = ", ".join(f"{t}: {measured[f'flops {t}'] / base:.3f}" for t in flops_targets)
    print(f"batch {batch}: base {1e3 * base:.2f} ms; FLOPs picks' latency kept by MACs target: {others}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20", choices=sorted(CHECKPOINTS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--latency", type=float, default=0.6, help="the latency budget, a fraction of the base's")
    parser.add_argument("--flops-offsets", type=float, nargs="+", default=[-0.1, -0.05, 0.0, 0.05],
                        help="MACs targets of the FLOPs search, relative to uniform-L1's MACs fraction at the latency")
    parser.add_argument("--episodes", type=int, help="search episodes per target (default: cacp's)")
    parser.add_argument("--latency-episodes", type=int,
                        help="the latency search's episodes per target (default: --episodes): it has fewer targets "
                             "than the FLOPs search, so equal budgets need more per target")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tune epochs, the cpu preset (default 1)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"], help="the latency's runtime")
    parser.add_argument("--round-to", type=int, help="every search and prune keeps multiples of N channels")
    parser.add_argument("--threads", type=int, default=1, help="threads the latency is measured with (default 1)")
    parser.add_argument("--searches-only", action="store_true",
                        help="stop after the prune and the searches: they may run beside other work, the timing "
                             "that follows may not (run again without it, alone)")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--checkpoint", help="default: the arch's pretrained checkpoint in ../shared")
    parser.add_argument("--results", default="bench-results/latency-search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or str(SHARED / "pretrained" / "cifar10" / CHECKPOINTS[args.arch])
    Path(args.results).mkdir(parents=True, exist_ok=True)
    os.environ["AUTOPRUNE_CACHE"] = str(Path(args.results).resolve() / "cache")  # the tables, shared by every step
    rows = [row for batch in args.batches for row in one_batch(args, batch)]
    if args.searches_only:
        print(f"searches done in {args.results}; run the same command without --searches-only, alone, to time and "
              "fine-tune")
        return
    print(f"\n{args.arch}, latency budget {args.latency:g} of the unpruned model's (CPU, {args.runtime}, {args.threads} "
          f"thread(s)); accuracy BN-recalibrated, then after {args.epochs} fine-tune epoch(s) (cpu preset)")
    print(format_table(HEADER, rows))


if __name__ == "__main__":
    main()
