"""Read what a run directory holds: a search (RL or Optuna), a fine-tune or training run, or a sweep."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..errors import AutopruneError
from ..policy import Policy

__all__ = ["RunView", "Row", "read_run"]


@dataclass
class Row:
    """One line of a report's table: a policy and what is known of it."""

    label: str
    target: float | None
    macs: float
    params: float
    holdout: float | None
    test: float | None
    finetuned_holdout: float | None = None
    finetuned_test: float | None = None


@dataclass
class RunView:
    """A run directory as a report sees it.

    Attributes:
        path: the directory.
        kind: "search", "train" or "sweep".
        config: its config.yaml.
        dataset, arch: what it pruned.
        episodes: rows of episodes.csv (searches).
        policies: final policy per target (searches); the trained policy (train runs).
        front: NSGA-II's Pareto front rows (front.csv), if any.
        rows: the table.
        partial: the run has not finished (no final policy or result yet).
        seconds: wall time from the log's first to last line, if known.
    """

    path: Path
    kind: str
    config: dict[str, Any]
    dataset: str
    arch: str
    episodes: list[dict[str, str]] = field(default_factory=list)
    policies: dict[float, Policy] = field(default_factory=dict)
    front: list[dict[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    partial: bool = False
    seconds: float | None = None


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _log_seconds(path: Path) -> float | None:
    """Seconds between the first and last time-stamped lines of log.txt."""
    if not path.is_file():
        return None
    stamps = []
    for line in path.read_text().splitlines():
        try:
            stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


def _finetuned(search_dir: Path) -> dict[str, float]:
    """Holdout/test after fine-tuning, when the run sits in a sweep cell beside its fine-tune."""
    result = search_dir.parent / "finetune" / "result.json"
    if not result.is_file():
        return {}
    data = json.loads(result.read_text())
    return {k: data[k] for k in ("holdout_top1", "test_top1") if isinstance(data.get(k), (int, float))}


def _search(path: Path, config: dict[str, Any]) -> RunView:
    policies = {}
    for file in sorted(path.glob("policy-*.json")):
        try:
            policies[float(file.stem.split("-", 1)[1])] = Policy.load(file)
        except ValueError:
            continue
    arch, dataset = config["arch"], config.get("dataset", "cifar10")
    if policies:
        dataset = next(iter(policies.values())).dataset
    view = RunView(path, "search", config, dataset, arch, episodes=_csv(path / "episodes.csv"), policies=policies,
                   front=_csv(path / "front.csv"), partial=not (path / "policy.json").is_file(),
                   seconds=_log_seconds(path / "log.txt"))
    tuned = _finetuned(path)
    for target, p in sorted(policies.items()):
        view.rows.append(Row(f"{config.get('agent', '?')} @ {target:g}", target, p.macs_fraction, p.params_fraction,
                             p.accuracy.get("holdout"), p.accuracy.get("test"), tuned.get("holdout_top1"),
                             tuned.get("test_top1")))
    return view


def _train(path: Path, config: dict[str, Any]) -> RunView:
    policy = Policy.load(path / "policy.json") if (path / "policy.json").is_file() else None
    result = json.loads((path / "result.json").read_text()) if (path / "result.json").is_file() else {}
    arch = config.get("arch") or (policy.arch if policy else "?")
    view = RunView(path, "train", config, policy.dataset if policy else config.get("dataset", "cifar10"), arch,
                   policies={policy.target["fraction"]: policy} if policy and policy.target else {},
                   partial=not result, seconds=_log_seconds(path / "log.txt"))
    if policy is not None:  # a finished run rewrote the policy's accuracies; the searched ones moved to provenance
        target = policy.target["fraction"] if policy.target else None
        before = policy.provenance.get("trained", {}).get("before", {}) if result else policy.accuracy
        view.rows.append(Row(f"{config.get('mode', 'train')} {path.name}", target, policy.macs_fraction,
                             policy.params_fraction, before.get("holdout"), before.get("test"),
                             result.get("holdout_top1"), result.get("test_top1")))
    return view


def _sweep(path: Path, config: dict[str, Any]) -> RunView:
    sweep = config["sweep"]
    view = RunView(path, "sweep", config, sweep.get("search", {}).get("dataset", "cifar10"), sweep["arch"],
                   partial=not (path / "results.csv").is_file())
    for name in config["cells"]:
        cell = path / name
        source = cell / "search" if (cell / "search").is_dir() else cell
        files = sorted(source.glob("policy-*.json")) or sorted(source.glob("policy.json"))
        if not files:
            view.partial = True
            continue
        p = Policy.load(files[0])
        tuned = _finetuned(cell / "search")
        view.rows.append(Row(name, config["cells"][name]["target"], p.macs_fraction, p.params_fraction,
                             p.accuracy.get("holdout"), p.accuracy.get("test"), tuned.get("holdout_top1"),
                             tuned.get("test_top1")))
        view.partial |= not tuned
    return view


def read_run(path: str | os.PathLike[str]) -> RunView:
    """The run in ``path``; a clear error when it is none."""
    path = Path(path)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise AutopruneError(f"{path} is not an autoprune run (no config.yaml): give a directory written by "
                             "`autoprune search`, `finetune`, `train` or `sweep`.")
    config = yaml.safe_load(config_file.read_text()) or {}
    if config.get("experiment") == "sweep":
        return _sweep(path, config)
    if config.get("experiment") == "finetune":  # `finetune --ray`: one training run per trial
        runs = [_train(path / name, yaml.safe_load((path / name / "config.yaml").read_text()))
                for name in config["trials"] if (path / name / "config.yaml").is_file()]
        if not runs:
            raise AutopruneError(f"{path} is a fine-tune experiment whose trials have not started yet.")
        return RunView(path, "finetune", config, runs[0].dataset, runs[0].arch,
                       rows=[r for v in runs for r in v.rows],
                       partial=len(runs) < len(config["trials"]) or any(v.partial for v in runs))
    if "agent" in config and "arch" in config:
        return _search(path, config)
    if "mode" in config:
        return _train(path, config)
    raise AutopruneError(f"{path} holds a config.yaml that no autoprune command wrote; cannot report on it.")
