"""`autoprune search`: run an agent on the pruning environment, then pick and report policies.

RL agents (``_rl``) and Optuna studies (``_study``) play the same env, so their
policies are judged by one evaluator and one cost model. The final pick
guards against the winner's curse: the best ``top_k`` policies by reward
(scored on the holdout's "reward" part) are re-scored on its disjoint
"select" part; the winner's holdout accuracy is the sum of the two parts, and it
is measured on the test split once. A handcrafted method (``_handcrafted``) has one answer per
target: nothing to re-judge, the same table.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._io import json_bytes
from .._table import format_table
from ..checkpoints import load_model
from ..env import EnvConfig, PruningEnv
from ..errors import AutopruneError
from ..evaluate import Evaluator
from ..policy import Policy
from ..pruning import space_for, uniform_counts
from ._agents import load_agent
from ._preset import Preset, load_preset
from ._rl import rollout, run_rl
from ._run_dir import SearchRunDir
from ._tracker import Tracker

__all__ = ["SearchConfig", "SearchResult", "export_policy", "resume_config", "search", "setup"]


@dataclass
class SearchConfig:
    """Everything a search run depends on (saved as the run's config.yaml)."""

    arch: str
    data_dir: str
    agent: str = "cacp"
    checkpoint: str = "pretrained"
    targets: list[float] | None = None  # None: the preset's
    episodes: int | None = None  # per target; None: the preset's
    space: str | None = None
    dataset: str = "cifar10"
    seed: int = 0
    device: str = "auto"
    holdout: int = 5000
    reward_samples: int = 1000
    # 1,000 recalibration images: their noise (0.29 points from a 4,000-image recalibration) is far below
    # the 1.4 points of sampling noise of the 1,000 reward images, at half the cost of 2,000 (bench_recal.py)
    recal_batches: int = 10
    recal_batch_size: int = 100
    top_k: int = 5
    multi_fidelity: bool | None = None  # Optuna; None: the preset's
    storage: str | None = None  # Optuna; None: SQLite in the run directory
    study_name: str | None = None  # Optuna; None: the run directory's name
    workers: int = 1  # Optuna: trials evaluated at once
    ray: bool = False  # Optuna: run the trials through Ray Tune
    ray_address: str | None = None  # None: a local Ray
    warm_start: list[str] = field(default_factory=list)  # Optuna: policy files to try first
    preset: dict[str, Any] = field(default_factory=dict)  # filled in: the resolved preset

    def __post_init__(self) -> None:
        if self.episodes is not None and self.episodes < 1:
            raise AutopruneError(f"--episodes must be at least 1, but got {self.episodes}.")
        if self.top_k < 1:
            raise AutopruneError(f"--top-k must be at least 1, but got {self.top_k}.")
        if self.workers < 1:
            raise AutopruneError(f"--workers must be at least 1, but got {self.workers}.")
        if self.recal_batches < 1:
            raise AutopruneError(f"--recal-batches must be at least 1 for a search, but got {self.recal_batches}: "
                                 "the rewards would be meaningless, since BatchNorm statistics would not be "
                                 "recalibrated after pruning and every pruned model scores near chance.")


@dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        run_dir: the run directory.
        policies: the final policy per target.
        table: the printed table.
        uniform: holdout and test accuracy of the uniform-L1 policy per target.
        evaluations: distinct policies evaluated during the search (cache hits excluded).
        seconds: wall time of this process's search (without the final pick), and its split.
        notes: what to do next, for the command line to print (e.g. how to fine-tune from saved weights).
    """

    run_dir: Path
    policies: dict[float, Policy]
    table: str
    uniform: dict[float, tuple[float, float]]
    evaluations: int
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)


def setup(config: SearchConfig) -> tuple[Preset, PruningEnv, Evaluator, Any]:
    """The preset, environment, evaluator and prunable space a run of ``config`` uses."""
    if config.preset:  # a run being resumed: the preset as resolved when it started, whatever the YAML says now
        preset = Preset(**{**config.preset, "targets": tuple(config.preset["targets"])})
    else:
        preset = load_preset(config.agent, episodes=config.episodes, multi_fidelity=config.multi_fidelity)
        if config.targets:  # a multi-target preset keeps its range and adds the asked targets
            asked = tuple(float(t) for t in config.targets)
            targets = tuple(sorted(set(preset.targets) | set(asked))) if len(preset.targets) > 1 else asked
            preset = replace(preset, targets=targets)
    if (config.workers > 1 or config.ray) and not preset.optuna:
        raise AutopruneError(f"--workers and --ray run Optuna agents in parallel; {preset.name!r} is not one "
                             f"({preset.algorithm}: {'a handcrafted method' if preset.handcrafted else 'an RL agent'}).")
    model, sha = load_model(config.arch, config.checkpoint)
    evaluator = Evaluator.from_data_dir(config.data_dir, config.arch, dataset=config.dataset, holdout=config.holdout,
                                        seed=config.seed, device=config.device, recal_batches=config.recal_batches,
                                        recal_batch_size=config.recal_batch_size, reward_samples=config.reward_samples)
    space = space_for(model, config.arch, config.space)
    # a handcrafted method selects its own channels; its env only prices and gives the uniform-L1 reference
    criterion = "l1" if preset.handcrafted else preset.criterion
    env = PruningEnv(space, evaluator, EnvConfig(targets=preset.targets, reward=preset.reward, criterion=criterion),
                     dataset=evaluator.dataset.name, checkpoint=sha)
    return preset, env, evaluator, space


def search(config: SearchConfig, out: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
           cli_options: dict[str, Any] | None = None) -> SearchResult:
    """Run (or resume) a search into ``out`` and return the final policies per target.

    ``out`` is claimed before the model and data load (:class:`~autoprune._run_dir.RunDir`: a user's
    folder or another command's run is refused); a search that fails before its first episode removes
    what it wrote, so the corrected command starts afresh instead of being told to resume the bad one.
    ``cli_options`` are command-line settings outside ``config`` (``{"report": False}``) kept for ``--resume``.
    """
    if resume:
        run = SearchRunDir.open(out)
    else:
        SearchRunDir.check(out, overwrite=overwrite)
    preset, env, evaluator, space = setup(config)
    config.preset = preset.to_dict()
    if not resume:
        run = SearchRunDir.create(out, asdict(config), overwrite=overwrite, cli_options=cli_options)
    with run.cleanup_unless_started():
        return _search(config, run, preset, env, evaluator, space, resume)


def _search(config: SearchConfig, run: SearchRunDir, preset: Preset, env: PruningEnv, evaluator: Evaluator,
            space: Any, resume: bool) -> SearchResult:
    """The search proper, in a run directory already claimed."""
    if preset.handcrafted:  # one answer per target, no search
        from ._handcrafted import run_handcrafted

        return run_handcrafted(config, preset, env, evaluator, space, run)
    tracker = Tracker(run, np.array([g.channels for g in space.searchable]))
    started = time.perf_counter()
    agent = None
    try:
        if preset.optuna:
            from ._study import run_optuna

            identity = {"arch": config.arch, "space": space.name, "dataset": evaluator.dataset.name,
                        "checkpoint": env.checkpoint, "criterion": preset.criterion, "reward": preset.reward}
            candidates = run_optuna(config, preset, env, run, tracker, identity, resume)
        else:
            agent = run_rl(preset, env, run, tracker, config.seed, resume)
            candidates = tracker.candidates
    finally:
        tracker.close()
    seconds = {"search": time.perf_counter() - started, **env.timings}
    run.log("time split (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
            + f"; evaluations {env.evaluations}")
    return _finish(config, run, env, evaluator, space, candidates, agent, seconds, env.evaluations)


def _finish(config: SearchConfig, run: SearchRunDir, env: PruningEnv, evaluator: Evaluator, space: Any,
            candidates: dict[float, list[list]], agent: Any, seconds: dict[str, float], evaluations: int
            ) -> SearchResult:
    rows, policies, references = [], {}, {}
    targets = env.config.targets
    missing = [t for t in targets if agent is None and not candidates.get(float(t))]
    if missing:
        raise AutopruneError(f"No finished episode meets the target(s) {missing}: nothing to pick from. "
                             "Search longer (--episodes).")
    bar = tqdm(total=len(targets) * (config.top_k + 2), desc="final pick", unit="eval")
    for target in targets if agent is not None else ():  # what the trained actor proposes (CACP's export)
        reward, counts = rollout(agent, env, target)
        pool = candidates.setdefault(float(target), [])
        if all(c != counts for _, c in pool):
            pool.append([reward, counts])
    for target in sorted(candidates):
        top = sorted(candidates[target], reverse=True)[: config.top_k]
        best = None  # (select accuracy, reward, counts, model, select images): the winner's model is judged on test
        for reward, counts in top:  # re-judged on holdout images the search never scored
            model = env.judged(counts)
            select = evaluator.holdout(model, part="select")
            if best is None or (select.top1, reward) > best[:2]:
                best = (select.top1, reward, counts, model, select.samples)
            bar.update(1)
        select_acc, reward, counts, model, n_select = best
        policy = env.policy(counts, target, provenance={"agent": config.agent, "seed": config.seed,
                                                          "episodes": len(candidates[target])})
        # the whole holdout is the reward part plus the select part, both measured on this recalibration
        # (the reward part by the search, cached): adding them up is exact and costs nothing
        reward_acc, n_reward = env.accuracy(counts)[0], config.reward_samples
        holdout = (round(reward_acc * n_reward) + round(select_acc * n_select)) / (n_reward + n_select)
        policy.accuracy.update({"reward": reward if env.config.reward == "acc" else reward_acc,
                                "select": select_acc, "holdout": holdout, "test": evaluator.test(model).top1})
        u_hold, u_test = references[target] = uniform_reference(env, evaluator, space, target)
        bar.update(2 + config.top_k - len(top))
        policies[target] = policy
        rows.append((f"{target:g}", f"{policy.macs_fraction:.3f}", f"{policy.params_fraction:.3f}",
                     f"{100 * policy.accuracy['holdout']:.2f}", f"{100 * policy.accuracy['test']:.2f}",
                     f"{100 * u_hold:.2f}", f"{100 * u_test:.2f}"))
    bar.close()
    main = float(config.targets[0]) if config.targets else env.config.targets[0]
    table = format_table(TABLE_HEADER, rows)
    run.log("final\n" + table)
    outputs = {  # all or none; the policy-<target>.json files, which say a search finished, go in last
        "result.json": json_bytes({  # what the table and the log say, for scripts and reports
            "evaluations": evaluations, "seconds": seconds,
            "uniform": {f"{t:g}": {"holdout": h, "test": u} for t, (h, u) in references.items()}}),
        "policy.json": json_bytes(policies[main].to_dict()),  # the first target asked for
        **{f"policy-{t:g}.json": json_bytes(p.to_dict()) for t, p in policies.items()}}
    run.write_outputs({name: lambda f, data=data: f.write(data) for name, data in outputs.items()})
    return SearchResult(run.path, policies, table, references, evaluations, seconds)


TABLE_HEADER = ["target", "MACs kept", "params kept", "holdout %", "test %", "uniform-L1 holdout %",
                "uniform-L1 test %"]


def uniform_reference(env: PruningEnv, evaluator: Evaluator, space: Any, target: float) -> tuple[float, float]:
    """Holdout and test accuracy of the uniform-L1 policy at ``target``, the column beside every agent's pick."""
    reference = evaluator.ready(evaluator.prepare(space.apply(env.policy(uniform_counts(space, target), target).channels)))
    return evaluator.holdout(reference).top1, evaluator.test(reference).top1


def resume_config(run_dir: str | os.PathLike[str], arch: str | None = None, space: str | None = None) -> SearchConfig:
    """The configuration of the run in ``run_dir``; refuses an ``arch``/``space`` that differs from it."""
    saved = SearchRunDir.open(run_dir, writing=False).read_config()
    for key, given in (("arch", arch), ("space", space)):
        if given is not None and given != saved.get(key):
            raise AutopruneError(f"{run_dir} is a run for {key} {saved.get(key)!r}, not {given!r}; "
                                 f"resume it without --{key}, or start a new run.")
    return SearchConfig(**saved)


def export_policy(run_dir: str | os.PathLike[str], target: float, out: str | os.PathLike[str] | None = None) -> Policy:
    """A policy for ``target`` from the trained agent of a run, without searching again.

    Meant for conditional agents: ``target`` must lie inside the range they were trained on.
    """
    config = resume_config(run_dir)
    preset, env, evaluator, space = setup(config)
    if preset.handcrafted:
        raise AutopruneError(f"{run_dir} is a run of the handcrafted method {preset.algorithm!r}: it has no agent; "
                             f"run it at the new target: autoprune search --agent {config.agent} --target-flops {target}.")
    if preset.optuna:
        raise AutopruneError(f"{run_dir} is an Optuna run ({preset.algorithm}): it has no agent that answers for "
                             "new targets; its policies are the policy-<target>.json files (NSGA-II: front/).")
    low, high = min(preset.targets), max(preset.targets)
    if not low <= target <= high:
        raise AutopruneError(f"The agent of {run_dir} was trained on targets {list(preset.targets)}; "
                             f"{target} is outside [{low}, {high}], where its answers are extrapolations. "
                             "Search again with that target.")
    run = SearchRunDir(Path(run_dir))
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise AutopruneError(f"{run_dir} has no checkpoint yet: nothing trained to export from.")
    agent = load_agent(preset, env, checkpoint[0])
    _, counts = rollout(agent, env, target)
    policy = env.policy(counts, target, provenance={"agent": config.agent, "exported_from": str(run_dir)})
    model = evaluator.ready(evaluator.prepare(space.apply(policy.channels)))
    policy.accuracy["holdout"] = evaluator.holdout(model).top1
    policy.save(out or Path(run_dir) / f"policy-{target:g}.json")
    return policy
