"""AMC's replay buffer, and any SB3 replay buffer's contents as plain arrays (for an agent's checkpoint)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

__all__ = ["EpisodeRewardReplayBuffer", "buffer_state", "load_buffer_state"]

# The arrays of SB3's ReplayBuffer; next_observations is None under optimize_memory_usage.
_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
_STAGED = ("obs", "next_obs", "action", "done")


class _StagedTransition(NamedTuple):
    obs: np.ndarray
    next_obs: np.ndarray
    action: np.ndarray
    done: np.ndarray
    infos: list[dict[str, Any]]


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Replay buffer that rewards every step of an episode with its final reward minus a baseline.

    Why: the environment only scores a pruning policy once every layer has its
    ratio, so AMC credits each of the episode's actions with that final score.
    Transitions are therefore *staged* while the episode runs (they cannot be
    sampled yet) and pushed into the real buffer when it ends, each with
    ``final_reward - baseline``. The baseline is an exponential moving average
    of the final rewards (``baseline = decay * baseline + (1 - decay) * final``,
    initialised with the first episode's reward) and reduces the variance of
    the critic targets: accuracy-based rewards sit in a narrow band around
    e.g. 0.7, and what the critic must learn is the difference.

    The advantage uses the baseline *before* it is updated with the episode's
    own reward (so the first episode's transitions get exactly 0). Only the
    last step's reward is used; the environment contract makes the others 0.
    ``done`` flags are stored as given (only the last step is terminal).

    The staged episode and the baseline travel with the buffer's arrays in
    :func:`buffer_state`, so a resumed agent finishes a half-staged episode
    as the uninterrupted one would.

    :param buffer_size: maximum number of (committed) transitions.
    :param observation_space: observation space.
    :param action_space: action space.
    :param device: PyTorch device of the sampled tensors.
    :param n_envs: must be 1: episodes of several environments would interleave.
    :param optimize_memory_usage: see :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
    :param handle_timeout_termination: see :class:`~stable_baselines3.common.buffers.ReplayBuffer`.
    :param baseline_decay: weight of the old baseline in the moving average (AMC: 0.95).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        baseline_decay: float = 0.95,
    ) -> None:
        if n_envs != 1:
            raise ValueError(
                f"EpisodeRewardReplayBuffer handles a single environment (n_envs=1), got n_envs={n_envs}: "
                "the final reward is shared by the steps of one episode, which several envs would interleave."
            )
        if not 0.0 <= baseline_decay <= 1.0:
            raise ValueError(f"baseline_decay must lie in [0, 1], got {baseline_decay}")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self.staged: list[_StagedTransition] = []
        self.last_episode_length: int | None = None

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Stage one transition; when ``done``, commit the whole episode with its advantage."""
        self.staged.append(
            _StagedTransition(np.array(obs), np.array(next_obs), np.array(action), np.array(done), list(infos))
        )
        if np.any(done):
            self.end_episode(float(np.asarray(reward).reshape(-1)[0]))

    def end_episode(self, final_reward: float) -> float:
        """Commit the staged episode, each transition rewarded ``final_reward - baseline``; return that advantage."""
        if self.baseline is None:
            self.baseline = final_reward
        advantage = final_reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1.0 - self.baseline_decay) * final_reward
        reward = np.array([advantage], dtype=np.float32)
        for t in self.staged:
            super().add(t.obs, t.next_obs, t.action, reward, t.done, t.infos)
        self.last_episode_length = len(self.staged)
        self.staged = []
        return advantage

    def reset(self) -> None:
        """Empty the buffer and drop the staged episode (the baseline is kept)."""
        super().reset()
        self.staged = []

    def _episode_state(self) -> dict[str, np.ndarray]:
        """Baseline, last episode length and the staged transitions as arrays (empty ones for None/none).

        Of a staged transition's infos only what SB3's ``add`` reads is kept:
        the time-limit flag.
        """
        arrays = {
            "baseline": np.array([] if self.baseline is None else [self.baseline], dtype=np.float64),
            "last_episode_length": np.array([] if self.last_episode_length is None else [self.last_episode_length],
                                            dtype=np.int64),
            "staged_timeout": np.array([[bool(i.get("TimeLimit.truncated", False)) for i in t.infos]
                                        for t in self.staged], dtype=bool).reshape(len(self.staged), self.n_envs),
        }
        like = {"obs": self.observations, "next_obs": self.observations, "action": self.actions, "done": self.dones}
        for field in _STAGED:
            rows = [getattr(t, field) for t in self.staged]
            arrays[f"staged_{field}"] = np.stack(rows) if rows else np.zeros((0, *like[field].shape[1:]),
                                                                               like[field].dtype)
        return arrays

    def _load_episode_state(self, arrays: dict[str, np.ndarray]) -> None:
        baseline, length = arrays["baseline"], arrays["last_episode_length"]
        if baseline.shape not in ((0,), (1,)) or length.shape not in ((0,), (1,)):
            raise ValueError("baseline and last_episode_length must hold at most one value each")
        staged = [arrays[f"staged_{field}"] for field in (*_STAGED, "timeout")]
        if len({len(a) for a in staged}) != 1:
            raise ValueError("the staged transitions' arrays differ in length")
        self.baseline = float(baseline[0]) if baseline.size else None
        self.last_episode_length = int(length[0]) if length.size else None
        obs, next_obs, action, done, timeout = staged
        self.staged = [_StagedTransition(obs[i], next_obs[i], action[i], done[i],
                                         [{"TimeLimit.truncated": bool(x)} for x in timeout[i]])
                       for i in range(len(obs))]


def buffer_state(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """A replay buffer's contents as numeric arrays (for an ``.npz``): the filled rows only, and where it writes next."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: getattr(buffer, name)[:n] for name in _ARRAYS if getattr(buffer, name, None) is not None}
    arrays["pos"] = np.array(buffer.pos, dtype=np.int64)
    arrays["full"] = np.array(buffer.full, dtype=bool)
    if isinstance(buffer, EpisodeRewardReplayBuffer):
        arrays.update(buffer._episode_state())
    return arrays


def load_buffer_state(buffer: ReplayBuffer, arrays: dict[str, np.ndarray]) -> None:
    """Fill a freshly built (all-zero) ``buffer`` from :func:`buffer_state`'s arrays.

    Raises ``KeyError``/``ValueError``/``TypeError`` when the arrays do not fit
    the buffer (the caller names the file).
    """
    pos, full = int(arrays["pos"]), bool(arrays["full"])
    if not 0 <= pos < buffer.buffer_size:
        raise ValueError(f"pos {pos} lies outside the buffer of {buffer.buffer_size} transitions")
    n = buffer.buffer_size if full else pos
    for name in _ARRAYS:
        target = getattr(buffer, name, None)
        if target is None:
            continue
        saved = arrays[name]
        if saved.shape != (n, *target.shape[1:]) or saved.dtype != target.dtype:
            raise ValueError(f"{name} is {saved.dtype}{list(saved.shape)}, the buffer needs "
                             f"{target.dtype}{[n, *target.shape[1:]]}")
        target[:n] = saved
    buffer.pos, buffer.full = pos, full
    if isinstance(buffer, EpisodeRewardReplayBuffer):
        buffer._load_episode_state(arrays)
