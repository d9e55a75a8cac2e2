"""Budgets of any metric (issue 15): MACs, params and a latency-like metric, clipped, met and recorded alike."""

from __future__ import annotations

import numpy as np
import pytest

from autoprune.env import EnvConfig, PruningEnv
from autoprune.errors import BudgetError, PolicyError
from autoprune.policy import Policy
from autoprune.pruning import (Metric, check_target, flops_metric, global_counts, make_metric, params_metric,
                               parse_target, prune, reachable, uniform_counts)

from conftest import zoo_space
from test_env import evaluator, play


class FakeLatency:
    """A deterministic latency-like metric: per group a step in the channels (a kernel's tile of 16 channels)
    times its share of the MACs, plus a fixed overhead; never falls when a count grows, as a latency table's
    sum. ``calls`` counts the queries (the clipping must not time anything)."""

    name, unit = "latency", "s"

    def __init__(self, space) -> None:
        self.space, self.calls = space, 0
        self.weight = np.array([self._share(j) for j in range(len(space.searchable))]) * 1e-3
        self.overhead = 2e-4
        self.base = self(space.channels)
        self.calls = 0

    def _share(self, j: int) -> float:
        k = self.space.channels.copy()
        k[j] = 0
        return (self.space.base.macs - self.space.macs(k)) / self.space.base.macs

    def __call__(self, counts) -> float:
        self.calls += 1
        tiles = np.ceil(np.asarray(counts) / 16) / np.ceil(self.space.channels / 16)
        return float(self.overhead + self.weight @ tiles)


def _env(metric_for, targets=(0.5,)):
    _, space = zoo_space("resnet20")
    metric = metric_for(space)
    return PruningEnv(space, evaluator(), EnvConfig(targets=targets), metric=metric), metric


def _tight(env, metric, counts, target) -> bool:
    """No larger count of the last group fits: the episode ends within one step of the budget, from below."""
    options = env.space.count_options(env.n - 1)
    bigger = options[options > counts[-1]]
    if bigger.size == 0:
        return True
    trial = counts.copy()
    trial[-1] = bigger[0]
    return metric(trial) > target * metric.base


def test_the_metrics_follow_the_protocol_and_the_cost_model():
    _, space = zoo_space("resnet20")
    counts = space.counts(np.full(len(space.searchable), 0.5))
    flops, params = flops_metric(space), params_metric(space)
    assert isinstance(flops, Metric) and isinstance(FakeLatency(space), Metric)
    assert (flops.name, flops.unit, flops.base) == ("flops", "MACs", space.base.macs)
    assert flops(counts) == space.macs(counts) and params(counts) == space.cost(counts).params
    assert make_metric(space, "params").base == space.base.params
    with pytest.raises(BudgetError, match="Did you mean 'params'"):
        make_metric(space, "parms")


@pytest.mark.parametrize("maker", [params_metric, FakeLatency], ids=["params", "latency-like"])
@pytest.mark.parametrize("target", [0.35, 0.5, 0.7])
def test_clipping_never_goes_over_and_ends_within_one_step(maker, target):
    env, metric = _env(maker, targets=(target,))
    for seed in range(3):
        _, _, info = play(env, seed=seed, target=target)
        counts = info["counts"]
        assert metric(counts) <= target * metric.base
        assert _tight(env, metric, counts, target)
        assert info["fraction"] == pytest.approx(metric(counts) / metric.base)
        assert info["policy"].budget_fraction == pytest.approx(info["fraction"])
    for value in (0.2, 1.0):  # the agent asks for too little, then too much: clipped into the budget
        _, _, info = play(env, seed=0, target=target, actions=[value] * env.n)
        assert metric(info["counts"]) <= target * metric.base and _tight(env, metric, info["counts"], target)


def test_a_params_budget_is_not_a_macs_budget():
    """The same target clipped under params and under MACs lands on different policies, each within its own."""
    params_env, params = _env(params_metric)
    flops_env, _ = _env(flops_metric)
    _, _, by_params = play(params_env, seed=0, target=0.5, actions=[1.0] * params_env.n)
    _, _, by_macs = play(flops_env, seed=0, target=0.5, actions=[1.0] * flops_env.n)
    assert not np.array_equal(by_params["counts"], by_macs["counts"])
    assert params(by_params["counts"]) <= 0.5 * params.base
    assert by_params["policy"].target["metric"] == "params" and by_macs["policy"].target == {"metric": "macs",
                                                                                          "fraction": 0.5}


@pytest.mark.parametrize("maker", [params_metric, FakeLatency], ids=["params", "latency-like"])
def test_uniform_and_global_counts_meet_any_metric(maker):
    _, space = zoo_space("resnet20")
    metric = maker(space)
    scores = space.scores("l1")
    for counts in (uniform_counts(space, 0.5, metric), global_counts(space, 0.5, scores, metric=metric)):
        assert metric(counts) <= 0.5 * metric.base
    low, high = reachable(space, metric)
    assert 0 < low < 0.5 < high <= 1.0
    with pytest.raises(BudgetError, match=r"reachable range is \[.*In (s|params): "):
        check_target(space, low / 2, metric)


def test_targets_parse_in_each_metrics_unit():
    assert parse_target("4.5ms", 9e-3, "latency") == pytest.approx(0.5)
    assert parse_target("450us", 9e-3, "latency") == pytest.approx(0.05)
    assert parse_target("0.0045 s", 9e-3, "latency") == pytest.approx(0.5)
    assert parse_target("1.2M", 2.4e6, "params") == pytest.approx(0.5)
    assert parse_target("0.3", lambda: pytest.fail("a fraction needs no base"), "latency") == 0.3
    with pytest.raises(BudgetError, match="a latency like 4.5ms"):
        parse_target("4.5M", 9e-3, "latency")
    with pytest.raises(BudgetError, match=r"9.000 ms base latency, but got 12ms"):
        parse_target("12ms", 9e-3, "latency")
    with pytest.raises(BudgetError, match="a parameter count like 1.2M"):
        parse_target("3ms", 2e6, "params")


def test_prune_to_a_params_budget_records_it_and_policies_of_either_kind_load(tmp_path):
    model, space = zoo_space("resnet20")
    policy, _ = prune(model, "resnet20", "0.13M", metric="params")
    assert policy.target["metric"] == "params" and policy.budget_metric == "params"
    assert policy.params <= 130_000 and policy.target["value"] == policy.params
    assert policy.budget_fraction == policy.params_fraction
    path = tmp_path / "p.json"
    policy.save(path)
    assert Policy.load(path).target == policy.target
    macs, _ = prune(model, "resnet20", 0.5)  # the default: recorded as every earlier policy was
    assert macs.target == {"metric": "macs", "fraction": 0.5} and macs.budget_fraction == macs.macs_fraction
    older = macs.to_dict()
    del older["target"]  # a file without a target is a MACs budget
    assert Policy.from_dict(older).budget_metric == "flops"
    broken = {**policy.to_dict(), "target": {"metric": "latency", "fraction": 0.5}}
    with pytest.raises(PolicyError, match="needs positive numbers 'value' and 'base'"):
        Policy.from_dict(broken)
