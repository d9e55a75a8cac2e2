"""The handcrafted methods against the searched agents, on the same protocol.

    python scripts/bench_baselines.py [--methods slimming lasso dcp scp dexp global-l1 ...] [--epochs 2]

Pretrained resnet56 on the ../shared CIFAR-10 data at 0.5 of the MACs. Each
method is one `autoprune search --agent <method>` command (its preset's CPU
budget: 1 epoch of sparsity or mask training for slimming, dcp and scp, 2
epochs of masked fine-tuning for dexp, none for the others), its policy
measured BN-recalibrated; then every policy gets the same short fine-tune
(the ``cpu`` training preset: ``--epochs`` epochs, lr 0.01 cosine, batch 128)
from the weights it was cut from (the method's saved weights where it trains
or refits). DExp's policy removes kernels, not channels, and cannot be
fine-tuned densely: its row's fine-tuned column is its own masked fine-tune.

The searched agents' rows (cacp, tpe, ...) and the uniform-L1 reference come
from bench_search.py's `agents` cell and bench_all.py's fine-tunes (of the same
``--epochs``) where they are stored; `uniform` runs the reference again only
when asked for. Results are
stored in ``--results``/baselines and reused (delete them, or --force).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_all
import bench_search

from autoprune._table import format_table
from autoprune.policy import Policy

METHODS = ("slimming", "lasso", "dcp", "scp", "dexp", "global-l1", "global-bn-gamma", "global-taylor", "uniform")
# by default the ones that differ from the searched agents' uniform-L1 reference, which bench_all.py fine-tunes
DEFAULT = METHODS[:-1]
HEADER = ["agent", "MACs kept", "params kept", "holdout %", "test %", "test % fine-tuned", "method min",
          "fine-tune min"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs (default 2)")
    bench_search.add_common_arguments(parser, "bench-results")
    args = parser.parse_args()
    out = Path(args.results) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    cell_args = argparse.Namespace(**{**vars(args), "results": str(out)})

    rows = []
    for method in args.methods:
        r = bench_search.run_cell(f"method-{method}", cell_args, agent=method)
        t = r["targets"]["0.5"]
        run = out / "runs" / f"method-{method}"
        policy = json.loads((run / "policy-0.5.json").read_text())
        if method == "dexp":  # fine-tuned inside the method with its masks held
            tuned = {"test": t["test"], "minutes": None}
        else:
            weights = policy["provenance"].get("weights")
            tuned = bench_all.finetune_cell(args, method, run / "policy-0.5.json", out,
                                            checkpoint=str(run / weights) if weights else None)
        rows.append((method, f"{t['macs']:.3f}", f"{t['params']:.3f}", _pct(t["holdout"]), _pct(t["test"]),
                     _pct(tuned["test"]), f"{r['wall'] / 60:.1f}",
                     "-" if tuned["minutes"] is None else f"{tuned['minutes']:.1f}"))
    cells = [json.loads(c.read_text()) for c in sorted((Path(args.results) / "search").glob("agent-*.json"))]

    def stored_finetune(name: str) -> dict | None:  # bench_all.py's fine-tune of the same budget, if stored
        path = Path(args.results) / "all" / f"finetune-{name}.json"
        record = json.loads(path.read_text()) if path.exists() else None
        return record if record and record["epochs"] == args.epochs else None

    def row(name: str, macs: str, params: str, t: dict, tuned: dict | None, search_min: str) -> tuple:
        return (name, macs, params, _pct(t["holdout"]), _pct(t["test"]), _pct(tuned["test"] if tuned else None),
                search_min, f"{tuned['minutes']:.1f}" if tuned else "-")

    for r in cells:  # the searched agents, where bench_search stored them
        t = r["targets"]["0.5"]
        rows.append(row(f"{r['agent']} (searched)", f"{t['macs']:.3f}", f"{t['params']:.3f}", t,
                        stored_finetune(r["agent"]), f"{r['wall'] / 60:.1f}"))
    uniform = Path(args.results) / "all" / "uniform-l1-0.5.json"  # bench_all.py saves it
    if cells and uniform.exists():  # the uniform-L1 reference those searches measured, and its stored fine-tune
        t, cut = cells[0]["targets"]["0.5"], Policy.load(uniform)
        rows.append(row("uniform-L1 (reference)", f"{cut.macs_fraction:.3f}", f"{cut.params_fraction:.3f}",
                        {"holdout": t["uniform_holdout"], "test": t["uniform_test"]}, stored_finetune("uniform-L1"),
                        "-"))
    print(f"resnet56 at 0.5 of the MACs; holdout = 5,000 held-out training images, test = the test split, once; "
          f"fine-tuned: {args.epochs} epochs, lr 0.01 cosine, batch 128 (cpu preset) from the method's weights")
    table = format_table(HEADER, rows)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
