"""A Ray Tune experiment from start to results: its folder, what ``--resume`` replays, its run and its outcomes.

`autoprune sweep` and `autoprune finetune --ray` are experiments of this one shape:

    OUT/config.yaml    the experiment: its kind and settings, the Ray options, every trial's config
    OUT/tune/          Tune's experiment (trial checkpoints, its logs); ``Tuner.restore`` resumes it
    OUT/results.csv    one row per trial

:func:`run_experiment` runs one inside :func:`ray_session` (so a Ray it
started is shut down however it ends), building the trials only once the GPUs
per trial are known. :class:`ExperimentDir` is the only code that decides
whether a folder may take a new experiment and creates it: a shared
run-directory base replaces it in one place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .._io import write_bytes
from ..errors import AutopruneError
from ._cluster import RayOptions, ray_session
from ._trials import OUTCOME_FIELDS, Trainable, TrialOutcome, run_trials, write_outcomes

__all__ = ["ExperimentDir", "run_experiment"]

CONFIG = "config.yaml"


class ExperimentDir:
    """The folder of one experiment: a new one (:meth:`claim`, then :meth:`create`) or a saved one (:meth:`open`).

    Attributes:
        path: the folder, absolute.
        saved: the parsed config.yaml of a saved experiment (to resume); None for a new one.
        overwrite: a new experiment replaces the run already in ``path``.
    """

    def __init__(self, path: Path, saved: Any = None, *, overwrite: bool = False) -> None:
        self.path = path
        self.saved = saved  # parsed YAML: a mapping, unless the file is not an experiment's
        self.overwrite = overwrite

    @classmethod
    def claim(cls, out: str | os.PathLike[str], *, overwrite: bool = False) -> ExperimentDir:
        """A new experiment in ``out``, refused now (before Ray starts) when ``out`` holds a run, unless ``overwrite``.

        Nothing is written before :meth:`create`.
        """
        path = Path(out).resolve()
        if (path / CONFIG).exists() and not overwrite:
            raise AutopruneError(f"{path} already holds a run; resume it with --resume {path}, or choose another --out "
                                 "(or pass --overwrite).")
        return cls(path, overwrite=overwrite)

    @classmethod
    def open(cls, out: str | os.PathLike[str], what: str) -> ExperimentDir:
        """The experiment saved in ``out``; ``what`` ("a sweep") names it when ``out`` has no config.yaml."""
        path = Path(out)
        if not (path / CONFIG).is_file():
            raise AutopruneError(f"{out} is not {what} (no config.yaml).")
        return cls(path.resolve(), yaml.safe_load((path / CONFIG).read_text()))

    def create(self, config: Mapping[str, Any]) -> None:
        """Create the folder (emptied first with ``overwrite``) and save ``config`` as its config.yaml."""
        if self.overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(dict(config), sort_keys=False)
        write_bytes(self.path / CONFIG, lambda f: f.write(text.encode()))


def run_experiment(folder: ExperimentDir, trainable: Trainable, options: RayOptions, *, key: str,
                   epochs: Callable[[dict[str, Any]], int],
                   plan: Callable[[RayOptions], dict[str, Any]] | None = None,
                   fields: Sequence[str] = OUTCOME_FIELDS) -> list[TrialOutcome]:
    """Run the experiment in ``folder`` as Tune trials of ``trainable``, inside :func:`ray_session`.

    A new experiment (``folder.saved`` None): ``plan(options)``, given the options with the GPUs per trial decided,
    returns the experiment's config with its trials (name -> config) under ``key``; it is saved as config.yaml, with
    ``options`` before the trials. A saved one: its trials under ``key`` continue (``Tuner.restore``; errored trials
    run again). ``epochs(trial)`` is a trial's length (ASHA's ``max_t`` is the longest). Returns one outcome per
    trial, in the trials' order, also written to OUT/results.csv (``fields`` of each).
    """
    resume = folder.saved is not None
    if not resume and plan is None:
        raise ValueError("A new experiment needs a plan (its trials); only a saved one replays its own.")
    with ray_session(options) as decided:
        if resume:
            trials = folder.saved[key]
        else:
            config = plan(decided)
            trials = config.pop(key)
            folder.create({**config, "ray": asdict(decided), key: trials})
        outcomes = run_trials(trainable, trials, folder.path / "tune", decided,
                              max_t=max(epochs(t) for t in trials.values()), resume=resume)
    write_outcomes(folder.path / "results.csv", outcomes, fields)
    return outcomes
