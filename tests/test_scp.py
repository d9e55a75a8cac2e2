"""SCP (soft channel pruning with differentiable masks): probabilities, sampling, regulariser, removal."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _mask_methods import tiny_context, within_target
from conftest import zoo_space

from autoprune.baselines import _scp
from autoprune.baselines._masks import counts_to_target
from autoprune.errors import AutopruneError


def _gates(space_name: str | None = None, dtype=torch.float32, **kwargs):
    model, space = zoo_space("resnet20", space_name)
    work = copy.deepcopy(model).to(dtype).train()
    return work, space, _scp.Gates(work, space, **kwargs)


def test_keep_probability_is_phi_of_beta_over_gamma_at_init():
    work, space, gates = _gates()
    probs = gates.probabilities()
    for g in space.searchable:
        (bn,) = [work.get_submodule(m.module) for m in g.producers() if isinstance(work.get_submodule(m.module),
                                                                                   torch.nn.BatchNorm2d)]
        z = (bn.bias / bn.weight.abs()).detach().double()
        phi = 0.5 * (1 + torch.erf(z / np.sqrt(2)))
        torch.testing.assert_close(probs[g.name], phi)


def test_a_residual_width_is_alive_if_any_of_its_batchnorms_lets_it_through():
    work, space, gates = _gates("full")
    group = next(g for g in space.searchable if g.kind == "residual")
    bns = [work.get_submodule(m.module) for m in group.producers()
           if isinstance(work.get_submodule(m.module), torch.nn.BatchNorm2d)]
    assert len(bns) > 1
    dead = torch.ones(group.channels, dtype=torch.float64)
    for bn in bns:
        dead = dead * torch.special.ndtr(-(bn.bias / bn.weight.abs()).detach().double())
    torch.testing.assert_close(gates.probabilities()[group.name], 1 - dead)


def test_gumbel_samples_at_low_temperature_are_near_binary_with_the_probability_as_mean():
    _, _space, gates = _gates(temperature=0.02)
    probs = {n: p.detach() for n, p in gates.probabilities().items()}
    draws = {n: [] for n in probs}
    for _ in range(2000):
        for n, m in gates.sample().items():
            draws[n].append(m.detach().double())
    for n, p in probs.items():
        m = torch.stack(draws[n])
        assert ((m > 0.02) & (m < 0.98)).double().mean() < 0.05  # near 0 or 1
        sigma = torch.sqrt(p * (1 - p) / len(m))
        assert ((m.mean(0) - p).abs() <= 4 * sigma + 0.01).all()


def test_masks_carry_the_gradient_into_the_batchnorm_parameters():
    work, _space, gates = _gates()
    work(torch.randn(2, 3, 16, 16)).sum().backward()
    bn = work.get_submodule("layer1.0.bn1")
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0
    gates.remove()


@pytest.mark.parametrize("target,direction", [(0.2, -1), (0.95, 1)])
def test_the_macs_regulariser_moves_the_probabilities_towards_the_target(target, direction):
    work, _space, gates = _gates(dtype=torch.float64)
    penalty = _scp.MacsPenalty(gates, target, strength=1.0)
    expected = float(penalty.expected_fraction().detach())
    assert np.sign(expected - target) == -direction  # over the budget, then under it
    loss = penalty(work)
    loss.backward()
    bn = work.get_submodule("layer2.1.bn1")
    # the FLOPs term decreases along -grad: over budget beta goes down (p down), under budget up
    assert (torch.sign(-bn.bias.grad) == direction).all()
    # d loss / d gamma has the sign of -beta * (E - target): larger |gamma| pulls p towards 1/2
    assert (torch.sign(bn.weight.grad) == torch.sign(-bn.bias.detach() * bn.weight.detach()) * -direction).all()
    # autograd against a central finite difference (in float64), for a few betas and gammas

    def value() -> float:
        return penalty.strength * penalty.channels * abs(float(penalty.expected_fraction()) - target)

    for param in (bn.bias, bn.weight):
        for i in (0, 5, 17):
            with torch.no_grad():
                param[i] += 1e-6
                up = value()
                param[i] -= 2e-6
                down = value()
                param[i] += 1e-6
            assert param.grad[i].item() == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-9)
    # one gradient step lowers (raises) every probability of the group and the expected MACs
    before = {n: p.detach() for n, p in gates.probabilities().items()}
    with torch.no_grad():
        for p in work.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
    after = gates.probabilities()
    assert (torch.sign(after["layer2.1.conv1"] - before["layer2.1.conv1"]) == direction).all()
    assert np.sign(float(penalty.expected_fraction().detach()) - expected) == direction


def _probs(space, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.name: rng.random(g.channels) for g in space.searchable}


def test_removal_drops_exactly_the_channels_below_the_threshold_when_that_meets_the_target():
    _, space = zoo_space("resnet20")
    counts = counts_to_target(space, 0.5, _probs(space), normalise=False)
    chosen = space.select(counts, _probs(space))
    probs = {}
    for g in space.searchable:  # the channels of a set that meets the target are likely, the rest are not
        p = np.full(g.channels, 0.01)
        p[chosen[g.name]] = 0.9
        probs[g.name] = p
    out, kept, info = _scp.removal(space, probs, 0.5, 0.5)
    assert info["adjusted"].startswith("none")
    for g in space.searchable:
        np.testing.assert_array_equal(kept[g.name], np.flatnonzero(probs[g.name] >= 0.5))
    within_target(space, out, 0.5)


@pytest.mark.parametrize("threshold,subset", [(0.1, True), (0.9, False)])
def test_removal_adjusts_to_the_target_by_probability(threshold, subset):
    _, space = zoo_space("resnet20")
    probs = _probs(space, 1)
    counts, kept, info = _scp.removal(space, probs, threshold, 0.5)
    within_target(space, counts, 0.5)
    assert not info["adjusted"].startswith("none")
    for g in space.searchable:
        above = set(np.flatnonzero(probs[g.name] >= threshold))
        # over the target: every channel below the threshold goes, and more; under it: the best come back
        assert set(kept[g.name]) <= above if subset else set(kept[g.name]) >= above
        # within a group, the most probable channels stay
        assert probs[g.name][kept[g.name]].min() >= np.delete(probs[g.name], kept[g.name]).max(initial=0)


def test_a_group_without_batchnorm_is_refused_with_the_reason():
    model, space = zoo_space("resnet20")
    work = copy.deepcopy(model)
    work.layer2[1].bn1 = torch.nn.Identity()
    with pytest.raises(AutopruneError, match=r"group 'layer2.1.conv1' of resnet20: no BatchNorm .* Phi\(beta/\|gamma\|\)"):
        _scp.Gates(work, space)


def test_scp_meets_the_target_and_folds_the_probabilities(tmp_path):
    context = tiny_context(tmp_path, target=0.5)
    outcome = _scp.run(context)
    space = context.space
    within_target(space, outcome.counts, 0.5)
    assert [len(outcome.kept[g.name]) for g in space.searchable] == outcome.counts.tolist()
    assert {k: v.shape for k, v in outcome.weights.items()} == {k: v.shape for k, v in context.model.state_dict().items()}
    assert "adjusted" in outcome.info and 0 < outcome.info["expected_macs"] < 1
    assert (tmp_path / "scp.pt").exists()
