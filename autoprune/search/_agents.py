"""Build, save and reload the stable-baselines3 agents named by presets (imported only when used).

An agent is saved as data files (:mod:`._agent_files`), never pickled, and
reloaded by building it afresh from its preset and seed and putting that
state back, so a run directory from anywhere can be resumed without running
code from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..env import PruningEnv
from ._agent_files import read_agent, restore_agent, save_agent
from ._preset import Preset
from ._registry import load_entry_point

__all__ = ["build_agent", "load_agent", "save_agent", "episodes_per_learn", "total_episodes"]


def episodes_per_learn(preset: Preset) -> int:
    """Episodes between checkpoints: PPO must stop on a rollout boundary, so it uses its rollout length."""
    if preset.spec.family == "on-policy":
        return min(int(preset.hyperparameters.get("episodes_per_update", 10)), preset.total_episodes)
    return preset.checkpoint_every


def total_episodes(preset: Preset) -> int:
    """Episodes a run makes: PPO rounds up to whole rollouts, others run exactly the preset's."""
    chunk = episodes_per_learn(preset)
    return -(-preset.total_episodes // chunk) * chunk if preset.spec.family == "on-policy" else preset.total_episodes


def build_agent(preset: Preset, env: PruningEnv, seed: int) -> Any:
    """A fresh agent for ``env``. Agents are small MLPs: they run on the CPU, the models on the device."""
    cls = load_entry_point(preset.spec.entry_point)
    hp = dict(preset.hyperparameters)
    common: dict[str, Any] = dict(seed=seed, device="cpu", verbose=0)
    steps = env.n
    if preset.spec.family == "amc":
        return cls("MlpPolicy", env, warmup_episodes=preset.warmup_episodes, episode_length=steps, **common, **hp)
    if preset.spec.family == "on-policy":
        n_steps = episodes_per_learn(preset) * steps
        hp.pop("episodes_per_update", None)
        # the largest divisor of the rollout up to 64: no ragged last minibatch
        hp.setdefault("batch_size", next(b for b in range(min(64, n_steps), 0, -1) if n_steps % b == 0))
        return cls("MlpPolicy", env, n_steps=n_steps, **common, **hp)
    return cls("MlpPolicy", env, learning_starts=preset.warmup_episodes * steps, train_freq=(1, "episode"),
               gradient_steps=-1, **common, **hp)


def load_agent(preset: Preset, env: PruningEnv, path: Path) -> Any:
    """The agent :func:`save_agent` wrote into the folder ``path``, attached to ``env``.

    It continues exactly as the saved one would, replay buffer and random
    generators included (the process-global ones are set back too). A damaged
    or foreign file raises :class:`~autoprune.errors.CheckpointError` naming it.
    """
    files = read_agent(path)
    agent = build_agent(preset, env, files.seed)
    restore_agent(agent, files)
    return agent
