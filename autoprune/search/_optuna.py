"""Optuna agents: every trial is one episode of the same :class:`~autoprune.env.PruningEnv`.

A trial suggests each group's keep ratio when the env asks for it, in forward
order (define-by-run), and plays it through ``env.step``. So Optuna's policies
go through the very budget clipping, channel selection, evaluator and reward
that judge the RL agents' — the alternative (propose a whole vector, then
project it onto the budget) would be a second code path to keep equal. The
sampler learns from the ratios it proposed; the env records what was kept.

Reproducibility: samplers keep no state but their random generator (their
history lives in the study), so each trial gets a fresh sampler seeded by
(seed, number of finished trials). A resumed study therefore proposes what an
uninterrupted one would. QMC keeps one seed: it scrambles one sequence.

The study lives in SQLite inside the run directory unless ``storage`` names
another database; several machines can then share it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from .._io import output_error
from ..env import PruningEnv
from ..errors import AutopruneError
from ._preset import Preset
from ._registry import ALGORITHMS, OPTUNA, load_entry_point

__all__ = ["make_sampler", "open_storage", "open_study", "play", "objective",
           "finished_trials", "trial_seed", "distributions"]

IDENTITY = ("arch", "space", "dataset", "checkpoint", "criterion", "reward", "targets")


# each sampler's settings beyond the seed: warm-up episodes become its random start-up trials
_SAMPLER_SETTINGS: dict[str, Callable[[Preset], dict[str, Any]]] = {
    "tpe": lambda p: {"n_startup_trials": p.warmup_episodes},
    "cmaes": lambda p: {"n_startup_trials": max(p.warmup_episodes, 1), "warn_independent_sampling": False},
    "qmc": lambda p: {"scramble": True, "warn_independent_sampling": False},
}


def make_sampler(preset: Preset, seed: int) -> Any:
    """The preset's Optuna sampler (its class from the registry); its hyperparameters override the defaults."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # multivariate TPE, QMC: stable in use
    spec = preset.spec
    if spec.kind is not OPTUNA:
        raise AutopruneError(f"{preset.algorithm!r} is not an Optuna agent; those are "
                             f"{', '.join(a.name for a in ALGORITHMS.values() if a.kind is OPTUNA)}.")
    settings = _SAMPLER_SETTINGS.get(preset.algorithm, lambda p: {})(preset)
    return load_entry_point(spec.entry_point)(seed=seed, **{**settings, **preset.hyperparameters})


def trial_seed(preset: Preset, seed: int, finished: int) -> int:
    """The sampler seed of the trial after ``finished`` ones (QMC: always ``seed``)."""
    if preset.spec.one_seed:
        return seed
    return int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])


def _check_reachable(url: str) -> None:
    """Fail fast, naming the URL, when a database server cannot be reached (instead of a long hang)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise AutopruneError(f"--storage {url!r} is not a database URL (e.g. sqlite:///study.db, "
                             f"postgresql://user:pw@host/db): {e}") from e
    if parsed.host:
        port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name(), 0)
        try:
            socket.create_connection((parsed.host, port), timeout=5).close()
        except OSError as e:
            raise AutopruneError(f"The study storage {parsed.render_as_string(hide_password=True)} cannot be "
                                 f"reached ({parsed.host}:{port}: {e}). Is the database server running?") from e


def open_storage(url: str) -> Any:
    """An Optuna RDB storage for ``url``; SQLite waits for locks, so parallel workers can share a file."""
    import optuna

    _check_reachable(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as e:
        raise AutopruneError(f"The study storage {url.split('@')[-1]} needs a database driver that is not "
                             f"installed ({e}).") from e
    except Exception as e:  # sqlalchemy raises many kinds; all mean the same to a user (its SQL dump does not)
        where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        raise output_error(e, where) or AutopruneError(
            f"Could not open the study storage {url.split('@')[-1]}: {str(e).splitlines()[0]}") from e


def open_study(storage: Any, name: str, preset: Preset, identity: dict[str, Any], *, sampler: Any = None,
               pruner: Any = None) -> Any:
    """Create or load the study ``name``; refuse one made for another model, space or budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would break the progress bar
    directions = ["maximize", "minimize"] if preset.spec.one_study else ["maximize"]
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True,
                                    sampler=sampler, pruner=pruner)
    except ValueError as e:  # an existing study with other directions
        raise AutopruneError(f"Study {name!r} exists in the storage for another kind of search: {e}") from e
    saved = study.user_attrs.get("autoprune")
    if saved is None:
        study.set_user_attr("autoprune", identity)
    else:
        for key in IDENTITY:
            if saved.get(key) != identity.get(key):
                raise AutopruneError(f"Study {name!r} in the storage was made for {key} {saved.get(key)!r}, not "
                                     f"{identity.get(key)!r}; choose another --study-name, or match it.")
    return study


def finished_trials(study: Any) -> list[Any]:
    """Completed and pruned trials: those that count towards the study's length."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def distributions(env: PruningEnv, preset: Preset) -> dict[str, Any]:
    """The search space as Optuna distributions (for samplers that need it up front, such as Ray's)."""
    from optuna.distributions import FloatDistribution

    lo, hi = float(env.action_space.low[0]), float(env.action_space.high[0])
    space = {f"g{j:03d}": FloatDistribution(lo, hi) for j in range(env.n)}
    if preset.spec.one_study:
        space = {"target": FloatDistribution(min(preset.targets), max(preset.targets)), **space}
    return space


def play(trial: Any, env: PruningEnv, target: float | None, screen: Callable[[float], None] | None = None
         ) -> tuple[float, dict[str, Any]]:
    """One episode whose actions ``trial`` suggests (or fixes, for an ``optuna.trial.FixedTrial``).

    ``target`` None: the trial suggests it too (multi-objective runs over a range of budgets).
    ``screen`` is called with the accuracy on a quarter of the reward images before the rest
    is evaluated; it may raise ``optuna.TrialPruned``.
    """
    lo, hi = float(env.action_space.low[0]), float(env.action_space.high[0])
    if target is None:
        low, high = min(env.config.targets), max(env.config.targets)
        target = trial.suggest_float("target", low, high)
    env.reset(options={"target": target, "screen": screen})
    for j in range(env.n):
        ratio = trial.suggest_float(f"g{j:03d}", lo, hi)
        _, reward, _, _, info = env.step(np.array([ratio], dtype=np.float32))
    return float(reward), info


def objective(env: PruningEnv, preset: Preset, target: float | None, on_episode: Callable[[dict, float], None],
              multi_fidelity: bool) -> Callable[[Any], float | tuple[float, float]]:
    """The study's objective: play one episode, record it, return the reward (and for NSGA-II the fraction
    of the budget metric kept: MACs, params or latency)."""
    import optuna

    def run(trial: optuna.Trial) -> float | tuple[float, float]:
        def screen(accuracy: float) -> None:
            trial.report(accuracy, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()

        reward, info = play(trial, env, target, screen if multi_fidelity else None)
        policy = info["policy"]
        for key, value in (("counts", [int(c) for c in info["counts"]]), ("accuracy", float(info["accuracy"])),
                           ("target", float(info["target"])), ("macs_fraction", policy.macs_fraction),
                           ("fraction", float(info["fraction"])),
                           ("params_fraction", policy.params_fraction), ("cached", bool(info["cached"]))):
            trial.set_user_attr(key, value)
        on_episode(info, reward)
        if preset.spec.one_study:
            return float(info["accuracy"]), float(info["fraction"])
        return reward

    return run
