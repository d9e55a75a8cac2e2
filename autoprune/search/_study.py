"""The Optuna searcher: one study per target (NSGA-II: one over the range), run serially,
by ``workers`` processes sharing the study's storage, or through Ray Tune.

The study is the source of truth: episodes.csv is rewritten from it when a run
resumes or when workers finish, and the final candidates come from it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from ..env import PruningEnv
from ..errors import AutopruneError
from ..policy import Policy
from ..pruning import uniform_counts
from ..tune import RayOptions, ray_session
from ._config import SearchConfig
from ._optuna import (
    finished_trials,
    make_sampler,
    objective,
    open_storage,
    open_study,
    trial_seed,
)
from ._preset import Preset
from ._ray import run_ray
from ._run_dir import SearchRunDir
from ._searcher import Candidate, Proposals, Searcher, add_candidate
from ._session import setup
from ._tracker import Tracker, episode_row

__all__ = ["OptunaSearcher", "run_optuna", "studies", "export_front"]


class OptunaSearcher(Searcher):
    """An Optuna sampler (TPE, CMA-ES, random, QMC, NSGA-II): every trial one episode of the environment."""

    def search(self, env: PruningEnv, run: SearchRunDir, resume: bool) -> Proposals:
        preset = self.preset
        identity = {"arch": self.config.arch, "space": env.space.name, "dataset": env.evaluator.dataset.name,
                    "checkpoint": env.checkpoint, "criterion": preset.criterion, "reward": preset.reward}
        tracker = Tracker(run, env.space.channels, env.config.reward)
        started = time.perf_counter()
        try:
            pools = run_optuna(self.config, preset, env, run, tracker, identity, resume)
        finally:
            tracker.close()
        return Proposals.played(env, pools, started)

    def export(self, env: PruningEnv, run: SearchRunDir, target: float) -> list[int]:
        raise AutopruneError(f"{run.path} is an Optuna run ({self.preset.algorithm}): it has no agent that answers "
                             "for new targets; its policies are the policy-<target>.json files (NSGA-II: front/).")


def studies(preset: Preset, base_name: str) -> list[tuple[float | None, str]]:
    """(target, study name) pairs: NSGA-II's target is a parameter of its one study."""
    if preset.spec.one_study:
        return [(None, base_name)]
    return [(t, f"{base_name}-t{t:g}") for t in preset.targets]


def _pruner(preset: Preset) -> Any:
    import optuna

    if not preset.multi_fidelity or preset.spec.one_study:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=max(preset.warmup_episodes, 1), n_warmup_steps=0)


def _warm_start(study: Any, env: PruningEnv, target: float | None, preset: Preset, policies: list[Policy]) -> None:
    """First trials: the uniform policy (each target of the range, for NSGA-II), then earlier runs' policies."""
    space = env.space
    channels = space.channels

    def params(ratios: np.ndarray, t: float) -> dict[str, float]:
        lo, hi = env.action_space.low[0], env.action_space.high[0]
        p = {f"g{j:03d}": float(np.clip(r, lo, hi)) for j, r in enumerate(ratios)}
        return {"target": t, **p} if target is None else p

    for t in ([target] if target is not None else preset.targets):
        study.enqueue_trial(params(uniform_counts(space, t, env.metric) / channels, t))
    for policy in policies:
        t = target if target is not None else float(np.clip(policy.budget_fraction, min(preset.targets),
                                                                max(preset.targets)))
        study.enqueue_trial(params(np.array([policy.ratios[n] for n in space.names]), t))


def _earlier(path: str, env: PruningEnv) -> Policy:
    policy = Policy.load(path)
    policy.validate(env.space)
    return policy


