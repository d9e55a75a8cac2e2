"""Benchmark the search on the shared CIFAR-10 data and print its tables.

    python scripts/bench_search.py [--cells all] [--episodes 150] [--results bench-results/search]

Every cell is one `autoprune search` command on the pretrained resnet56
(run as a user types it; its wall time includes start-up and the final
pick), with BN-recalibrated, not fine-tuned,
accuracies. A cell's result is stored as JSON in --results (its run
directory under runs/, policies included) and reused by
later invocations (delete it, or --force, to measure again), so the long
benchmark can be run in parts; the tables are printed from what is there.

Cells:
  agents       every agent at target 0.5 with the same number of evaluations (the
               default search's): uniform-L1, random (= the best of random policies),
               tpe, cmaes, qmc, ddpg, cacp. Holdout and test of the final pick, wall time.
  conditional  ddpg at each of 0.3/0.5/0.7 with the episodes per target cacp had;
               compared with one cacp run asked for all three (goal: within 1 point).
  fidelity     tpe with multi-fidelity screening against tpe without (the agents cell).
  workers      --workers 2 against serial on a short random study: trials per minute.
  criteria     the uniform policy at 0.3/0.5/0.7 with each channel criterion (l1 scores a
               group's producing filters; group-* score every layer the group couples, as
               Torch-Pruning's group importance does): which one the default should be;
               where another beats l1 there, the default search (cacp at 0.5) with it
               against the agents cell's cacp.
Below the agents table: the time split of the default search's episodes
(apply, BN recalibration, evaluation, and the rest: agent updates and bookkeeping).
Timings swing from run to run on shared machines; read ratios, not seconds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import time
from pathlib import Path

import yaml

from autoprune._table import format_table
from autoprune.policy import Policy
from autoprune.search import load_preset

SHARED = Path(__file__).resolve().parents[2] / "shared"
AGENTS = ("cacp", "ddpg", "tpe", "random", "cmaes", "qmc")
CELLS = ("agents", "conditional", "fidelity", "workers", "criteria")
CRITERIA = ("l1", "group-l1", "group-l2", "group-bn-gamma")
PACKAGES = ("torch", "numpy", "scipy", "torch-pruning", "stable-baselines3", "gymnasium", "optuna", "cmaes")


def run_cell(name: str, args: argparse.Namespace, *, agent: str, targets: tuple[float, ...] = (0.5,),
         episodes: int | None = None, **flags: object) -> dict:
    """One search cell: the `autoprune search` command a user would type, timed from outside; cached as JSON."""
    path = Path(args.results) / f"{name}.json"
    if path.exists() and not args.force:
        return json.loads(path.read_text())
    out = Path(args.results) / "runs" / name
    command = ["autoprune", "search", "--arch", "resnet56", "--agent", agent, "--data-dir", args.data_dir,
               "--checkpoint", args.checkpoint, "--device", args.device, "--seed", str(args.seed),
               "--target-flops", *map(str, targets), "--out", str(out), "--overwrite"]
    command += ["--episodes", str(episodes)] if episodes is not None else []
    for flag, value in flags.items():
        command += [f"--{flag.replace('_', '-')}"] + ([] if value is True else [str(value)])
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    result = json.loads((out / "result.json").read_text())
    policies = {p.stem.removeprefix("policy-"): Policy.load(p) for p in out.glob("policy-*.json")}
    record = {"name": name, "agent": agent, "command": " ".join(command), "wall": wall, "packages": _versions(),
              "evaluations": result["evaluations"], "seconds": result["seconds"],
              "episodes": (len((out / "episodes.csv").read_text().splitlines()) - 1
                           if (out / "episodes.csv").exists() else 0),  # a handcrafted method plays none
              "targets": {t: {"macs": p.macs_fraction, "params": p.params_fraction, **p.accuracy,
                              "uniform_holdout": result["uniform"][t]["holdout"],
                              "uniform_test": result["uniform"][t]["test"]} for t, p in policies.items()}}
    path.write_text(json.dumps(record, indent=1))
    return record


def _versions() -> dict[str, str]:
    """The packages a search's figures depend on: an agent's results follow its library's and torch's numerics,
    so a cell that no longer reproduces is traced to code or to packages by comparing these."""
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    return {name: version(name) for name in PACKAGES}


def _preset(args: argparse.Namespace, name: str, **changes: object) -> str:
    """A copy of a shipped preset with ``changes``, written next to the results."""
    preset = load_preset(name).to_dict()
    preset.pop("name")
    preset.update(changes)
    path = Path(args.results) / "presets" / f"{name}-{'-'.join(f'{k}{v}' for k, v in changes.items())}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(preset))
    return str(path)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def agent_cell(args: argparse.Namespace, agent: str) -> dict:
    """``agent`` at 0.5 with the default search's number of evaluations (cacp: the default command itself)."""
    episodes = None if agent == "cacp" else load_preset("cacp").total_episodes
    return run_cell(f"agent-{agent}", args, agent=agent, episodes=episodes)


