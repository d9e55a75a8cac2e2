"""AMC's DDPG agent (autoprune.search._amc_ddpg) on a toy environment with the search contract."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import DummyVecEnv

from autoprune.search._agent_files import read_agent, restore_agent, save_agent
from autoprune.search._amc_ddpg import AMCDDPG
from autoprune.search._noise import TruncatedNormalNoise
from autoprune.search._replay import EpisodeRewardReplayBuffer, buffer_state, load_buffer_state

T = 5
LOW, HIGH = 0.2, 1.0


class ToyPruneEnv(gym.Env):
    """T steps; obs = [t/T, previous action]; reward 0 until the last step, then 1 - mean((a_t - target_t)^2).

    The targets vary with t (and sit away from the middle of the bounds, where
    an untrained tanh actor points), so improving needs learning.
    """

    targets = np.linspace(0.3, 0.5, T)

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(LOW, HIGH, (1,), np.float32)
        self.actions: list[float] = []  # every action received, across episodes
        self.final_rewards: list[float] = []
        self.t, self.prev, self.episode = 0, 1.0, []

    def _obs(self) -> np.ndarray:
        return np.array([self.t / T, self.prev], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.prev, self.episode = 0, 1.0, []
        return self._obs(), {}

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        assert LOW <= a <= HIGH, a
        self.actions.append(a)
        self.episode.append(a)
        self.t, self.prev = self.t + 1, a
        terminated = self.t == T
        reward = 0.0
        if terminated:
            reward = 1.0 - float(np.mean((np.array(self.episode) - self.targets) ** 2))
            self.final_rewards.append(reward)
        return self._obs(), reward, terminated, False, {}


def make(env: ToyPruneEnv | None = None, **kwargs) -> AMCDDPG:
    kwargs.setdefault("warmup_episodes", 3)
    kwargs.setdefault("seed", 0)
    return AMCDDPG("MlpPolicy", env if env is not None else ToyPruneEnv(), device="cpu", **kwargs)


def actor_weights(model: AMCDDPG) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.actor.parameters()]


def expected_advantages(final_rewards: list[float], decay: float = 0.95) -> tuple[list[float], float]:
    baseline, advantages = final_rewards[0], []
    for r in final_rewards:
        advantages.append(r - baseline)  # baseline before the update
        baseline = decay * baseline + (1 - decay) * r
    return advantages, baseline


# --- replay buffer ------------------------------------------------------------------------------


def toy_buffer(**kwargs) -> EpisodeRewardReplayBuffer:
    env = ToyPruneEnv()
    return EpisodeRewardReplayBuffer(100, env.observation_space, env.action_space, device="cpu", **kwargs)


def add_episode(buf: EpisodeRewardReplayBuffer, final_reward: float, steps: int = T, finish: bool = True) -> None:
    for t in range(steps):
        last = finish and t == steps - 1
        obs = np.array([[t / T, 0.5]], dtype=np.float32)
        buf.add(obs, obs + 0.1, np.array([[0.1 * t]]), np.array([final_reward if last else 0.0]), np.array([last]), [{}])


def test_baseline_arithmetic_and_staging():
    buf = toy_buffer()
    add_episode(buf, 0.5)
    assert buf.baseline == pytest.approx(0.5) and buf.pos == T
    np.testing.assert_allclose(buf.rewards[:T, 0], 0.0)  # first episode: baseline = its own reward
    add_episode(buf, 0.9)
    assert buf.baseline == pytest.approx(0.95 * 0.5 + 0.05 * 0.9)  # 0.52
    np.testing.assert_allclose(buf.rewards[T : 2 * T, 0], 0.4, rtol=1e-6)  # 0.9 - 0.5 (old baseline)
    add_episode(buf, 0.7)
    assert buf.baseline == pytest.approx(0.95 * 0.52 + 0.05 * 0.7)
    np.testing.assert_allclose(buf.rewards[2 * T : 3 * T, 0], 0.7 - 0.52, rtol=1e-6)
    # dones as given: only each episode's last step is terminal
    np.testing.assert_array_equal(buf.dones[: 3 * T, 0], np.tile([0, 0, 0, 0, 1], 3))

    add_episode(buf, 0.0, steps=3, finish=False)  # an unfinished episode is staged, not sampleable
    assert buf.pos == 3 * T and len(buf.staged) == 3


def test_buffer_state_keeps_staged_episode_and_baseline(tmp_path):
    buf = toy_buffer(baseline_decay=0.9)
    add_episode(buf, 0.6)
    add_episode(buf, 0.0, steps=2, finish=False)
    np.savez(tmp_path / "buffer.npz", **buffer_state(buf))
    clone = toy_buffer(baseline_decay=0.9)
    with np.load(tmp_path / "buffer.npz", allow_pickle=False) as saved:
        load_buffer_state(clone, dict(saved))
    assert clone.baseline == buf.baseline and clone.baseline_decay == 0.9 and len(clone.staged) == 2
    for b in (buf, clone):  # finish the episode in both: identical contents
        for t in range(2, T):
            obs = np.array([[t / T, 0.5]], dtype=np.float32)
            b.add(obs, obs, np.array([[0.0]]), np.array([0.8 if t == T - 1 else 0.0]), np.array([t == T - 1]), [{}])
    np.testing.assert_array_equal(clone.rewards, buf.rewards)
    np.testing.assert_array_equal(clone.observations, buf.observations)
    assert clone.pos == buf.pos == 2 * T and clone.baseline == pytest.approx(0.9 * 0.6 + 0.1 * 0.8)


def test_several_envs_are_rejected():
    env = ToyPruneEnv()
    with pytest.raises(ValueError, match="n_envs"):
        EpisodeRewardReplayBuffer(100, env.observation_space, env.action_space, n_envs=2)
    with pytest.raises(ValueError, match="n_envs"):
        AMCDDPG("MlpPolicy", DummyVecEnv([ToyPruneEnv, ToyPruneEnv]), device="cpu")


def test_every_transition_carries_final_reward_minus_baseline():
    env = ToyPruneEnv()
    model = make(env, warmup_episodes=2)
    model.learn(6 * T)
    buf = model.replay_buffer
    assert buf.pos == 6 * T and not buf.staged and len(env.final_rewards) == 6
    advantages, baseline = expected_advantages(env.final_rewards)
    np.testing.assert_allclose(buf.rewards[: 6 * T, 0], np.repeat(advantages, T), atol=1e-6)
    assert buf.baseline == pytest.approx(baseline)
    # the stored (scaled) actions are the ones the environment received
    np.testing.assert_allclose(model.policy.unscale_action(buf.actions[: 6 * T, 0]).ravel(), env.actions, atol=1e-6)


# --- exploration --------------------------------------------------------------------------------


def test_truncated_noise_stays_in_bounds_and_is_seeded():
    noise = TruncatedNormalNoise(np.array([LOW]), np.array([HIGH]), sigma=0.5, seed=1)
    for mean in (LOW, 0.6, HIGH):
        draws = np.concatenate([noise.sample(np.array([[mean]])).ravel() for _ in range(500)])
        assert draws.min() >= LOW and draws.max() <= HIGH
        assert np.unique(draws).size == draws.size  # a distribution, not a clip onto the bounds
    assert np.mean([noise.sample(np.array([LOW])) for _ in range(500)]) < 0.6  # centred on the mean, truncated

    a, b = TruncatedNormalNoise(LOW, HIGH, seed=3), TruncatedNormalNoise(LOW, HIGH, seed=3)
    np.testing.assert_array_equal(a.sample(np.full(10, 0.5)), b.sample(np.full(10, 0.5)))
    a.decay_sigma()
    clone = pickle.loads(pickle.dumps(a))
    assert clone.sigma == pytest.approx(0.475)
    np.testing.assert_array_equal(clone.sample(np.full(10, 0.5)), a.sample(np.full(10, 0.5)))

    assert TruncatedNormalNoise(LOW, HIGH, sigma=0.0).sample(np.array([0.7])) == pytest.approx(0.7)
    with pytest.raises(RuntimeError, match="sample"):
        a()


def test_sigma_decays_only_after_warmup():
    model = make(warmup_episodes=3)
    assert isinstance(model.action_noise, TruncatedNormalNoise) and model.action_noise.sigma == 0.5
    model.learn(3 * T)
    assert model.action_noise.sigma == 0.5 and model.learning_starts == 3 * T and model.episode_length == T
    model.learn(2 * T, reset_num_timesteps=False)  # another learn() call must not decay by itself
    assert model.action_noise.sigma == pytest.approx(0.5 * 0.95**2)


def test_warmup_actions_are_uniform_in_bounds():
    env = ToyPruneEnv()
    model = make(env, warmup_episodes=40)
    model.learn(40 * T)
    actions = np.array(env.actions)
    assert actions.size == 200 and actions.min() >= LOW and actions.max() <= HIGH
    assert stats.kstest(actions, stats.uniform(loc=LOW, scale=HIGH - LOW).cdf).pvalue > 0.01
    assert model._n_updates == 0  # no learning during warm-up


def test_amc_defaults_and_learning_rates():
    model = make(warmup_episodes=1, episode_length=T)
    assert model.learning_starts == T and model.buffer_size == 100 * T
    assert (model.batch_size, model.tau, model.gamma) == (64, 0.01, 1.0)
    assert model.train_freq == TrainFreq(1, TrainFrequencyUnit.EPISODE)
    assert [m.out_features for m in model.actor.mu if isinstance(m, torch.nn.Linear)] == [300, 300, 1]
    critic_linears = [m for m in model.critic.qf0 if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in critic_linears] == [300, 300, 1]
    model.learn(3 * T)
    assert model._n_updates == 2 * T  # T gradient steps after each post-warm-up episode
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


# --- reproducibility ----------------------------------------------------------------------------


def run(episodes: int, seed: int = 0) -> tuple[list[float], list[torch.Tensor]]:
    env = ToyPruneEnv()
    model = make(env, seed=seed)
    model.learn(episodes * T)
    return env.actions, actor_weights(model)


def test_same_seed_same_actions_and_weights():
    actions_a, weights_a = run(8)
    actions_b, weights_b = run(8)
    assert actions_a == actions_b
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    actions_c, _ = run(8, seed=1)
    assert actions_c != actions_a


def test_save_load_resumes_exactly(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        k, m = 5, 4  # warm-up 3, so the split falls inside the learning phase
        straight_env = ToyPruneEnv()
        straight = make(straight_env)
        straight.learn((k + m) * T)

        first_env = ToyPruneEnv()
        first = make(first_env)
        first.learn(k * T)
        save_agent(first, tmp_path / "agent")
        sigma, baseline = first.action_noise.sigma, first.replay_buffer.baseline
        np.random.rand(7)  # disturb the global generators: load must restore them
        torch.rand(7)
        del first

        second_env = ToyPruneEnv()
        resumed = make(second_env)  # built afresh from the same settings, then given the saved state
        restore_agent(resumed, read_agent(tmp_path / "agent"))
        assert resumed.action_noise.sigma == sigma and resumed.replay_buffer.baseline == baseline
        assert resumed.critic.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
        resumed.learn(m * T, reset_num_timesteps=False)

        assert first_env.actions + second_env.actions == straight_env.actions
        assert all(torch.equal(a, b) for a, b in zip(actor_weights(resumed), actor_weights(straight)))
        assert resumed.action_noise.sigma == straight.action_noise.sigma
        assert resumed.replay_buffer.baseline == straight.replay_buffer.baseline
    finally:
        torch.use_deterministic_algorithms(False)


def test_restored_agent_predicts_as_the_saved_one(tmp_path):
    model = make(warmup_episodes=1)
    model.learn(2 * T)
    save_agent(model, tmp_path / "agent")
    obs = np.array([[0.4, 0.6]], dtype=np.float32)
    loaded = make(warmup_episodes=1)
    restore_agent(loaded, read_agent(tmp_path / "agent"))
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


# --- learning -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_improves_on_warmup_reward():
    env = ToyPruneEnv()
    model = make(env, warmup_episodes=10, seed=0)
    model.learn(60 * T)
    warmup = np.mean(env.final_rewards[:10])
    last = np.mean(env.final_rewards[-10:])
    assert last > warmup + 0.05, (warmup, last)  # ~0.90 -> ~0.99 over seeds 0-5
