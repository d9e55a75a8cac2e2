"""Ray Tune: run many trainings as Tune trials, on this machine or on a Ray cluster.

The generic layer: connect to Ray (or start a local one), check that a trial
fits on a node, and run one Tune trial per config with :func:`run_trials`.
Each trial is a function trainable that reports once per epoch with a
checkpoint (``ray.tune.report(metrics, checkpoint=...)``). When a trial fails
(its worker dies, its node is preempted) Tune retries it up to
``max_failures`` times, and the retry continues from the last reported
checkpoint (``ray.tune.get_checkpoint()``). An interrupted experiment resumes
whole with ``Tuner.restore``. ASHA (optional) stops trials whose metric lags
at its rungs. Fine-tunes as trials: :mod:`autoprune.training` (``finetune_on_ray``).

Without an address a local Ray is started (and stopped afterwards);
``address="auto"`` or ``"ray://host:10001"`` joins a running cluster, whose
nodes must see the data, the checkpoints and the output folder at the same
paths (a shared filesystem) and have autoprune installed.

Ray is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._table import format_table
from .errors import AutopruneError

__all__ = [
    "RayOptions",
    "TrialOutcome",
    "check_address",
    "check_resources",
    "connect",
    "node_resources",
    "outcomes_table",
    "resolve_gpus",
    "run_trials",
    "write_outcomes",
]


@dataclass(frozen=True)
class RayOptions:
    """Where trials run and with what.

    Attributes:
        address: None (start a local Ray), "auto" (the cluster this machine belongs to), or
            "ray://host:port" / "host:port" of a cluster's head.
        cpus_per_trial: CPUs reserved per trial (also its torch threads).
        gpus_per_trial: GPUs per trial, fractions allowed; None: 1 where the cluster has GPUs, else 0.
        max_failures: retries of a failed trial, each from its last checkpoint.
        asha: stop lagging trials early (ASHA on the metric, one rung step per epoch).
        asha_grace: epochs every trial gets before ASHA may stop it (None: a tenth of the epochs, at least 1).
        max_concurrent: trials at a time (None: as many as the resources allow).
        num_cpus: CPUs a local Ray may use (None: all).
        verbose: Tune's console verbosity (0 silent, 1 status table, 2 every result).
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_failures: int = 2
    asha: bool = False
    asha_grace: int | None = None
    max_concurrent: int | None = None
    num_cpus: int | None = None
    verbose: int = 1

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0:
            raise AutopruneError(f"--cpus-per-trial must be positive, but got {self.cpus_per_trial}.")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise AutopruneError(f"--gpus-per-trial must be at least 0, but got {self.gpus_per_trial}.")
        if self.max_failures < 0:
            raise AutopruneError(f"--max-failures must be at least 0, but got {self.max_failures}.")
        if self.asha_grace is not None and self.asha_grace < 1:
            raise AutopruneError(f"--asha-grace must be at least 1 epoch, but got {self.asha_grace}.")


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: "done" (all epochs, test measured), "stopped" (by ASHA or an interrupt), "error"."""

    name: str
    status: str
    metrics: dict[str, Any]
    error: str | None = None


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens at a cluster address ("auto" is looked up first)."""
    target = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment
            target = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise AutopruneError("--ray-address auto: no running Ray cluster found on this machine (RAY_ADDRESS is "
                                 "unset and `ray start` was not run here). Start one with `ray start --head`, or "
                                 "pass ray://HEAD:10001.") from None
        except (ImportError, AttributeError):  # private API moved: ray.init reports instead
            return
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", target)
    if match is None:
        raise AutopruneError(f"Ray address {address!r} is not of the form ray://HOST:PORT, HOST:PORT or auto.")
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise AutopruneError(f"Cannot reach the Ray cluster at {address} ({host}:{port}: {e}). Is its head running "
                             "(`ray start --head` on it) and the port open from here?") from None


def check_resources(nodes: Sequence[Mapping[str, float]], cpus: float, gpus: float) -> None:
    """Refuse a trial that no node can hold: trials run on one node, so the largest node is the limit."""
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if gpus > most_gpus:
        raise AutopruneError(f"--gpus-per-trial {gpus:g} asks for more GPUs than the cluster has on any node "
                             f"({most_gpus:g} at most); lower it{' or use --gpus-per-trial 0' if not most_gpus else ''}.")
    if cpus > most_cpus:
        raise AutopruneError(f"--cpus-per-trial {cpus:g} asks for more CPUs than any node of the cluster has "
                             f"({most_cpus:g} at most).")


def connect(options: RayOptions) -> bool:
    """Join the cluster (or start a local Ray) unless Ray is up; True when this call did (call ray.shutdown()
    after: it stops a local Ray and only disconnects from a cluster)."""
    import ray

    if ray.is_initialized():
        return False
    if options.address is not None:
        check_address(options.address)
    try:
        if options.address is None:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False)
        else:
            ray.init(address=options.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray"
        raise AutopruneError(f"Could not start or join {where}: {str(e).splitlines()[0]}") from e
    return True


def node_resources() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster (a trial must fit on one)."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def resolve_gpus(options: RayOptions) -> RayOptions:
    """``options`` with ``gpus_per_trial`` decided: as given, else 1 where a node of the cluster has a GPU, else 0."""
    if options.gpus_per_trial is not None:
        return options
    return replace(options, gpus_per_trial=1.0 if any(n.get("GPU", 0) > 0 for n in node_resources()) else 0.0)


def _trial_name(trial: Any) -> str:  # module level: Tune pickles it with the experiment
    return str(trial.config["trial"]["name"])


def run_trials(trainable: Callable[[dict[str, Any]], None], trials: Mapping[str, dict[str, Any]], experiment: Path,
               options: RayOptions, *, metric: str = "holdout_top1", mode: str = "max", max_t: int = 1,
               time_attr: str = "epoch", resume: bool = False) -> list[TrialOutcome]:
    """Run ``trainable(config)`` once per entry of ``trials`` (name -> config) as Tune trials; needs Ray connected.

    The trainable gets ``{**config, "name": name}`` as ``config["trial"]`` and reports with
    ``ray.tune.report`` (``metric``, ``time_attr`` and, on its last report, "final": True).
    ``experiment`` is Tune's experiment folder (created; with ``resume``, restored).
    ``max_t`` bounds ``time_attr`` for ASHA. Returns one outcome per trial, in the order of ``trials``.
    """
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
        tuner = tune.Tuner(
            runnable,
            param_space={"trial": tune.grid_search([{**config, "name": name} for name, config in trials.items()])},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                        max_concurrent_trials=options.max_concurrent,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent),
                                      failure_config=tune.FailureConfig(max_failures=options.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=options.verbose))
    outcomes = []
    for result in tuner.fit():
        metrics = dict(result.metrics or {})
        name = str((result.config or {}).get("trial", {}).get("name", "?"))
        status = "error" if result.error else "done" if metrics.get("final") else "stopped"
        error = str(result.error).strip().splitlines()[-1] if result.error else None
        outcomes.append(TrialOutcome(name, status, metrics, error))
    return sorted(outcomes, key=lambda o: list(trials).index(o.name) if o.name in trials else len(trials))


def write_outcomes(path: Path, outcomes: Sequence[TrialOutcome],
                   fields: Sequence[str] = ("epoch", "macs_fraction", "holdout_top1", "test_top1")) -> None:
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
