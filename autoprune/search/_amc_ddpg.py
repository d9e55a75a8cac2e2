"""AMC's DDPG agent on top of stable-baselines3.

AMC (He et al., "AMC: AutoML for Model Compression", ECCV 2018) searches one
keep ratio per prunable layer group with DDPG. Its search episode is short
(one step per group), its reward is known only at the end (the pruned model's
accuracy) and each episode costs an evaluation, so AMC departs from textbook
DDPG in a few places that stable-baselines3 does not cover:

* every transition of an episode is rewarded with the episode's *final*
  reward minus a moving-average baseline (:class:`EpisodeRewardReplayBuffer`);
* exploration samples a normal around the actor's ratio, *truncated* to the
  ratio bounds, whose std decays by episode (:class:`TruncatedNormalNoise`);
* warm-up is counted in episodes of uniformly random ratios, the actor and the
  critic learn at different rates, there is no discount, and the networks are
  updated T times after each episode (:class:`AMCDDPG`).

One algorithm per file, like stable-baselines3.
"""

from __future__ import annotations

import io
import pathlib
import random
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.td3.policies import TD3Policy

try:  # scipy samples the truncated normal exactly; without it we reject-sample.
    from scipy.stats import truncnorm
except ImportError:  # pragma: no cover - scipy is a stable-baselines3 extra, usually present
    truncnorm = None

__all__ = ["AMCDDPG", "EpisodeRewardReplayBuffer", "TruncatedNormalNoise"]

SelfAMCDDPG = TypeVar("SelfAMCDDPG", bound="AMCDDPG")

# learning_starts while the episode length is still unknown (during the first episode).
_UNKNOWN_WARMUP_STEPS = sys.maxsize


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

    The staged episode and the baseline are plain attributes, so a pickle
    round trip (``save_replay_buffer``/``load_replay_buffer``) keeps them.

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


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: a normal centred on the actor's action, truncated to the action bounds.

    Why: additive Gaussian noise followed by clipping piles probability mass on
    the bounds (e.g. many layers at exactly the minimal keep ratio); AMC
    instead resamples inside ``[low, high]``. The std starts large (AMC: 0.5,
    wide for ratios in [0.2, 1]) and decays by ``decay`` after each
    post-warm-up episode (AMC: 0.95), moving from exploration to exploitation.

    Unlike SB3's additive noises this one needs the actor's action, so it is
    used through :meth:`sample` (as :class:`AMCDDPG` does); calling it like an
    additive noise raises. :meth:`reset` is SB3's per-episode hook: the noise
    is memoryless, so there is nothing to clear. The decay is *not* done in
    :meth:`reset` because SB3 also calls it at the start of every ``learn()``,
    which would tie the schedule to how training is chunked; the owner calls
    :meth:`decay_sigma` once per post-warm-up episode instead.

    The state (current ``sigma`` and the generator ``rng``) pickles with the noise.

    :param low: lower action bound(s).
    :param high: upper action bound(s).
    :param sigma: initial std, in action units.
    :param decay: factor applied to ``sigma`` by :meth:`decay_sigma`.
    :param seed: seed of the noise's own generator.
    """

    def __init__(
        self,
        low: np.ndarray | float,
        high: np.ndarray | float,
        sigma: float = 0.5,
        decay: float = 0.95,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if np.any(self.low > self.high):
            raise ValueError(f"low {self.low} exceeds high {self.high}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        """Re-create the generator from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def sample(self, mean: np.ndarray) -> np.ndarray:
        """Draw from N(mean, sigma^2) truncated to [low, high] (float64, same shape as ``mean``)."""
        mean = np.clip(np.asarray(mean, dtype=np.float64), self.low, self.high)
        if self.sigma == 0.0:
            return mean
        if truncnorm is not None:
            a, b = (self.low - mean) / self.sigma, (self.high - mean) / self.sigma
            draw = truncnorm.rvs(a, b, loc=mean, scale=self.sigma, size=mean.shape, random_state=self.rng)
        else:  # pragma: no cover - exercised only without scipy
            draw = self._reject_sample(mean)
        return np.clip(draw, self.low, self.high)  # guard against round-off at the bounds

    def _reject_sample(self, mean: np.ndarray, max_rounds: int = 1000) -> np.ndarray:
        low, high = np.broadcast_to(self.low, mean.shape), np.broadcast_to(self.high, mean.shape)
        draw = np.full(mean.shape, np.nan)
        for _ in range(max_rounds):
            todo = np.isnan(draw)
            if not todo.any():
                break
            x = self.rng.normal(mean[todo], self.sigma)
            draw[todo] = np.where((x >= low[todo]) & (x <= high[todo]), x, np.nan)
        return np.where(np.isnan(draw), mean, draw)

    def decay_sigma(self) -> None:
        """One post-warm-up episode has ended: ``sigma *= decay``."""
        self.sigma *= self.decay

    def reset(self) -> None:
        """SB3's end-of-episode hook; nothing to reset (see the class docstring)."""

    def __call__(self) -> np.ndarray:
        raise RuntimeError(
            "TruncatedNormalNoise is centred on the actor's action: use sample(actor_action), as AMCDDPG does"
        )

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(low={self.low}, high={self.high}, sigma={self.sigma}, decay={self.decay})"


