"""The RL side of a search: train a stable-baselines3 agent in chunks, checkpointing after each.

After each chunk the run directory gets a complete checkpoint (agent, replay
buffer, environment cache, RNG states), so Ctrl-C loses at most the current
chunk and ``--resume`` continues as if nothing had happened.
"""

from __future__ import annotations

from typing import Any

from ..env import PruningEnv
from ._agents import build_agent, episodes_per_learn, load_agent, total_episodes
from ._preset import Preset
from ._run_dir import SearchRunDir
from ._tracker import Tracker

__all__ = ["run_rl", "rollout"]


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
    checkpoint = run.latest_checkpoint() if resume else None
    if checkpoint is None:
        env.reset(seed=seed)
        agent = build_agent(preset, env, seed)
        tracker.start(total_episodes(preset), 0, {})
    else:
        folder, state = checkpoint
        env.load_state_dict(state["env"])
        agent = load_agent(preset, env, folder)
        SearchRunDir.restore_rng(folder)  # after load(), which reseeds the global generators
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
