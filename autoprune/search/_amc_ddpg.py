"""AMC's DDPG agent on top of stable-baselines3.

AMC (He et al., "AMC: AutoML for Model Compression", ECCV 2018) searches one
keep ratio per prunable layer group with DDPG. Its search episode is short
(one step per group), its reward is known only at the end (the pruned model's
accuracy) and each episode costs an evaluation, so AMC departs from textbook
DDPG in a few places that stable-baselines3 does not cover:

* every transition of an episode is rewarded with the episode's *final*
  reward minus a moving-average baseline (``_replay.EpisodeRewardReplayBuffer``);
* exploration samples a normal around the actor's ratio, *truncated* to the
  ratio bounds, whose std decays by episode (``_noise.TruncatedNormalNoise``);
* warm-up is counted in episodes of uniformly random ratios, the actor and the
  critic learn at different rates, there is no discount, and the networks are
  updated T times after each episode (:class:`AMCDDPG`).

One algorithm per file, like stable-baselines3; its buffer and noise live beside it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.td3.policies import TD3Policy

from ._noise import TruncatedNormalNoise
from ._replay import EpisodeRewardReplayBuffer

__all__ = ["AMCDDPG"]

# learning_starts while the episode length is still unknown (during the first episode).
_UNKNOWN_WARMUP_STEPS = sys.maxsize


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
    A checkpoint (:mod:`autoprune.search._agent_files`) records the states of
    all those generators -- including the process-global ones, since SB3
    samples minibatches from numpy's global generator -- with the networks,
    the replay buffer and :attr:`checkpoint_attributes`, so that restoring it
    into a freshly built agent and calling ``learn(..., reset_num_timesteps=False)``
    continues exactly like an uninterrupted run (provided the environment
    itself resets deterministically: SB3 resets a newly attached environment).

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
        if buffer_size is None:
            buffer_size = 100 * episode_length if episode_length is not None else 1_000_000
        if policy_kwargs is None:
            policy_kwargs = {"net_arch": {"pi": [300, 300], "qf": [300, 300]}}
        super().__init__(
            policy=policy,
            env=env,  # type: ignore[arg-type]
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

    @property
    def checkpoint_attributes(self) -> tuple[str, ...]:
        """What a checkpoint keeps beyond SB3's counters: T (the first episode may set it) and the decayed std."""
        noise = ("action_noise.sigma",) if isinstance(self.action_noise, TruncatedNormalNoise) else ()
        return ("episode_length", *noise)

    @property
    def checkpoint_generators(self) -> dict[str, np.random.Generator]:
        """The generators of its own that a checkpoint keeps: the exploration noise's."""
        return {"noise": self.action_noise.rng} if isinstance(self.action_noise, TruncatedNormalNoise) else {}

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
