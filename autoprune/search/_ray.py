"""An Optuna study run through Ray Tune: OptunaSearch proposes, one Tune trial plays one episode.

The driver's OptunaSearch writes into the run's own study (same storage, same
name), so a Ray run leaves the artefacts a serial one does and ``--resume``
continues it either way; each trial records the Ray node it ran on (user
attribute "node"). Each Ray worker builds its env once and reuses it
(``reuse_actors``). Multi-fidelity pruning does not apply here: a Tune trial
is one evaluation. Starting, joining and stopping Ray and running the Tuner
are :mod:`autoprune.tune`'s (:func:`ray_session`, :func:`run_trials` with a
search algorithm); this module owns the episode trainable and the searcher
that records each episode on its Optuna trial.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..env import PruningEnv
from ..tune import RayOptions, check_nodes, node_id, ray_session, run_trials
from ._config import SearchConfig
from ._optuna import distributions, finished_trials, make_sampler, play
from ._preset import Preset
from ._session import setup
from ._tracker import Tracker

__all__ = ["run_ray"]

_ENVS: dict[str, PruningEnv] = {}  # per Ray worker process: the env of the search it serves


def _episode(params: dict[str, float], search: dict[str, Any], target: float | None) -> None:
    from optuna.trial import FixedTrial
    from ray import tune

    key = json.dumps(search, sort_keys=True)
    if key not in _ENVS:
        _ENVS.clear()
        _ENVS[key] = setup(SearchConfig(**search))[1]
    reward, info = play(FixedTrial(params), _ENVS[key], target)
    policy = info["policy"]
    tune.report({"reward": reward, "accuracy": float(info["accuracy"]), "macs_fraction": policy.macs_fraction,
                 "params_fraction": policy.params_fraction, "fraction": float(info["fraction"]),
                 "target": float(info["target"]),
                 "counts": " ".join(str(int(c)) for c in info["counts"]), "cached": bool(info["cached"]),
                 "node": node_id()})


def run_ray(config: SearchConfig, preset: Preset, env: PruningEnv, study: Any, storage: Any, name: str, target: float | None,
            n_trials: int, tracker: Tracker) -> None:
    """Run study ``name`` to ``n_trials`` finished trials as Ray Tune trials, ``config.workers`` at a time."""
    from ray import tune

    remaining = n_trials - len(finished_trials(study))
    if remaining <= 0:
        return
    gpus = 1.0 / config.workers if env.evaluator.device.type == "cuda" else 0.0
    options = RayOptions(address=config.ray_address, cpus_per_trial=1, gpus_per_trial=gpus, max_failures=0,
                         max_concurrent=config.workers, verbose=0)
    with ray_session(options) as options:  # joins a cluster, or starts a local Ray (stopped when the study is done)
        check_nodes([config.data_dir, tracker.run.path,
                     *([] if config.checkpoint == "pretrained" else [config.checkpoint])])
        multi = preset.spec.one_study
        searcher = _searcher(space=distributions(env, preset),
                             metric=["accuracy", "fraction"] if multi else "reward",  # of the budget metric
                             mode=["max", "min"] if multi else "max", sampler=make_sampler(preset, config.seed),
                             storage=storage, study_name=name)
        run_trials(tune.with_parameters(_episode, search=asdict(config), target=target), None,
                   tracker.run.path / "ray" / name, options, search_alg=searcher, num_samples=remaining,
                   reuse_actors=True)
    tracker.advance(remaining)


def _searcher(**kwargs: Any) -> Any:
    """Ray's OptunaSearch that also records each episode's attributes on its Optuna trial, as a serial run does."""
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result and "counts" in result and trial_id in self._ot_trials:
                trial = self._ot_trials[trial_id]  # the open Optuna trial behind this Tune trial
                trial.set_user_attr("counts", [int(c) for c in result["counts"].split()])
                for key in ("accuracy", "target", "macs_fraction", "params_fraction", "fraction", "cached", "node"):
                    trial.set_user_attr(key, result[key])
            super().on_trial_complete(trial_id, result, error)

    return RecordingOptunaSearch(**kwargs)
