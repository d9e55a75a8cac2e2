"""`autoprune sweep`: every (target, agent) cell searches, then fine-tunes its policy, as one Ray Tune trial.

    OUT/autoprune-run.json           the marker of a run of autoprune (kind sweep; see autoprune._run_dir)
    OUT/config.yaml                  the cells and their settings (what --resume replays)
    OUT/<agent>-t<target>/search/    the cell's search run (a handcrafted preset, e.g. uniform: its one answer)
    OUT/<agent>-t<target>/finetune/  its fine-tune run
    OUT/tune/                        Tune's experiment
    OUT/results.csv, OUT/sweep.png   test accuracy against MACs kept, one line per agent

A retried cell continues from its own run directories: a finished search is
not repeated, an unfinished one resumes from its last checkpoint, and the
fine-tune from its last epoch. On a multi-node cluster OUT must be on a
filesystem every node sees (checked on every node before the first cell, and
by each cell where it lands); results.csv names the node each cell finished on.

This module owns the cells, their trainable and the plot; the experiment's
lifecycle (the folder, Ray, the Tune run, results.csv) is
:func:`autoprune.tune.run_experiment`'s, as for ``autoprune finetune --ray``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._table import format_table
from .errors import AutopruneError
from .tune import ExperimentDir, RayOptions, TrialOutcome, node_id, require_paths, run_experiment

__all__ = ["SweepConfig", "sweep", "sweep_trial", "table"]


@dataclass(frozen=True)
class SweepConfig:
    """A grid of (target, agent) cells and what each cell does.

    Attributes:
        arch, data_dir, checkpoint: the model and data, as for `autoprune search`.
        targets: fractions kept of the budget metric (``search["metric"]``: flops, params or latency with
            ``search["latency"]``; MACs when absent), the same in every cell.
        agents: search presets (see `autoprune search --agent`), handcrafted ones (uniform, slimming...) included.
        episodes: search episodes per target (None: each preset's).
        finetune_epochs: fine-tune epochs (None: the training preset's).
        preset: training preset ("auto": cifar where trials get a GPU, else cpu).
        seed: of every search and fine-tune.
        search: further SearchConfig fields (holdout, reward_samples, recal_batches, ...).
        train: further training settings (holdout, eval_batch_size, ...).
    """

    arch: str
    data_dir: str
    targets: tuple[float, ...]
    agents: tuple[str, ...]
    checkpoint: str = "pretrained"
    episodes: int | None = None
    finetune_epochs: int | None = None
    preset: str = "auto"
    seed: int = 0
    search: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets or not self.agents:
            raise AutopruneError("A sweep needs at least one target (--targets) and one agent (--agents).")
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise AutopruneError(f"--finetune-epochs must be at least 1, but got {self.finetune_epochs}.")
        from .search import SearchConfig, load_preset

        for agent in self.agents:
            load_preset(agent)  # an unknown agent fails here, before Ray starts
        # a cell's search settings are checked here too, not in every trial after Ray's retries
        SearchConfig(arch=self.arch, data_dir=self.data_dir, agent=self.agents[0], checkpoint=self.checkpoint,
                     targets=[self.targets[0]], episodes=self.episodes, seed=self.seed, **self.search)


def _policy(cell: dict[str, Any], out: Path) -> Path:
    """The cell's policy file, from its search run (resumed if cut short; a handcrafted preset answers once)."""
    from .search import SearchConfig, search

    target = cell["target"]
    runs = out / "search"
    path = runs / f"policy-{target:g}.json"
    if not path.is_file():  # written last by a search: its absence means unfinished
        config = SearchConfig(arch=cell["arch"], data_dir=cell["data_dir"], agent=cell["agent"],
                              checkpoint=cell["checkpoint"], targets=[target], episodes=cell["episodes"],
                              seed=cell["seed"], **cell["search"])
        search(config, runs, resume=(runs / "config.yaml").is_file())
    return path


def sweep_trial(config: dict[str, Any]) -> None:
    """The Tune trainable of one cell: search (or run a handcrafted method), then fine-tune, reporting every epoch."""
    import torch
    from ray import tune

    from .policy import Policy
    from .training import make_config, train

    cell = config["trial"]
    require_paths(_paths(cell))
    torch.set_num_threads(max(1, int(cell["threads"])))
    out = Path(cell["run_dir"])
    out.mkdir(parents=True, exist_ok=True)
    policy = _policy(cell, out)
    loaded = Policy.load(policy)
    macs = loaded.macs_fraction
    weights = loaded.provenance.get("weights")  # a method that trained: its policy is cut from these weights
    checkpoint = str(policy.parent / weights) if weights else cell["checkpoint"]
    settings = {"agent": cell["agent"], "target": cell["target"], "macs_fraction": macs, "node": node_id()}
    recipe = {"epochs": cell["epochs"]} if cell["epochs"] else None
    training = make_config("finetune", cell["data_dir"], policy=policy, checkpoint=checkpoint,
                           preset=cell["preset"], recipe=recipe, seed=cell["seed"], **cell["train"])
    finals = []

    def report(end: Any) -> None:
        metrics = {k: v for k, v in end.metrics.items() if isinstance(v, (int, float))}
        tune.report({**metrics, **settings, "epoch": end.epoch, "final": end.final})
        finals.append(end.final)

    runs = out / "finetune"
    result = train(training, runs, resume=(runs / "config.yaml").is_file(), progress=False, on_epoch_end=report)
    if not any(finals):  # already complete before this attempt: report its result once more
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        tune.report({**metrics, **settings, "final": True})


def _paths(cell: dict[str, Any]) -> list[str]:
    """What a cell reads and writes outside its node: the data, the checkpoint file, the sweep folder."""
    return [cell["data_dir"], str(Path(cell["run_dir"]).parent),
            *([] if cell["checkpoint"] == "pretrained" else [cell["checkpoint"]])]


def _cells(config: SweepConfig, out: Path, options: RayOptions) -> dict[str, dict[str, Any]]:
    preset = ("cifar" if options.gpus_per_trial else "cpu") if config.preset == "auto" else config.preset
    base = {"arch": config.arch, "data_dir": str(Path(config.data_dir).resolve()), "episodes": config.episodes,
            "checkpoint": config.checkpoint if config.checkpoint == "pretrained" else str(Path(config.checkpoint).resolve()),
            "seed": config.seed, "epochs": config.finetune_epochs, "preset": preset, "search": dict(config.search),
            "train": dict(config.train), "threads": int(options.cpus_per_trial)}
    cells = {}
    for agent in config.agents:
        for target in config.targets:
            name = f"{Path(agent).stem}-t{target:g}"
            cells[name] = {**base, "agent": agent, "target": float(target), "run_dir": str(out / name)}
    return cells


def sweep(config: SweepConfig | None, out: str | os.PathLike[str], options: RayOptions, *, resume: bool = False,
          overwrite: bool = False, trainable: Callable[[dict[str, Any]], None] = sweep_trial,
          cli_options: dict[str, Any] | None = None) -> list[TrialOutcome]:
    """Run (or, with ``resume`` and no ``config``, continue) a sweep into ``out``; one outcome per cell.

    ``out`` is checked before Ray starts (:class:`~autoprune._run_dir.RunDir`); ``cli_options`` are
    command-line settings outside ``config`` (``{"report": False}``) kept for ``--resume``.
    """
    out = Path(out).resolve()
    folder = (ExperimentDir.open(out, "sweep") if resume
              else ExperimentDir.claim(out, "sweep", overwrite=overwrite, cli_options=cli_options))

    def plan(options: RayOptions) -> dict[str, Any]:
        return {"experiment": "sweep", "sweep": asdict(config), "cells": _cells(config, out, options)}

    outcomes = run_experiment(folder, trainable, options, key="cells", plan=plan,
                              epochs=lambda cell: cell["epochs"] or 1, paths=_paths,
                              fields=("agent", "target", "macs_fraction", "epoch", "holdout_top1", "test_top1", "node"))
    _plot(out / "sweep.png", outcomes)
    return outcomes


def table(outcomes: Sequence[TrialOutcome]) -> str:
    """The terminal table of a sweep: one row per cell."""
    def pct(value: Any) -> str:
        return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"

    rows = [(o.name, o.status, o.metrics.get("agent", "-"), o.metrics.get("target", "-"),
             pct(o.metrics.get("macs_fraction")), pct(o.metrics.get("holdout_top1")), pct(o.metrics.get("test_top1")),
             o.error or "") for o in outcomes]
    return format_table(["cell", "status", "agent", "target", "MACs kept %", "holdout %", "test %", "error"], rows)


def _plot(path: Path, outcomes: Sequence[TrialOutcome]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    agents = sorted({o.metrics["agent"] for o in outcomes if "agent" in o.metrics})
    for agent in agents:
        points = sorted((o.metrics["macs_fraction"], 100 * o.metrics["test_top1"]) for o in outcomes
                        if o.metrics.get("agent") == agent and "test_top1" in o.metrics)
        if points:
            ax.plot(*zip(*points), "o-", label=Path(agent).stem)
    ax.set_xlabel("MACs kept (fraction)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