class AMCDDPG(DDPG):
    """DDPG with AMC's search-specific choices (He et al., ECCV 2018).

    What differs from SB3's :class:`~stable_baselines3.DDPG` and why:

    * **Episode-final reward with baseline** -- :class:`EpisodeRewardReplayBuffer`.
    * **Warm-up in episodes** -- the first ``warmup_episodes`` episodes take
      uniformly random ratios to fill the buffer with diverse policies before
      the critic is trusted. ``learning_starts`` is ``warmup_episodes * T``;
      T is ``episode_length`` or, when that is None, the length of the first
      episode (the contract fixes T, so one episode tells it).
    * **Truncated-normal exploration** around the actor's action after warm-up,
      std ``sigma`` decaying by ``sigma_decay`` after every post-warm-up
      episode (the first one uses ``sigma`` itself) -- :class:`TruncatedNormalNoise`.
    * **Two learning rates** -- actor 1e-4, critic 1e-3: the critic must track
      rewards quickly, the actor must move slowly along its gradient. SB3 has a
      single ``learning_rate`` and re-applies it to every optimiser at each
      ``train()``; here ``learning_rate`` drives the actor and
      ``critic_learning_rate`` the critic (set after construction and kept by
      overriding ``_update_learning_rate``).
    * **No discount** (``gamma=1``): an episode is a short, fixed-length
      sequence of decisions that jointly produce one score.
    * **Update after each episode** (``train_freq=(1, "episode")``) with
      ``gradient_steps=-1``, which SB3 turns into "as many steps as the episode
      had", i.e. T updates per episode, as AMC does when it replays the episode
      into memory.
    * **AMC's networks and optimisation constants**: actor and critic MLPs
      300-300, ``tau=0.01``, ``batch_size=64``.

    Reproducibility: everything is seeded from ``seed`` (SB3 seeds Python,
    numpy, torch and the action space; the noise generator is seeded too).
    :meth:`save` also records the states of all those generators and
    :meth:`load` restores them -- including the process-global ones, since SB3
    samples minibatches from numpy's global generator -- so that saving the
    model and its replay buffer, loading both and calling
    ``learn(..., reset_num_timesteps=False)`` continues exactly like an
    uninterrupted run (provided the environment itself resets deterministically:
    SB3 resets a newly attached environment).

    :param policy: policy class or name (``"MlpPolicy"``).
    :param env: the search environment (a single environment).
    :param warmup_episodes: episodes of uniformly random actions before learning (AMC: 100).
    :param episode_length: T, steps per episode; None to infer it from the first episode.
    :param learning_rate: actor learning rate (AMC: 1e-4), float or schedule.
    :param critic_learning_rate: critic learning rate (AMC: 1e-3), float or schedule.
    :param sigma: initial std of the truncated-normal exploration, in action units (AMC: 0.5).
    :param sigma_decay: per-episode decay of ``sigma`` after warm-up (AMC: 0.95).
    :param baseline_decay: moving-average weight of the reward baseline (AMC: 0.95).
    :param buffer_size: replay capacity in transitions; None gives AMC's 100 episodes
        (``100 * episode_length``) when ``episode_length`` is known, else 1e6.
    :param batch_size: minibatch size (AMC: 64).
    :param tau: soft target-update coefficient (AMC: 0.01).
    :param gamma: discount (AMC: 1.0).
    :param gradient_steps: updates per episode; -1 means T (AMC).
    :param action_noise: exploration noise; None builds :class:`TruncatedNormalNoise` from
        ``sigma``/``sigma_decay`` and the action bounds.
    :param policy_kwargs: policy arguments; None gives 300-300 actor and critic.
    :param tensorboard_log: see SB3.
    :param verbose: see SB3.
    :param seed: seed of every random generator involved.
    :param device: see SB3.
    :param _init_setup_model: see SB3.
    """

    def __init__(
        self,
        policy: str | type[TD3Policy],
        env: GymEnv | str | None,
        warmup_episodes: int = 100,
        episode_length: int | None = None,
        learning_rate: float | Schedule = 1e-4,
        critic_learning_rate: float | Schedule = 1e-3,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        baseline_decay: float = 0.95,
        buffer_size: int | None = None,
        batch_size: int = 64,
        tau: float = 0.01,
        gamma: float = 1.0,
        gradient_steps: int = -1,
        action_noise: ActionNoise | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if warmup_episodes < 0:
            raise ValueError(f"warmup_episodes must be >= 0, got {warmup_episodes}")
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.warmup_episodes = warmup_episodes
        self.episode_length = episode_length
        self.critic_learning_rate = critic_learning_rate
        self.sigma = sigma
        self.sigma_decay = sigma_decay
        self._rng_state: dict[str, Any] | None = None
        if buffer_size is None:
            buffer_size = 100 * episode_length if episode_length is not None else 1_000_000
        if policy_kwargs is None:
            policy_kwargs = {"net_arch": {"pi": [300, 300], "qf": [300, 300]}}
        super().__init__(
            policy=policy,
            env=env,  # type: ignore[arg-type]  # None only when SB3's load() rebuilds the model
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=self._warmup_steps(),
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=(1, "episode"),
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=EpisodeRewardReplayBuffer,
            replay_buffer_kwargs={"baseline_decay": baseline_decay},
            policy_kwargs=policy_kwargs,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _warmup_steps(self) -> int:
        if self.warmup_episodes == 0:
            return 0
        if self.episode_length is None:
            return _UNKNOWN_WARMUP_STEPS
        return self.warmup_episodes * self.episode_length

    def _setup_model(self) -> None:
        if self.action_noise is None:
            assert isinstance(self.action_space, spaces.Box)
            self.action_noise = TruncatedNormalNoise(
                self.action_space.low, self.action_space.high, sigma=self.sigma, decay=self.sigma_decay
            )
        super()._setup_model()  # seeds everything (set_random_seed), builds buffer and networks
        critic_lr = self.critic_learning_rate
        self.critic_lr_schedule: Schedule = critic_lr if callable(critic_lr) else (lambda _: float(critic_lr))
        update_learning_rate(self.critic.optimizer, self.critic_lr_schedule(1.0))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "critic_lr_schedule"]  # rebuilt by _setup_model

    def set_random_seed(self, seed: int | None = None) -> None:
        """Seed SB3's generators and the exploration noise."""
        super().set_random_seed(seed)
        if seed is not None and isinstance(self.action_noise, TruncatedNormalNoise):
            self.action_noise.seed(seed)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        # SB3 would set the actor's rate on the critic too; give each optimiser its own.
        progress = self._current_progress_remaining
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            schedule = self.critic_lr_schedule if optimizer is self.critic.optimizer else self.lr_schedule
            update_learning_rate(optimizer, schedule(progress))
        self.logger.record("train/learning_rate", self.lr_schedule(progress))
        self.logger.record("train/critic_learning_rate", self.critic_lr_schedule(progress))

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform ratios during warm-up, else a truncated normal around the actor's ratio.

        Returns the action for the environment and its [-1, 1]-scaled version
        for the buffer. SB3's version adds noise in the scaled space and clips;
        AMC resamples inside the bounds instead.
        """
        assert isinstance(self.action_space, spaces.Box)
        if self.num_timesteps < learning_starts:
            action = np.array([self.action_space.sample() for _ in range(n_envs)])
        else:
            assert self._last_obs is not None, "self._last_obs was not set"
            action, _ = self.predict(self._last_obs, deterministic=True)
            if isinstance(action_noise, TruncatedNormalNoise):
                action = action_noise.sample(action)
            elif action_noise is not None:  # an ordinary additive SB3 noise, applied as SB3 does
                action = self.policy.unscale_action(np.clip(self.policy.scale_action(action) + action_noise(), -1, 1))
        action = np.clip(np.asarray(action, dtype=self.action_space.dtype), self.action_space.low, self.action_space.high)
        return action, self.policy.scale_action(action)

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if not dones[0]:
            return
        if self.episode_length is None:  # first episode: now T, hence the warm-up in steps, is known
            assert isinstance(replay_buffer, EpisodeRewardReplayBuffer)
            self.episode_length = replay_buffer.last_episode_length
            self.learning_starts = self._warmup_steps()
        # num_timesteps already counts the episode that just ended: it was a policy episode
        # (not warm-up) exactly when it ended after learning_starts.
        if self.num_timesteps > self.learning_starts and isinstance(self.action_noise, TruncatedNormalNoise):
            self.action_noise.decay_sigma()

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """SB3's save, plus the states of every random generator (restored by :meth:`load`)."""
        self._rng_state = self._capture_rng_state()
        super().save(path, exclude=exclude, include=include)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfAMCDDPG],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfAMCDDPG:
        """SB3's load, then the random generators resume where :meth:`save` left them.

        SB3's load re-seeds everything from ``seed`` (it rebuilds the model),
        which would replay the random streams from their start.
        """
        model = super().load(
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
        model._restore_rng_state()
        return model

    def _capture_rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": th.get_rng_state().numpy(),
            "action_space": self.action_space.np_random.bit_generator.state,
        }
        if th.cuda.is_available():
            state["cuda"] = [s.numpy() for s in th.cuda.get_rng_state_all()]
        if isinstance(self.action_noise, TruncatedNormalNoise):
            state["noise"] = self.action_noise.rng.bit_generator.state
        return state

    def _restore_rng_state(self) -> None:
        state = self._rng_state
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        th.set_rng_state(th.from_numpy(state["torch"]))
        if "cuda" in state and th.cuda.is_available():
            th.cuda.set_rng_state_all([th.from_numpy(s) for s in state["cuda"]])
        self.action_space.np_random.bit_generator.state = state["action_space"]
        if "noise" in state and isinstance(self.action_noise, TruncatedNormalNoise):
            self.action_noise.rng.bit_generator.state = state["noise"]
