"""The RL searcher: train a stable-baselines3 agent in chunks, checkpointing after each.

After each chunk the run directory gets a complete checkpoint (agent, replay
buffer, environment cache, RNG states), so Ctrl-C loses at most the current
chunk and ``--resume`` continues as if nothing had happened. A trained agent
also answers for targets it was not asked (a conditional agent across its range).
"""

from __future__ import annotations

import time
from typing import Any

from .._io import reading
from ..env import PruningEnv
from ..errors import AutopruneError
from ._agents import build_agent, episodes_per_learn, load_agent, total_episodes
from ._preset import Preset
from ._run_dir import SearchRunDir
from ._searcher import Proposals, Searcher, add_candidate, asked_targets
from ._tracker import Tracker

__all__ = ["RLSearcher", "run_rl", "rollout"]


class RLSearcher(Searcher):
    """An RL agent (AMC's DDPG, CACP, TD3, SAC, PPO): its episodes' policies, then its own answer per target."""

    def search(self, env: PruningEnv, run: SearchRunDir, resume: bool) -> Proposals:
        tracker = Tracker(run, env.space.channels, env.config.reward)
        started = time.perf_counter()
        try:
            agent = run_rl(self.preset, env, run, tracker, self.config.seed, resume)
        finally:
            tracker.close()
        proposals = Proposals.played(env, tracker.candidates, started)
        asked = asked_targets(self.config, env)
        for target in asked:  # what the trained actor proposes (CACP's export)
            reward, counts = rollout(agent, env, target)
            add_candidate(proposals.pools, target, reward, counts)
        others = [t for t in env.config.targets if t not in asked]
        if others:  # trained on, not asked: the final pick answers only what was asked
            proposals.notes.append(
                f"the agent also trained on target(s) {', '.join(f'{t:g}' for t in others)}: ask for them with "
                f"--target-{env.metric.name} next time, or export its answer for any target in "
                f"[{min(env.config.targets):g}, {max(env.config.targets):g}] without searching: "
                f"autoprune export-policy --run {run.path} --target-{env.metric.name} T")
        return proposals

    def export(self, env: PruningEnv, run: SearchRunDir, target: float) -> list[int]:
        low, high = min(self.preset.targets), max(self.preset.targets)
        if not low <= target <= high:
            raise AutopruneError(f"The agent of {run.path} was trained on targets {list(self.preset.targets)}; "
                                 f"{target} is outside [{low}, {high}], where its answers are extrapolations. "
                                 "Search again with that target.")
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            raise AutopruneError(f"{run.path} has no checkpoint yet: nothing trained to export from.")
        return rollout(load_agent(self.preset, env, checkpoint[0]), env, target)[1]


def _callback(tracker: Tracker) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCallback(BaseCallback):
        def _on_step(self) -> bool:
            for done, info, reward in zip(self.locals["dones"], self.locals["infos"], self.locals["rewards"]):
                if done and "policy" in info:
                    tracker.episode(info, float(reward))
            return True

    return EpisodeCallback()


def run_rl(preset: Preset, env: PruningEnv, run: SearchRunDir, tracker: Tracker, seed: int, resume: bool) -> Any:
    """Train (or keep training) the preset's agent for its episodes; returns the agent."""
    checkpoint = run.latest_checkpoint(resuming=True) if resume else None
    if checkpoint is None:
        if resume:  # stopped before the first checkpoint: start over, without the rows of that attempt
            run.truncate_episodes(0)
        env.reset(seed=seed)
        agent = build_agent(preset, env, seed)
        tracker.start(total_episodes(preset), 0, {})
    else:
        folder, state = checkpoint
        with reading(folder / "state.yaml", "Checkpoint state"):
            env.load_state_dict(state["env"])
        agent = load_agent(preset, env, folder)  # sets the global generators back too
        # SB3 would reset the env with the seed again (restarting the target schedule); an
        # uninterrupted run resets without one at this point, so do the same.
        agent.get_env()._seeds = [None] * agent.get_env().num_envs
        run.truncate_episodes(state["episodes"])
        tracker.start(total_episodes(preset), state["episodes"],
                      {float(t): v for t, v in state["candidates"].items()})
        run.log(f"resumed after episode {state['episodes']}")
    callback = _callback(tracker)
    chunk = episodes_per_learn(preset)
    while tracker.episodes < tracker.total:
        n = min(chunk, tracker.total - tracker.episodes)
        agent.learn(total_timesteps=n * env.n, reset_num_timesteps=False, callback=callback)
        run.save_checkpoint(tracker.episodes, agent, {
            "episodes": tracker.episodes, "env": env.state_dict(),
            "candidates": {t: v for t, v in tracker.candidates.items()}})
        run.log(f"checkpoint after episode {tracker.episodes}; evaluations so far {env.evaluations}")
    return agent


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
