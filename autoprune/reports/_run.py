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

__all__ = ["EPISODES", "EVALUATIONS", "Row", "RunView", "Wall", "read_run"]

# The two counts of a search, each defined here once; the report prints these definitions beside the figures.
EPISODES = "rows of episodes.csv, one per finished episode or trial, repeated policies included"
EVALUATIONS = ("result.json: distinct policies scored on the holdout during the search, the uniform-L1 references "
               "of a normalized reward included, repeats answered from the cache excluded")


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
    uniform_holdout: float | None = None
    uniform_test: float | None = None
    exported: bool = False  # answered by a trained agent after the search (export-policy), not a final pick


@dataclass(frozen=True)
class Wall:
    """How long a run took, and where that figure comes from.

    Attributes:
        seconds: the wall time.
        source: "result.json" (the run recorded its start and end) or "log" (older runs: the first to
            the last time-stamped line of log.txt, a lower bound: the log begins after the run started).
        started, finished: the recorded start and end (source "result.json" only).
    """

    seconds: float
    source: str
    started: datetime | None = None
    finished: datetime | None = None


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
        wall: its wall time, if known (see :class:`Wall` for the two sources).
        evaluations: searches: result.json's "evaluations" (see ``EVALUATIONS``); None before the run ends.
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
    wall: Wall | None = None
    evaluations: int | None = None


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _result(path: Path) -> dict[str, Any]:
    """The run's result.json (written when it finishes), or {}."""
    return json.loads((path / "result.json").read_text()) if (path / "result.json").is_file() else {}


def _timestamp(value: Any) -> datetime | None:
    """An ISO 8601 time from result.json ("Z" accepted for UTC, which Python 3.10's parser is not)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None


def _wall(path: Path, result: dict[str, Any]) -> Wall | None:
    """The run's own start and end (result.json's "started"/"finished") when it recorded them.

    Older runs did not: for them the first to last time-stamped line of log.txt stands in, labelled as
    such, because the log begins late (an RL search's at its first checkpoint, an Optuna search's after
    its trials) and so misses the setup and the first episodes.
    A malformed or inconsistent pair (naive beside aware, end before start) is treated as absent.
    """
    started, finished = _timestamp(result.get("started")), _timestamp(result.get("finished"))
    if started is not None and finished is not None:
        try:
            seconds = (finished - started).total_seconds()
        except TypeError:  # one with a time zone, one without
            seconds = -1.0
        if seconds >= 0:  # both shown in the end's time zone, as one clock
            shown = started.astimezone(finished.tzinfo) if finished.tzinfo is not None else started
            return Wall(seconds, "result.json", shown, finished)
    log = path / "log.txt"
    if not log.is_file():
        return None
    stamps = []
    for line in log.read_text().splitlines():
        try:
            stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
    return Wall((stamps[-1] - stamps[0]).total_seconds(), "log") if len(stamps) > 1 else None


def _uniform(result: dict[str, Any], target: float | None) -> tuple[float | None, float | None]:
    """The uniform-L1 reference at ``target`` that the search measured (result.json's "uniform")."""
    if target is None:
        return None, None
    reference = result.get("uniform", {}).get(f"{target:g}", {})
    return reference.get("holdout"), reference.get("test")


def _finetuned(search_dir: Path) -> tuple[float | None, dict[str, float]]:
    """The target fine-tuned and its holdout/test after it, when the run sits in a sweep cell beside its fine-tune.

    A multi-target search (cacp) in a cell has a policy per target but the cell fine-tunes one of them;
    the figures belong to that target's row only.
    """
    folder = search_dir.parent / "finetune"
    if not (folder / "result.json").is_file():
        return None, {}
    data = json.loads((folder / "result.json").read_text())
    policy = Policy.load(folder / "policy.json") if (folder / "policy.json").is_file() else None
    target = policy.target["fraction"] if policy is not None and policy.target else None
    return target, {k: data[k] for k in ("holdout_top1", "test_top1") if isinstance(data.get(k), (int, float))}


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
    result = _result(path)
    evaluations = result.get("evaluations")
    view = RunView(path, "search", config, dataset, arch, episodes=_csv(path / "episodes.csv"), policies=policies,
                   front=_csv(path / "front.csv"), partial=not (path / "policy.json").is_file(),
                   wall=_wall(path, result), evaluations=evaluations if isinstance(evaluations, int) else None)
    tuned_target, tuned = _finetuned(path)
    for target, p in sorted(policies.items()):
        exported = "exported_from" in p.provenance
        tuned_here = tuned if len(policies) == 1 or tuned_target == target else {}
        view.rows.append(Row(f"{config.get('agent', '?')} @ {target:g}" + (" (exported)" if exported else ""), target,
                             p.macs_fraction, p.params_fraction, p.accuracy.get("holdout"), p.accuracy.get("test"),
                             tuned_here.get("holdout_top1"), tuned_here.get("test_top1"), *_uniform(result, target),
                             exported=exported))
    return view


def _train(path: Path, config: dict[str, Any]) -> RunView:
    policy = Policy.load(path / "policy.json") if (path / "policy.json").is_file() else None
    result = _result(path)
    arch = config.get("arch") or (policy.arch if policy else "?")
    view = RunView(path, "train", config, policy.dataset if policy else config.get("dataset", "cifar10"), arch,
                   policies={policy.target["fraction"]: policy} if policy and policy.target else {},
                   partial=not result, wall=_wall(path, result))
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
        target = config["cells"][name]["target"]
        # the cell's own target first: a multi-target search (cacp) leaves a policy for every target of its range
        files = ([source / f"policy-{target:g}.json"] if (source / f"policy-{target:g}.json").is_file() else
                 sorted(source.glob("policy-*.json")) or sorted(source.glob("policy.json")))
        if not files:
            view.partial = True
            continue
        p = Policy.load(files[0])
        _, tuned = _finetuned(cell / "search")
        view.rows.append(Row(name, target, p.macs_fraction, p.params_fraction, p.accuracy.get("holdout"),
                             p.accuracy.get("test"), tuned.get("holdout_top1"), tuned.get("test_top1"),
                             *_uniform(_result(source), target)))
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