def agents(args: argparse.Namespace) -> None:
    default = load_preset("cacp")
    evaluations = default.total_episodes
    rows, records = [], {}
    for agent in args.agents:
        records[agent] = r = agent_cell(args, agent)
        t = r["targets"]["0.5"]
        rows.append((agent, r["episodes"], r["evaluations"], f"{t['macs']:.3f}", _pct(t["holdout"]), _pct(t["test"]),
                     f"{r['wall'] / 60:.1f}"))
    if "cacp" not in records:
        print(format_table(["agent", "episodes", "evaluations", "MACs kept", "holdout %", "test %", "wall min"], rows))
        return
    t = records["cacp"]["targets"]["0.5"]
    rows.insert(0, ("uniform-L1", 0, 0, f"{t['macs']:.3f}", _pct(t["uniform_holdout"]), _pct(t["uniform_test"]), "-"))
    print(f"\nresnet56 at 0.5 of the MACs, {evaluations} evaluations an agent (cacp: {default.episodes} at each of "
          f"{list(default.targets)}); holdout = all 5000 held-out train images, test once:")
    print(format_table(["agent", "episodes", "evaluations", "MACs kept", "holdout %", "test %", "wall min"], rows))
    s = records["cacp"]["seconds"]
    rest = s["search"] - s["apply"] - s["recalibrate"] - s["evaluate"]
    print(f"\ntime split of the default search (cacp), {records['cacp']['evaluations']} evaluations:")
    print(format_table(["part", "seconds", "share %"],
                       [(k, f"{s[k]:.1f}", f"{100 * s[k] / s['search']:.1f}") for k in ("apply", "recalibrate", "evaluate")]
                       + [("agent + bookkeeping", f"{rest:.1f}", f"{100 * rest / s['search']:.1f}"),
                          ("search", f"{s['search']:.1f}", "100.0")]))


def conditional(args: argparse.Namespace) -> None:
    default = load_preset("cacp")
    per_target = default.episodes
    warmup = default.warmup_episodes // len(default.targets)
    cacp = run_cell("cacp-all-targets", args, agent="cacp", targets=default.targets)  # its three picks
    rows = []
    for target in default.targets:
        preset = _preset(args, "ddpg", episodes=per_target, warmup_episodes=warmup)
        r = run_cell(f"ddpg-{per_target}-t{target:g}", args, agent=preset, targets=[target])
        d, c = r["targets"][f"{target:g}"], cacp["targets"][f"{target:g}"]
        rows.append((f"{target:g}", _pct(d["holdout"]), _pct(d["test"]), _pct(c["holdout"]), _pct(c["test"]),
                     f"{100 * (c['test'] - d['test']):+.2f}", _pct(c["uniform_test"])))
    print(f"\ncacp trained once on {list(default.targets)} ({per_target} episodes a target) against a ddpg run at "
          f"each target ({per_target} episodes, {warmup} warm-up):")
    print(format_table(["target", "ddpg holdout %", "ddpg test %", "cacp holdout %", "cacp test %", "cacp - ddpg test",
                        "uniform-L1 test %"], rows))


