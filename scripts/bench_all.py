"""The comparison that matters on this machine, as one table and one plot.

    python scripts/bench_all.py [--agents cacp tpe random cmaes qmc ddpg] [--top 1] [--epochs 2]

Pretrained resnet56 on the ../shared CIFAR-10 data at 0.5 of the MACs:

1. every agent searches with the same number of evaluations (the default
   search's; the `agents` cell of bench_search.py, whose stored results it
   reuses), and its pick is measured BN-recalibrated, not fine-tuned;
2. the ``--top`` picks with the best holdout accuracy, and the uniform-L1
   policy as the reference, are each fine-tuned with the same short budget
   (the ``cpu`` training preset: ``--epochs`` epochs, lr 0.01 cosine, batch
   128) from the pretrained weights, and their test accuracy is measured once.

Writes ``table.md`` and ``agents.png`` into ``--results``/all (fine-tunes are
stored there too and reused; delete them, or --force, to measure again).
The README's results section shows this table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_search

from autoprune._table import format_table
from autoprune.checkpoints import load_model
from autoprune.policy import Policy
from autoprune.pruning import prune
from autoprune.training import make_config, train

HEADER = ["agent", "evaluations", "MACs kept", "params kept", "holdout %", "test %", "test % fine-tuned",
          "search min", "fine-tune min"]


def _uniform_policy(args: argparse.Namespace, record: dict, out: Path) -> Path:
    """The uniform-L1 policy at 0.5, with the accuracies the search measured for it beside its pick."""
    path = out / "uniform-l1-0.5.json"
    if not path.exists():
        model, sha = load_model("resnet56", args.checkpoint)
        policy, _ = prune(model, "resnet56", 0.5, method="uniform", criterion="l1", checkpoint=sha)
        policy.accuracy = {"holdout": record["uniform_holdout"], "test": record["uniform_test"]}
        policy.save(path)
    return path


def finetune_cell(args: argparse.Namespace, name: str, policy: Path, out: Path, checkpoint: str | None = None) -> dict:
    """Fine-tune ``policy`` (cut from ``checkpoint``, default ``args.checkpoint``) with the cpu preset's short
    budget; stored as JSON in ``out`` and reused."""
    path = out / f"finetune-{name}.json"
    if path.exists() and not args.force:
        return json.loads(path.read_text())
    config = make_config("finetune", args.data_dir, policy=str(policy), checkpoint=checkpoint or args.checkpoint,
                         preset="cpu", device=args.device, seed=args.seed, recipe={"epochs": args.epochs})
    start = time.perf_counter()
    result = train(config, out / "runs" / name, overwrite=True)
    record = {"policy": str(policy), "epochs": args.epochs, "minutes": (time.perf_counter() - start) / 60,
              "holdout": result.metrics["holdout_top1"], "test": result.metrics["test_top1"]}
    path.write_text(json.dumps(record, indent=1))
    return record


def _plot(rows: list[dict], epochs: int, path: Path) -> None:
    """Test accuracy per agent: BN-recalibrated (hollow) and, where fine-tuned, after it (filled)."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    ys = range(len(rows))
    ax.plot([100 * r["test"] for r in rows], ys, "o", mfc="none", color="tab:blue", label="BN-recalibrated")
    tuned = [(100 * r["test"], 100 * r["tuned"], y) for y, r in enumerate(rows) if r.get("tuned") is not None]
    for before, after, y in tuned:
        ax.plot([before, after], [y, y], color="tab:gray", lw=1)
    ax.plot([a for _, a, _ in tuned], [y for *_, y in tuned], "o", color="tab:green",
            label=f"fine-tuned {epochs} epochs")
    ax.set_yticks(list(ys), [r["agent"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 %")
    ax.set_title("resnet56 at 0.5 of the MACs, same evaluations per agent")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(bench_search.AGENTS), choices=bench_search.AGENTS)
    parser.add_argument("--top", type=int, default=1, help="fine-tune the best N picks by holdout (default 1)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs (default 2)")
    bench_search.add_common_arguments(parser, "bench-results")
    args = parser.parse_args()
    if args.top < 0 or args.epochs < 1:
        parser.error("--top must be at least 0 and --epochs at least 1")
    search_args = argparse.Namespace(results=str(Path(args.results) / "search"), data_dir=args.data_dir,
                                     checkpoint=args.checkpoint, device=args.device, seed=args.seed, force=False)
    Path(search_args.results).mkdir(parents=True, exist_ok=True)
    out = Path(args.results) / "all"
    out.mkdir(parents=True, exist_ok=True)

    records = {agent: bench_search.agent_cell(search_args, agent) for agent in args.agents}
    rows = []
    for agent, r in records.items():
        t = r["targets"]["0.5"]
        policy = Path(search_args.results) / "runs" / r["name"] / "policy-0.5.json"
        rows.append({"agent": agent, "evaluations": r["evaluations"], "macs": t["macs"], "params": t["params"],
                     "holdout": t["holdout"], "test": t["test"], "search": r["wall"] / 60, "policy": policy})
    reference = next(iter(records.values()))["targets"]["0.5"]
    uniform = _uniform_policy(args, reference, out)
    rows.sort(key=lambda row: -row["holdout"])
    cut = Policy.load(uniform)
    rows.append({"agent": "uniform-L1", "evaluations": 0, "macs": cut.macs_fraction, "params": cut.params_fraction,
                 "holdout": reference["uniform_holdout"], "test": reference["uniform_test"], "search": None,
                 "policy": uniform})
    for row in rows[: args.top] + rows[-1:]:  # the best picks by holdout (never by test), and the reference
        tuned = finetune_cell(args, row["agent"], row["policy"], out)
        row.update(tuned=tuned["test"], tune_min=tuned["minutes"])

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    table = format_table(HEADER, [(r["agent"], r["evaluations"], f"{r['macs']:.3f}",
                                   "-" if r["params"] is None else f"{r['params']:.3f}", pct(r["holdout"]),
                                   pct(r["test"]), pct(r.get("tuned")),
                                   "-" if r["search"] is None else f"{r['search']:.1f}",
                                   f"{r['tune_min']:.1f}" if "tune_min" in r else "-") for r in rows])
    title = (f"resnet56 at 0.5 of the MACs, {bench_search.load_preset('cacp').total_episodes} evaluations an agent; "
             f"holdout = 5,000 held-out training images (picks ranked by it), test = the test split, once; "
             f"fine-tuned: {args.epochs} epochs, lr 0.01 cosine, batch 128 (cpu preset)")
    (out / "table.md").write_text(title + "\n\n" + table + "\n")
    _plot(rows, args.epochs, out / "agents.png")
    print(title)
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'agents.png'}")


if __name__ == "__main__":
    main()
