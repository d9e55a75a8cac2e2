"""`autoprune search`: train an agent on the pruning environment, then pick and report policies.

The search runs in chunks of episodes; after each chunk the run directory
gets a complete checkpoint (agent, replay buffer, environment cache, RNG
states), so Ctrl-C loses at most the current chunk and ``--resume`` continues
as if nothing had happened. The final pick guards against the winner's
curse: the best ``top_k`` policies by reward (scored on the holdout's
"reward" part) are re-scored on its disjoint "select" part; the winner is
then measured on the whole holdout, and on the test split once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._table import format_table
from ..checkpoints import load_model
from ..env import EnvConfig, PruningEnv
from ..errors import AutopruneError
from ..evaluate import Evaluator
from ..policy import Policy
from ..pruning import space_for, uniform_counts
from ._agents import build_agent, episodes_per_learn, load_agent, total_episodes
from ._preset import Preset, load_preset
from ._run_dir import RunDir

__all__ = ["SearchConfig", "SearchResult", "search", "resume_config", "export_policy"]


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
    recal_batches: int = 20
    recal_batch_size: int = 100
    top_k: int = 5
    preset: dict[str, Any] = field(default_factory=dict)  # filled in: the resolved preset

    def __post_init__(self) -> None:
        if self.episodes is not None and self.episodes < 1:
            raise AutopruneError(f"--episodes must be at least 1, but got {self.episodes}.")
        if self.top_k < 1:
            raise AutopruneError(f"--top-k must be at least 1, but got {self.top_k}.")


@dataclass
class SearchResult:
    run_dir: Path
    policies: dict[float, Policy]
    table: str


class _Tracker:
    """Per-episode bookkeeping: the CSV, the progress bar, the best candidates per target."""

    def __init__(self, run: RunDir, space_channels: np.ndarray, total: int, done: int, candidates: dict) -> None:
        self.run, self.channels = run, space_channels
        self.candidates: dict[float, list[list]] = candidates  # target -> [[reward, counts], ...]
        self.episodes = done
        self.bar = tqdm(total=total, initial=done, desc="search", unit="ep")

    def episode(self, info: dict[str, Any], reward: float) -> None:
        self.episodes += 1
        policy: Policy = info["policy"]
        target = float(info["target"])
        ratios = np.asarray(info["counts"]) / self.channels
        self.run.append_episode({
            "episode": self.episodes, "target": target, "reward": f"{reward:.6f}", "accuracy": f"{info['accuracy']:.6f}",
            "macs_fraction": f"{policy.macs_fraction:.6f}", "params_fraction": f"{policy.params_fraction:.6f}",
            "cached": int(info["cached"]), "ratios": " ".join(f"{r:.4f}" for r in ratios)})
        pool = self.candidates.setdefault(target, [])
        counts = [int(c) for c in info["counts"]]
        if all(c != counts for _, c in pool):
            pool.append([float(reward), counts])
        best = max(pool)
        self.bar.set_postfix(best=f"{best[0]:.4f}", macs=f"{policy.macs_fraction:.3f}", target=target)
        self.bar.update(1)


def _callback(tracker: _Tracker) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCallback(BaseCallback):
        def _on_step(self) -> bool:
            for done, info, reward in zip(self.locals["dones"], self.locals["infos"], self.locals["rewards"]):
                if done and "policy" in info:
                    tracker.episode(info, float(reward))
            return True

    return EpisodeCallback()


def _setup(config: SearchConfig) -> tuple[Preset, PruningEnv, Evaluator, Any]:
    preset = load_preset(config.agent, episodes=config.episodes)
    if config.targets:  # a conditional preset keeps its range and adds the asked targets
        asked = tuple(float(t) for t in config.targets)
        targets = tuple(sorted(set(preset.targets) | set(asked))) if len(preset.targets) > 1 else asked
        preset = replace(preset, targets=targets)
    model, sha = load_model(config.arch, config.checkpoint)
    evaluator = Evaluator.from_data_dir(config.data_dir, config.arch, dataset=config.dataset, holdout=config.holdout,
                                        seed=config.seed, device=config.device, recal_batches=config.recal_batches,
                                        recal_batch_size=config.recal_batch_size, reward_samples=config.reward_samples)
    space = space_for(model, config.arch, config.space)
    env = PruningEnv(space, evaluator, EnvConfig(targets=preset.targets, reward=preset.reward,
                                                 criterion=preset.criterion),
                     dataset=evaluator.dataset.name, checkpoint=sha)
    return preset, env, evaluator, space


def search(config: SearchConfig, out: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> SearchResult:
    """Run (or resume) a search into ``out`` and return the final policies per target."""
    preset, env, evaluator, space = _setup(config)
    config.preset = preset.to_dict()
    if resume:
        run, _ = RunDir.open(Path(out))
    else:
        run = RunDir.create(Path(out), asdict(config), overwrite=overwrite)
    checkpoint = run.latest_checkpoint() if resume else None
    if checkpoint is None:
        env.reset(seed=config.seed)
        agent = build_agent(preset, env, config.seed)
        done, candidates = 0, {}
    else:
        folder, state = checkpoint
        env.load_state_dict(state["env"])
        agent = load_agent(preset, env, folder)
        RunDir.restore_rng(folder)  # after load(), which reseeds the global generators
        # SB3 would reset the env with the seed again (restarting the target schedule); an
        # uninterrupted run resets without one at this point, so do the same.
        agent.get_env()._seeds = [None] * agent.get_env().num_envs
        done = state["episodes"]
        candidates = {float(t): v for t, v in state["candidates"].items()}
        run.truncate_episodes(done)
        run.log(f"resumed after episode {done}")
    total = total_episodes(preset)
    channels = np.array([g.channels for g in space.searchable])
    tracker = _Tracker(run, channels, total, done, candidates)
    callback = _callback(tracker)
    chunk = episodes_per_learn(preset)
    try:
        while tracker.episodes < total:
            n = min(chunk, total - tracker.episodes)
            agent.learn(total_timesteps=n * env.n, reset_num_timesteps=False, callback=callback)
            run.save_checkpoint(tracker.episodes, agent, {
                "episodes": tracker.episodes, "env": env.state_dict(),
                "candidates": {t: v for t, v in tracker.candidates.items()}})
            run.log(f"checkpoint after episode {tracker.episodes}; evaluations so far {env.evaluations}")
    finally:
        tracker.bar.close()
    return _finish(config, run, env, evaluator, space, tracker.candidates, agent)


def rollout(agent: Any, env: PruningEnv, target: float) -> tuple[float, list[int]]:
    """Reward and kept counts of the agent's deterministic policy at ``target``.

    A conditional agent answers for any target in its range, without searching again.
    """
    obs, _ = env.reset(options={"target": target})
    done = False
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, done, _, info = env.step(action)
    return float(reward), [int(c) for c in info["counts"]]


def _finish(config: SearchConfig, run: RunDir, env: PruningEnv, evaluator: Evaluator, space: Any,
            candidates: dict[float, list[list]], agent: Any) -> SearchResult:
    rows, policies = [], {}
    targets = env.config.targets
    bar = tqdm(total=len(targets) * (config.top_k + 2), desc="final pick", unit="eval")
    for target in targets:  # what the trained actor itself proposes for each target (CACP's export)
        reward, counts = rollout(agent, env, target)
        pool = candidates.setdefault(float(target), [])
        if all(c != counts for _, c in pool):
            pool.append([reward, counts])
    for target in sorted(candidates):
        top = sorted(candidates[target], reverse=True)[: config.top_k]
        scored = []
        for reward, counts in top:  # re-judged on holdout images the search never scored
            scored.append((env.accuracy(counts, part="select")[0], reward, counts))
            bar.update(1)
        select_acc, reward, counts = max(scored, key=lambda s: (s[0], s[1]))
        policy = env.policy(counts, target, provenance={"agent": config.agent, "seed": config.seed,
                                                          "episodes": len(candidates[target])})
        model = evaluator.prepare(space.apply(policy.channels))
        evaluator.recalibrate(model)
        policy.accuracy.update({"reward": reward if env.config.reward == "acc" else env.accuracy(counts)[0],
                                "select": select_acc, "holdout": evaluator.holdout(model).top1,
                                "test": evaluator.test(model).top1})
        uniform = uniform_counts(space, target)
        reference = evaluator.prepare(space.apply(env.policy(uniform, target).channels))
        evaluator.recalibrate(reference)
        u_hold, u_test = evaluator.holdout(reference).top1, evaluator.test(reference).top1
        bar.update(2 + config.top_k - len(top))
        policy.save(run.path / f"policy-{target:g}.json")
        policies[target] = policy
        rows.append((f"{target:g}", f"{policy.macs_fraction:.3f}", f"{policy.params_fraction:.3f}",
                     f"{100 * policy.accuracy['holdout']:.2f}", f"{100 * policy.accuracy['test']:.2f}",
                     f"{100 * u_hold:.2f}", f"{100 * u_test:.2f}"))
    bar.close()
    main = float(config.targets[0]) if config.targets else env.config.targets[0]
    policies[main].save(run.path / "policy.json")  # the first target asked for
    table = format_table(["target", "MACs kept", "params kept", "holdout %", "test %", "uniform-L1 holdout %",
                          "uniform-L1 test %"], rows)
    run.log("final\n" + table)
    return SearchResult(run.path, policies, table)


def resume_config(run_dir: str | os.PathLike[str], arch: str | None = None, space: str | None = None) -> SearchConfig:
    """The configuration of the run in ``run_dir``; refuses an ``arch``/``space`` that differs from it."""
    _, saved = RunDir.open(Path(run_dir))
    saved = {k: v for k, v in saved.items() if k != "preset"}
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
    preset, env, evaluator, space = _setup(config)
    low, high = min(preset.targets), max(preset.targets)
    if not low <= target <= high:
        raise AutopruneError(f"The agent of {run_dir} was trained on targets {list(preset.targets)}; "
                             f"{target} is outside [{low}, {high}], where its answers are extrapolations. "
                             "Search again with that target.")
    run = RunDir(Path(run_dir))
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise AutopruneError(f"{run_dir} has no checkpoint yet: nothing trained to export from.")
    agent = load_agent(preset, env, checkpoint[0])
    reward, counts = rollout(agent, env, target)
    policy = env.policy(counts, target, provenance={"agent": config.agent, "exported_from": str(run_dir)})
    model = evaluator.prepare(space.apply(policy.channels))
    evaluator.recalibrate(model)
    policy.accuracy["holdout"] = evaluator.holdout(model).top1
    policy.save(out or Path(run_dir) / f"policy-{target:g}.json")
    return policy
