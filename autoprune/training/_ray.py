"""Fine-tunes as Ray Tune trials: one trial per policy (`autoprune finetune --policy a.json b.json --ray`).

    OUT/autoprune-run.json  the marker of a run of autoprune (kind finetune-ray; see autoprune._run_dir)
    OUT/config.yaml     the experiment: each trial's TrainConfig and the Ray options (what --resume replays)
    OUT/<trial>/        each trial's training run directory (the layout of a single run)
    OUT/tune/           Ray Tune's experiment: trial checkpoints, its own logs
    OUT/results.csv     one row per trial

The trial trains with :func:`train` and reports every epoch with its
checkpoint, so a retried trial resumes from its last epoch
(:func:`finetune_trial`). This module owns the trials (names, checked
policies, their TrainConfig) and their trainable; the experiment's lifecycle
(the folder, Ray, the Tune run, results.csv) is
:func:`autoprune.tune.run_experiment`'s, as for a sweep. Ray is imported only
inside these functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import load_torch
from .._run_dir import RunDir
from ..errors import AutopruneError
from ..tune import ExperimentDir, RayOptions, TrialOutcome, node_id, require_paths, run_experiment
from ._config import TrainConfig, make_config
from ._run import EpochEnd, train

__all__ = ["finetune_on_ray", "finetune_trial", "read_experiment", "resume_experiment"]


def finetune_trial(config: dict[str, Any], after_epoch: Callable[[int], None] | None = None) -> None:
    """The Tune trainable of one fine-tune: trains ``config["trial"]["train"]`` into its ``run_dir``.

    On a retry it continues from the checkpoint Tune hands back, in the same
    run directory. ``after_epoch(epoch)`` runs after each report (tests inject faults with it).
    """
    import torch
    from ray import tune

    trial = config["trial"]
    require_paths(_paths(trial))
    torch.set_num_threads(max(1, int(trial.get("threads", 1))))
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_torch(Path(folder) / "last.pt", "Training checkpoint of the Tune trial")

    def report(end: EpochEnd) -> None:
        metrics = {k: v for k, v in end.metrics.items() if isinstance(v, (int, float))}
        metrics.setdefault("macs_fraction", trial.get("macs_fraction"))
        tune.report({**metrics, "epoch": end.epoch, "final": end.final, "node": node_id()},
                    checkpoint=tune.Checkpoint.from_directory(str(end.checkpoints)))
        if after_epoch is not None:
            after_epoch(end.epoch)

    train(TrainConfig.from_dict(trial["train"]), trial["run_dir"], overwrite=state is None, state=state,
          progress=False, on_epoch_end=report)


def _names(policies: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Trial names from policy files: the stem, or parent-stem where stems repeat; path-safe and unique."""
    paths = [Path(p) for p in policies]
    stems = [p.stem for p in paths]
    names = [s if stems.count(s) == 1 else f"{p.parent.name}-{s}" for s, p in zip(stems, paths)]
    names = [re.sub(r"[^A-Za-z0-9_.-]", "_", n).strip(".") or "policy" for n in names]
    names = [f"{n}-policy" if n == "tune" else n for n in names]  # OUT/tune is Tune's
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return unique


def finetune_on_ray(policies: Sequence[str | os.PathLike[str]], data_dir: str | os.PathLike[str],
                    out: str | os.PathLike[str], options: RayOptions, *, preset: str = "auto", overwrite: bool = False,
                    trainable: Callable[[dict[str, Any]], None] = finetune_trial, **settings: Any) -> list[TrialOutcome]:
    """Fine-tune every policy as one Tune trial; ``settings`` go to :func:`make_config`.

    ``preset="auto"`` means ``cifar`` when trials get a GPU, else ``cpu``.
    Every policy, and ``out`` (:class:`~autoprune._run_dir.RunDir`), is checked before Ray starts.
    """
    from ..checkpoints import load_model
    from ..models import replay_spec
    from ..policy import Policy
    from ..pruning import space_for

    folder = ExperimentDir.claim(out, "finetune-ray", overwrite=overwrite)
    checked = {}
    for name, path in zip(_names(policies), policies):
        policy = Policy.load(path)
        try:
            spec = replay_spec(policy.model_spec, settings.get("model"), what=f"Policy {path}")
            base, sha = load_model(spec, settings.get("checkpoint", "pretrained"),
                                   num_classes=policy.num_classes if spec.is_zoo else None)
            policy.validate(space_for(base, spec, policy.space), checkpoint=sha)
        except AutopruneError as e:
            raise type(e)(f"{path}: {e}") from None
        checked[name] = (path, policy.macs_fraction)

    def plan(options: RayOptions) -> dict[str, Any]:
        chosen = ("cifar" if options.gpus_per_trial else "cpu") if preset == "auto" else preset
        trials = {name: {"run_dir": str(folder.path / name), "macs_fraction": macs,
                         "threads": int(options.cpus_per_trial),
                         "train": make_config("finetune", data_dir, policy=path, preset=chosen, **settings).to_dict()}
                  for name, (path, macs) in checked.items()}
        return {"experiment": "finetune", "trials": trials}

    return run_experiment(folder, trainable, options, key="trials", plan=plan, epochs=_epochs, paths=_paths)


def _paths(trial: dict[str, Any]) -> list[str]:
    """What a fine-tune reads and writes outside its node: its data, its policy and checkpoint files, the folder."""
    train = trial["train"]
    files = [train.get("policy"), train.get("checkpoint")]
    return [train["data_dir"], str(Path(trial["run_dir"]).parent),
            *(f for f in files if f and f != "pretrained")]


def _epochs(trial: dict[str, Any]) -> int:
    return int(trial["train"]["recipe"]["epochs"])


def read_experiment(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved config of an experiment folder, or None when ``out`` holds a single training run."""
    run = RunDir.open(out, writing=False)
    return run.read_config() if run.kind == "finetune-ray" else None


def resume_experiment(out: str | os.PathLike[str], address: str | None = None, *,
                      trainable: Callable[[dict[str, Any]], None] = finetune_trial) -> list[TrialOutcome]:
    """Restore an interrupted :func:`finetune_on_ray` experiment (``Tuner.restore``); errored trials resume too.

    ``address`` replaces the saved cluster address (a restarted cluster may have a new one).
    """
    folder = ExperimentDir.open(out, "finetune-ray")
    options = RayOptions(**folder.saved["ray"])
    if address is not None:
        options = replace(options, address=address)
    return run_experiment(folder, trainable, options, key="trials", epochs=_epochs, paths=_paths)