def fidelity(args: argparse.Namespace) -> None:
    episodes = load_preset("cacp").total_episodes
    plain = run_cell("agent-tpe", args, agent="tpe", episodes=episodes)
    screened = run_cell("tpe-multi-fidelity", args, agent="tpe", episodes=episodes, multi_fidelity=True)
    rows = [(name, r["evaluations"], _pct(r["targets"]["0.5"]["holdout"]), _pct(r["targets"]["0.5"]["test"]),
             f"{r['seconds']['search'] / 60:.1f}") for name, r in (("tpe", plain), ("tpe + median pruner", screened))]
    print(f"\nmulti-fidelity (a quarter of the reward images first, median pruner), {episodes} trials each:")
    print(format_table(["agent", "full evaluations", "holdout %", "test %", "search min"], rows))


def workers(args: argparse.Namespace) -> None:
    rows = []
    for n in (1, 2):
        r = run_cell(f"workers-{n}", args, agent="random", episodes=args.worker_trials, workers=n)
        rows.append((n, r["episodes"], f"{r['seconds']['search']:.0f}",
                     f"{60 * r['episodes'] / r['seconds']['search']:.1f}"))
    speedup = float(rows[1][3]) / float(rows[0][3])
    print(f"\n--workers on this machine ({args.worker_trials} random trials):")
    print(format_table(["workers", "trials", "search s", "trials/min"], rows))
    print(f"speed-up of 2 workers over serial: {speedup:.2f}x")


def criteria(args: argparse.Namespace) -> None:
    targets = load_preset("cacp").targets
    rows, mean = [], {}
    for criterion in CRITERIA:
        preset = _preset(args, "uniform", criterion=criterion)
        r = run_cell(f"uniform-{criterion}", args, agent=preset, targets=targets)
        cells = [r["targets"][f"{t:g}"] for t in targets]
        mean[criterion] = sum(c["holdout"] for c in cells) / len(cells)
        rows.append((criterion, *(f"{_pct(c['holdout'])} / {_pct(c['test'])}" for c in cells), _pct(mean[criterion])))
    print("\nthe uniform policy with each channel criterion (BN-recalibrated; holdout / test %, test measured once):")
    print(format_table(["criterion", *(f"{t:g} of the MACs" for t in targets), "mean holdout %"], rows))
    best = max(mean, key=mean.get)
    print(f"best by holdout: {best}")
    if best == "l1":
        return
    # the uniform policy is not what a user keeps: the default search (cacp at 0.5) with each, judged alike
    searched = {"l1": run_cell("agent-cacp", args, agent="cacp"),
                best: run_cell(f"cacp-{best}", args, agent=_preset(args, "cacp", criterion=best), targets=(0.5,))}
    print(f"\nthe default search (cacp at 0.5, {load_preset('cacp').total_episodes} episodes) with each criterion:")
    print(format_table(["criterion", "MACs kept", "holdout %", "test %", "uniform-L1 holdout %", "wall min"],
                       [(c, f"{r['targets']['0.5']['macs']:.3f}", _pct(r["targets"]["0.5"]["holdout"]),
                         _pct(r["targets"]["0.5"]["test"]), _pct(r["targets"]["0.5"]["uniform_holdout"]),
                         f"{r['wall'] / 60:.1f}") for c, r in searched.items()]))


def add_common_arguments(parser: argparse.ArgumentParser, results: str) -> None:
    """The data, checkpoint, device, seed and result-store options every benchmark script shares."""
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--checkpoint", default=str(SHARED / "pretrained" / "cifar10" / "resnet56-4bfd9763.th"))
    parser.add_argument("--results", default=results, help=f"where results are stored and reused (default {results})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="measure again, ignoring stored results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["all"], choices=["all", *CELLS])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS,
                        help="the agents of the agents cell (default: all)")
    add_common_arguments(parser, "bench-results/search")
    parser.add_argument("--worker-trials", type=int, default=24)
    args = parser.parse_args()
    Path(args.results).mkdir(parents=True, exist_ok=True)
    cells = CELLS if "all" in args.cells else args.cells
    for cell in cells:
        globals()[cell](args)


if __name__ == "__main__":
    main()
