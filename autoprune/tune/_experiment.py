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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._run_dir import RunDir
from ._cluster import RayOptions, check_nodes, ray_session
from ._trials import OUTCOME_FIELDS, Trainable, TrialOutcome, run_trials, write_outcomes

__all__ = ["ExperimentDir", "run_experiment"]


class ExperimentDir:
    """The folder of one experiment: a new one (:meth:`claim`, then :meth:`create`) or a saved one (:meth:`open`).

    Claiming, replacing and resuming follow the run-directory base (:class:`autoprune._run_dir.RunDir`):
    a user's folder or another command's run is refused, ``--overwrite`` replaces only a run of autoprune,
    and an experiment that fails before any trial started leaves nothing behind.

    Attributes:
        path: the folder, absolute.
        kind: the run kind of the base ("sweep", "finetune-ray").
        saved: the parsed config.yaml of a saved experiment (to resume); None for a new one.
        run: the run directory, once created or opened.
    """

    def __init__(self, path: Path, kind: str, saved: dict[str, Any] | None = None, *, overwrite: bool = False,
                 cli_options: Mapping[str, Any] | None = None, run: RunDir | None = None) -> None:
        self.path, self.kind, self.saved, self.run = path, kind, saved, run
        self._overwrite, self._cli_options = overwrite, cli_options

    @classmethod
    def claim(cls, out: str | os.PathLike[str], kind: str, *, overwrite: bool = False,
              cli_options: Mapping[str, Any] | None = None) -> ExperimentDir:
        """A new experiment in ``out``, refused now (before Ray starts) when ``out`` may not take it.

        Nothing is written before :meth:`create`.
        """
        path = Path(out).resolve()
        RunDir.check(path, kind=kind, overwrite=overwrite)
        return cls(path, kind, overwrite=overwrite, cli_options=cli_options)

    @classmethod
    def open(cls, out: str | os.PathLike[str], kind: str, *, writing: bool = True) -> ExperimentDir:
        """The experiment of ``kind`` saved in ``out`` (``writing=False``: only to read it)."""
        run = RunDir.open(Path(out).resolve(), kind=kind, writing=writing)
        return cls(run.path, kind, run.read_config(), run=run)

    def create(self, config: Mapping[str, Any]) -> None:
        """Create the run directory (replacing a run of autoprune with ``overwrite``) and save ``config``."""
        self.run = RunDir.create(self.path, config, kind=self.kind, overwrite=self._overwrite,
                                 cli_options=self._cli_options)


def run_experiment(folder: ExperimentDir, trainable: Trainable, options: RayOptions, *, key: str,
                   epochs: Callable[[dict[str, Any]], int],
                   plan: Callable[[RayOptions], dict[str, Any]] | None = None,
                   paths: Callable[[dict[str, Any]], Sequence[str]] = lambda trial: (),
                   fields: Sequence[str] = OUTCOME_FIELDS) -> list[TrialOutcome]:
    """Run the experiment in ``folder`` as Tune trials of ``trainable``, inside :func:`ray_session`.

    A new experiment (``folder.saved`` None): ``plan(options)``, given the options with the GPUs per trial decided,
    returns the experiment's config with its trials (name -> config) under ``key``; it is saved as config.yaml, with
    ``options`` before the trials. A saved one: its trials under ``key`` continue (``Tuner.restore``; errored trials
    run again). ``epochs(trial)`` is a trial's length (ASHA's ``max_t`` is the longest). Returns one outcome per
    trial, in the trials' order, also written to OUT/results.csv (``fields`` of each). Before any trial, every node
    of the cluster must run this autoprune and see the folder and ``paths(trial)`` of every trial
    (:func:`~autoprune.tune.check_nodes`).
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
        run = folder.run
        assert run is not None  # created or opened above
        with run.cleanup_unless_started():  # kept as soon as a trial has started (a search episode, an epoch)
            check_nodes([folder.path, *(p for t in trials.values() for p in paths(t))])
            outcomes = run_trials(trainable, trials, folder.path / "tune", decided,
                                  max_t=max(epochs(t) for t in trials.values()), resume=resume)
        run.mark_started()
    write_outcomes(folder.path / "results.csv", outcomes, fields)
    return outcomes