def _requeue_unfinished(study: Any, storage: Any) -> None:
    """Fail the trials an interrupted run of this directory left RUNNING (nobody will finish them); if one of
    them was enqueued (the warm start), queue the warm start's unfinished trials again in their first order.

    A kill during the uniform policy's trial would otherwise lose the warm start for good: the study is
    no longer empty, so it is not enqueued again, and the resumed run would differ from an uninterrupted
    one. Nothing is re-queued when nothing was lost, so trial numbers stay those of an uninterrupted run.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t.system_attrs.get("fixed_params") for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    waiting = [t.system_attrs.get("fixed_params") for t in trials if t.state == TrialState.WAITING]
    pending: list[dict[str, float]] = []
    for trial in trials:  # in trial-number order
        params = trial.system_attrs.get("fixed_params")
        if params is not None and params not in done and params not in pending:
            pending.append(params)
    lost = [p for p in pending if p not in waiting]
    for trial in trials:  # no public id on FrozenTrial
        if trial.state == TrialState.RUNNING or (lost and trial.state == TrialState.WAITING):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    for params in pending if lost else ():
        study.enqueue_trial(params, skip_if_exists=False)


@contextlib.contextmanager
def _finish_trial_on_interrupt() -> Iterator[list[bool]]:
    """The first Ctrl-C lets the running trial finish (seconds) and then stops; a second stops at once.

    A trial cut short would stay in the study as failed, and CMA-ES (which seeds by trial
    number) and QMC (which counts its samples in the study) would then propose other trials
    than an uninterrupted run; finishing it keeps ``--resume`` exact for every sampler.
    """
    asked = [False]
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum: int, frame: Any) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True
        print("\nInterrupted: finishing the running trial, then stopping (Ctrl-C again to stop now).",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def _serial(study: Any, env: PruningEnv, preset: Preset, target: float | None, n_trials: int, seed: int,
            tracker: Tracker) -> None:
    run = objective(env, preset, target, tracker.episode, preset.multi_fidelity)
    with _finish_trial_on_interrupt() as interrupted:
        while (done := len(finished_trials(study))) < n_trials:
            study.sampler = make_sampler(preset, trial_seed(preset, seed, done))
            study.optimize(run, n_trials=1)
            if study.get_trials(deepcopy=False)[-1].state.name == "PRUNED":
                tracker.advance()
            if interrupted[0]:
                raise KeyboardInterrupt


def _worker(config: dict[str, Any], storage_url: str, name: str, target: float | None, n_trials: int,
            index: int, threads: int) -> None:
    """One of ``--workers`` processes: its own env and evaluator, the shared study."""
    import torch
    from optuna.trial import TrialState

    torch.set_num_threads(threads)
    preset, env, _, _ = setup(SearchConfig(**config))
    storage = open_storage(storage_url)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage, pruner=_pruner(preset))
    run = objective(env, preset, target, lambda info, reward: None, preset.multi_fidelity)
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    while (done := len(study.get_trials(deepcopy=False, states=states))) < n_trials:
        study.sampler = make_sampler(preset, trial_seed(preset, config["seed"] + 7919 * (index + 1), done))
        try:
            study.optimize(run, n_trials=1)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # both workers popped the same enqueued trial (SQLite has no row locks): the other one told it
        except ValueError as e:  # the same race as Optuna 5 reports it, from its tell
            if "Cannot tell a COMPLETE trial" not in str(e):
                raise


def _parallel(study: Any, config: SearchConfig, storage_url: str, name: str, target: float | None, n_trials: int,
              tracker: Tracker) -> None:
    workers = config.workers
    threads = max((os.cpu_count() or 1) // workers, 1)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(asdict(config), storage_url, name, target, n_trials, i, threads))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        seen = len(finished_trials(study))
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            now = len(finished_trials(study))
            tracker.advance(now - seen)
            seen = now
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise AutopruneError(f"{len(failed)} of {workers} search workers failed (exit codes {failed}); "
                             "their errors are printed above. The study keeps what finished: --resume continues.")


def _rewrite_episodes(run: SearchRunDir, pairs: list[tuple[float | None, Any]], channels: np.ndarray,
                      tracker: Tracker | None = None) -> tuple[int, int]:
    """episodes.csv (and, given ``tracker``, the TensorBoard curves) from the studies' completed trials.

    Returns (trials finished, episodes).
    """
    from optuna.trial import TrialState

    run.truncate_episodes(0)
    n, finished, best = 0, 0, {}
    for _, study in pairs:
        for trial in finished_trials(study):
            finished += 1
            if trial.state != TrialState.COMPLETE or "counts" not in trial.user_attrs:
                continue
            n += 1
            a = trial.user_attrs
            reward = trial.values[0] if len(trial.values) == 1 else a["accuracy"]
            run.append_episode(episode_row(n, a["target"], reward, a["accuracy"], a["macs_fraction"],
                                           a["params_fraction"], a["cached"], np.asarray(a["counts"]) / channels))
            if tracker is not None:
                best[a["target"]] = max(best.get(a["target"], reward), reward)
                tracker.scalars(n, a["target"], reward, a["accuracy"], a["macs_fraction"], best[a["target"]])
    return finished, n


def _candidates(pairs: list[tuple[float | None, Any]], targets: tuple[float, ...]) -> dict[float, list[Candidate]]:
    """[reward, counts] of the completed trials per target (NSGA-II: those within each target's budget)."""
    from optuna.trial import TrialState

    candidates: dict[float, list[Candidate]] = {}
    for target, study in pairs:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = trial.user_attrs
            if "counts" not in a:
                continue
            kept = a.get("fraction", a["macs_fraction"])  # a trial of a study begun before budgets had metrics: MACs
            for t in ([target] if target is not None else [t for t in targets if kept <= t + 1e-9]):
                add_candidate(candidates, t, trial.values[0], a["counts"])
    return candidates


def run_optuna(config: SearchConfig, preset: Preset, env: PruningEnv, run: SearchRunDir, tracker: Tracker, identity: dict[str, Any],
               resume: bool) -> dict[float, list[Candidate]]:
    """Run the preset's studies to their length; returns the candidates per target."""
    url = config.storage or f"sqlite:///{(run.path / 'study.db').resolve()}"
    storage = open_storage(url)
    base = config.study_name or run.path.name
    channels = env.space.channels
    pairs, names = [], []
    for target, name in studies(preset, base):
        ident = {**identity, "targets": [target] if target is not None else list(preset.targets)}
        study = open_study(storage, name, preset, ident, pruner=_pruner(preset))
        if resume and config.storage is None:
            _requeue_unfinished(study, storage)
        if not study.trials:
            _warm_start(study, env, target, preset, [_earlier(p, env) for p in config.warm_start])
        pairs.append((target, study))
        names.append(name)
    done, episodes = _rewrite_episodes(run, pairs, channels)
    tracker.start(preset.total_episodes, done, {}, episodes=episodes)
    if resume:
        run.log(f"resumed after {done} trials")
    with contextlib.ExitStack() as stack:
        if config.ray:  # one Ray for every study of the run (each study's own session joins it)
            stack.enter_context(ray_session(RayOptions(address=config.ray_address, verbose=0)))
        for (target, study), name in zip(pairs, names):
            if config.ray:
                run_ray(config, preset, env, study, storage, name, target, preset.episodes, tracker)
            elif config.workers > 1:
                _parallel(study, config, url, name, target, preset.episodes, tracker)
            else:
                env.reset(seed=config.seed)
                _serial(study, env, preset, target, preset.episodes, config.seed, tracker)
    if config.ray or config.workers > 1:  # other processes played the episodes: log them from the study
        _rewrite_episodes(run, pairs, channels, tracker)
    if preset.spec.one_study:
        export_front(run, env, pairs[0][1], preset.algorithm)
    return _candidates(pairs, preset.targets)


def export_front(run: SearchRunDir, env: PruningEnv, study: Any, agent: str) -> list[Policy]:
    """A multi-objective study's (NSGA-II's) Pareto front as policies, CSV and plot.

    The front is holdout accuracy on the reward part against MACs kept.
    """
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    front = sorted((t for t in study.best_trials if "counts" in t.user_attrs), key=lambda t: t.values[1])
    folder = run.path / "front"
    folder.mkdir(exist_ok=True)
    policies = []
    with open(run.path / "front.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["policy", "trial", "target", "macs_fraction", "params_fraction", "accuracy"])
        for i, trial in enumerate(front):
            a = trial.user_attrs
            policy = env.policy(a["counts"], a["target"], provenance={"agent": agent, "trial": trial.number})
            policy.accuracy["reward"] = a["accuracy"]
            name = f"policy-{i:03d}.json"
            policy.save(folder / name)
            policies.append(policy)
            out.writerow([f"front/{name}", trial.number, f"{a['target']:.6f}", f"{a['macs_fraction']:.6f}",
                          f"{a['params_fraction']:.6f}", f"{a['accuracy']:.6f}"])
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "counts" in t.user_attrs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.values[1] for t in done], [100 * t.values[0] for t in done], s=10, c="0.7", label="trials")
    ax.plot([t.values[1] for t in front], [100 * t.values[0] for t in front], "o-", c="C3", label="Pareto front")
    ax.set_xlabel("MACs kept (fraction)")
    ax.set_ylabel("holdout accuracy, reward part (%)")
    ax.set_title(f"{agent}: {env.space.arch}, {len(done)} trials")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run.path / "front.png", dpi=120)
    plt.close(fig)
    run.log(f"Pareto front: {len(front)} policies in front/, front.csv, front.png")
    return policies
