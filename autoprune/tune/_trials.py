"""Tune trials: build and run the one kind of ``Tuner`` autoprune uses, and say how each trial ended.

:func:`run_trials` runs either a grid (one trial per named config: the
fine-tunes, the sweep cells) or a search algorithm's samples (the Optuna
episodes of ``autoprune search --ray``) with the same resources check,
retries (``FailureConfig(max_failures)``), optional ASHA, checkpoint keeping
and ``Tuner.restore`` on resume. Each trial is a function trainable that
reports once per epoch with a checkpoint (``ray.tune.report(metrics,
checkpoint=...)``); a retried trial continues from it
(``ray.tune.get_checkpoint()``).

Ray is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._table import format_table
from ..errors import AutopruneError
from ._cluster import RayOptions, check_resources, node_resources, resolve_gpus

if TYPE_CHECKING:
    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial
    from ray.tune.search import Searcher

__all__ = ["OUTCOME_FIELDS", "Trainable", "TrialOutcome", "outcomes_table", "run_trials", "write_outcomes"]

Trainable = Callable[[dict[str, Any]], None]
"""A Tune function trainable: gets the trial's config, reports with ``ray.tune.report``."""

OUTCOME_FIELDS = ("epoch", "macs_fraction", "holdout_top1", "test_top1", "node")
"""The metrics results.csv keeps of each fine-tune trial ("node": the Ray node it finished on)."""


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: "done" (all epochs, test measured), "stopped" (by ASHA or an interrupt), "error"."""

    name: str
    status: str
    metrics: dict[str, Any]
    error: str | None = None


def _trial_name(trial: Trial) -> str:  # module level: Tune pickles it with the experiment (also as autoprune.tune's)
    return str(trial.config["trial"]["name"])


def run_trials(trainable: Trainable, trials: Mapping[str, dict[str, Any]] | None, experiment: Path,
               options: RayOptions, *, metric: str = "holdout_top1", mode: str = "max", max_t: int = 1,
               time_attr: str = "epoch", resume: bool = False, search_alg: Searcher | None = None,
               num_samples: int = 1, reuse_actors: bool = False) -> list[TrialOutcome]:
    """Run ``trainable`` as Tune trials into the experiment folder ``experiment``; needs Ray connected.

    The trials are either ``trials`` (name -> config), one each, the trainable getting ``{**config, "name": name}``
    as ``config["trial"]`` and reporting ``metric``, ``time_attr`` and, on its last report, "final": True; or, with
    ``trials`` None, ``num_samples`` configs proposed by ``search_alg`` (which carries its own metric and mode).
    ``options`` give the resources, retries, ASHA (``max_t`` bounds ``time_attr``) and concurrency;
    ``reuse_actors`` keeps a worker's process between trials. ``experiment`` is created; with ``resume``, restored.
    Returns one outcome per trial, grid trials in the order of ``trials``.
    """
    if (trials is None) == (search_alg is None):
        raise ValueError("run_trials runs either a grid (trials) or a search algorithm's samples (search_alg), "
                         f"not {'both' if trials is not None else 'neither'}.")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    options = resolve_gpus(options)
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    check_resources(node_resources(), resources["cpu"], resources["gpu"])
    runnable = tune.with_resources(trainable, resources)
    experiment = experiment.resolve()
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise AutopruneError(f"{experiment} holds no Tune experiment to resume.")
        tuner = tune.Tuner.restore(str(experiment), trainable=runnable, resume_errored=True)
    else:
        scheduler = None
        if options.asha:
            grace = options.asha_grace or max(1, max_t // 10)
            scheduler = ASHAScheduler(time_attr=time_attr, max_t=max_t, grace_period=min(grace, max_t), reduction_factor=3)
        if trials is not None:
            space: dict[str, Any] = {"param_space": {"trial": tune.grid_search(
                [{**config, "name": name} for name, config in trials.items()])}}
            sampling: dict[str, Any] = {"metric": metric, "mode": mode, "trial_name_creator": _trial_name,
                                        "trial_dirname_creator": _trial_name}
        else:
            space, sampling = {}, {"search_alg": search_alg, "num_samples": num_samples}
        tuner = tune.Tuner(
            runnable, **space,
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=options.max_concurrent,
                                        reuse_actors=reuse_actors, **sampling),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent),
                                      failure_config=tune.FailureConfig(max_failures=options.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=options.verbose))
    outcomes = _outcomes(tuner.fit())
    if trials is None:
        return outcomes
    return sorted(outcomes, key=lambda o: list(trials).index(o.name) if o.name in trials else len(trials))


def _outcomes(results: ResultGrid) -> list[TrialOutcome]:
    outcomes = []
    for result in results:
        metrics = dict(result.metrics or {})
        name = str((result.config or {}).get("trial", {}).get("name", metrics.get("trial_id", "?")))
        status = "error" if result.error else "done" if metrics.get("final") else "stopped"
        error = str(result.error).strip().splitlines()[-1] if result.error else None
        outcomes.append(TrialOutcome(name, status, metrics, error))
    return outcomes


def write_outcomes(path: Path, outcomes: Sequence[TrialOutcome], fields: Sequence[str] = OUTCOME_FIELDS) -> None:
    """One CSV row per trial: name, status, the last reported ``fields``, the error."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["trial", "status", *fields, "error"])
        writer.writeheader()
        for o in outcomes:
            writer.writerow({"trial": o.name, "status": o.status, "error": o.error or "",
                             **{k: o.metrics.get(k, "") for k in fields}})


def outcomes_table(outcomes: Sequence[TrialOutcome]) -> str:
    """The terminal table of a fine-tune experiment: status, epochs, cost and accuracies per trial."""
    def pct(value: Any) -> str:
        return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"

    rows = [(o.name, o.status, o.metrics.get("epoch", 0), pct(o.metrics.get("macs_fraction")),
             pct(o.metrics.get("holdout_top1")), pct(o.metrics.get("test_top1")), o.error or "") for o in outcomes]
    return format_table(["trial", "status", "epochs", "MACs kept %", "holdout %", "test %", "error"], rows)
