"""PruningEnv: the Gymnasium contract, AMC's budget, determinism, cached evaluations, rewards."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import autoprune
from autoprune.data import Dataset, make_splits
from autoprune.env import FEATURES, EnvConfig, PruningEnv
from autoprune.errors import BudgetError, UnknownNameError
from autoprune.evaluate import Evaluator
from autoprune.models import list_models
from autoprune.pruning import reachable

from conftest import zoo_space


def synthetic(n_train: int = 60, n_test: int = 10, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(name="synthetic", classes=[str(i) for i in range(10)],
                   train_images=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                   train_labels=torch.randint(0, 10, (n_train,), generator=g),
                   test_images=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                   test_labels=torch.randint(0, 10, (n_test,), generator=g), source="synthetic")


def evaluator(recal: int = 1) -> Evaluator:
    data = synthetic()
    return Evaluator(data, make_splits(60, holdout=20), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=20,
                     recal_batches=recal, recal_batch_size=10, reward_samples=10)


def make_env(arch="resnet20", space=None, **config) -> PruningEnv:
    _, sp = zoo_space(arch, space)
    return PruningEnv(sp, evaluator(), EnvConfig(**config))


def play(env, seed, target=None, actions=None):
    obs, _ = env.reset(seed=seed, options={"target": target} if target else None)
    env.action_space.seed(seed)
    trace, done, t = [obs], False, 0
    while not done:
        action = env.action_space.sample() if actions is None else np.array([actions[t]], dtype=np.float32)
        obs, reward, done, truncated, info = env.step(action)
        trace.append(obs)
        t += 1
        assert not truncated
    return np.array(trace), reward, info


def test_passes_gymnasiums_checker_and_is_registered():
    env = make_env(targets=(0.3, 0.5, 0.7))
    check_env(env, skip_render_check=True)
    made = gym.make(autoprune.ENV_ID, space=env.space, evaluator=env.evaluator, config=env.config)
    assert made.unwrapped.observation_space.shape == (len(FEATURES),)


def last_step_is_tight(env, info) -> bool:
    """No larger count of the last group fits the budget: within one channel of it, from below."""
    counts = info["counts"].copy()
    options = env.space.count_options(env.n - 1)
    bigger = options[options > counts[-1]]
    if bigger.size == 0:
        return True
    counts[-1] = bigger[0]
    return env.space.macs(counts) > info["target"] * env.space.base.macs


@pytest.mark.parametrize("arch,space", [(a, None) for a in list_models() if not a.startswith("imagenet_")]
                         + [("resnet56", "full")])
def test_random_actions_always_meet_the_budget(arch, space):
    env = make_env(arch, space)
    low, _ = reachable(env.space)
    for target in sorted({max(0.3, low + 0.02), 0.5, 0.7}):
        _, _, info = play(env, seed=int(target * 10), target=target)
        assert info["macs"] <= target * env.space.base.macs
        assert last_step_is_tight(env, info)
        assert info["policy"].macs == info["macs"]


def test_extreme_actions_are_clipped_into_the_budget():
    env = make_env(targets=(0.5,))
    for value in (0.2, 1.0):
        _, _, info = play(env, seed=0, actions=[value] * env.n)
        assert 0.49 * env.space.base.macs <= info["macs"] <= 0.5 * env.space.base.macs


def test_observations_are_in_range_and_deterministic_under_a_seed():
    env = make_env(targets=(0.3, 0.5, 0.7))
    a, ra, ia = play(env, seed=7)
    b, rb, ib = play(env, seed=7)
    assert np.array_equal(a, b) and ra == rb and ia["target"] == ib["target"]
    assert a.shape == (env.n + 1, len(FEATURES)) and (a >= 0).all() and (a <= 1).all()
    assert np.allclose(a[:-1, 1], np.arange(env.n) / env.n)


def test_a_policy_judged_with_batches_side_by_side_predicts_as_judged_serially():
    """Batches recalibrated side by side on CPU threads (the default where torch has several threads) give the
    serial BN statistics. Forced here: under README's ``-n auto`` each test process has one thread per core it
    shares, so on a small machine the default is serial."""
    _, space = zoo_space("resnet20")
    outputs = []
    for workers in (1, 2):
        ev = Evaluator(synthetic(), make_splits(60, holdout=20), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=5,
                       recal_batches=3, recal_batch_size=10, reward_samples=10, batch_workers=workers)
        env = PruningEnv(space, ev, EnvConfig())
        model = env.judged(space.counts(np.full(env.n, 0.5)))
        with torch.no_grad():
            outputs.append(model(next(iter(ev.holdout_loader))[0]))
    assert torch.allclose(*outputs, atol=1e-5)


def test_a_repeated_policy_is_not_evaluated_again():
    env = make_env()
    _, r1, i1 = play(env, seed=0, actions=[0.5] * env.n)
    count = env.evaluations
    _, r2, i2 = play(env, seed=1, actions=[0.5] * env.n)
    assert i2["cached"] and not i1["cached"] and env.evaluations == count and r1 == r2


def test_judged_is_the_evaluators_judge_and_splits_its_time():
    env = make_env()
    counts = env.space.counts(np.full(env.n, 0.5))
    model = env.judged(counts)
    assert env.timings["apply"] > 0 and env.timings["recalibrate"] > 0
    ev = env.evaluator
    by_hand = ev.ready(ev.prepare(env.space.apply(env.policy(counts, 0.5).channels)))
    x = next(iter(ev.holdout_loader))[0]
    with torch.no_grad():
        assert torch.allclose(model(x), by_hand(x))


def test_judging_a_policy_again_reuses_its_recalibration_within_a_memory_bound(monkeypatch):
    """The second judgement of a policy loads the kept BN statistics (recalibrating nothing) and predicts as the
    first; the oldest are dropped past the bound; a proxy that changes weights keeps none."""
    from autoprune import env as env_module
    from autoprune.proxies import get_proxy

    env = make_env()
    a, b = (env.space.counts(np.full(env.n, r)) for r in (0.5, 0.7))
    first = env.judged(a)
    recalibrating = env.timings["recalibrate"]
    again = env.judged(a)
    assert env.timings["recalibrate"] == recalibrating  # nothing recalibrated
    x = next(iter(env.evaluator.holdout_loader))[0]
    with torch.no_grad():
        assert torch.equal(first(x), again(x))
    monkeypatch.setattr(env_module, "_BN_KEPT_BYTES", 1)  # room for one
    env.judged(b)
    assert list(env._bn_states) == [tuple(int(c) for c in b)]
    env.judged(a)
    assert env.timings["recalibrate"] > recalibrating  # dropped, so recalibrated again
    env.evaluator.proxy = get_proxy("finetune-1")
    env._bn_states.clear()
    env.judged(a)
    assert not env._bn_states


def test_reward_forms():
    env = make_env(reward="err-log-flops")
    _, reward, info = play(env, seed=0)
    assert reward == pytest.approx(-(1 - info["accuracy"]) * np.log(info["macs"]))
    env = make_env(reward="normalized", targets=(0.5,))
    _, reward, info = play(env, seed=0)
    assert reward == pytest.approx(info["accuracy"] - env.reference(0.5))


def test_bad_configuration_fails_when_built():
    with pytest.raises(BudgetError, match=r"in \(0, 1\)"):
        EnvConfig(targets=(1.2,))
    with pytest.raises(UnknownNameError, match="Did you mean 'acc'"):
        EnvConfig(reward="ac")
    with pytest.raises(BudgetError, match="reachable range"):
        make_env(targets=(0.05,))
