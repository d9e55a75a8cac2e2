"""DCP (dynamic channel propagation) and the channel masks it shares with SCP: tiny models, seconds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _mask_methods import tiny_context, within_target
from conftest import zoo_space

from autoprune.baselines import _dcp
from autoprune.baselines._masks import ExpectedMacs, GroupMasks, counts_to_target


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def _random_kept(space, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.name: np.sort(rng.choice(g.channels, rng.integers(1, g.channels + 1), replace=False))
            for g in space.searchable}


# -- the masks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,space", [("resnet20", "full"), ("mobilenetv2", None)])
def test_zero_one_masks_compute_the_physically_pruned_model(arch, space):
    model, prunable = zoo_space(arch, space)
    kept = _random_kept(prunable)
    work = copy.deepcopy(model).eval()
    masks = GroupMasks(work, prunable.searchable)
    for name, idx in kept.items():
        masks.values[name] = torch.zeros(len(masks.values[name]))
        masks.values[name][idx] = 1.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(work(x), prunable.apply(kept).eval()(x), atol=1e-5, rtol=1e-5)
        masks.remove()
        torch.testing.assert_close(work(x), model(x))


def test_expected_macs_is_the_cost_model_in_torch():
    _, space = zoo_space("resnet20", "full")
    expected = ExpectedMacs(space)
    for kept in (_random_kept(space, s) for s in range(3)):
        counts = np.array([len(kept[g.name]) for g in space.searchable])
        assert float(expected(torch.tensor(counts))) == pytest.approx(space.macs(counts) / space.base.macs, abs=1e-12)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_counts_to_target_ends_within_one_channel_of_the_last_group(target):
    _, space = zoo_space("resnet20", "full")
    rng = np.random.default_rng(1)
    scores = {g.name: rng.random(g.channels) * (j + 1) for j, g in enumerate(space.searchable)}
    for normalise in (True, False):
        within_target(space, counts_to_target(space, target, scores, normalise=normalise), target)


def test_taylor_term_is_the_derivative_of_the_loss_in_the_mask():
    """sum(a * dL/dx) over every consumer is dL/dmask at mask 1: residual widths and the shortcut included."""
    model, space = zoo_space("resnet20", "full")
    work = copy.deepcopy(model).train()
    masks = GroupMasks(work, space.searchable, capture=True)
    for name in masks.values:
        masks.values[name] = torch.ones_like(masks.values[name], requires_grad=True)
    x, y = _batch()
    loss = F.cross_entropy(work(x), y)
    grads = torch.autograd.grad(loss, list(masks.values.values()))  # the hooks record during this pass too
    taylor = masks.take()
    for name, g in zip(masks.values, grads):
        torch.testing.assert_close(taylor[name], g, atol=1e-6, rtol=1e-4)
    assert masks.take() is None  # taken and reset


# -- DCP's utilities and kept set -----------------------------------------------------------------
def _propagation(space_name: str | None = None, **kwargs):
    model, space = zoo_space("resnet20", space_name)
    work = copy.deepcopy(model).train()
    return work, space, _dcp.Propagation(work, space, 0.5, **kwargs)


def test_utility_is_the_moving_average_of_the_taylor_score_by_hand():
    decay = 0.8
    work, space, prop = _propagation(decay=decay, warmup=100)
    hand = copy.deepcopy(work)  # the same weights, no hooks
    prop.remove()
    prop = _dcp.Propagation(work, space, 0.5, decay=decay, warmup=100)
    inputs = {}

    def keep(name):
        def hook(_m, args):
            args[0].retain_grad()
            inputs[name] = args[0]
        return hook

    for g in space.searchable:  # the inner width of a block is read by the block's conv2 only
        (consumer,) = [m.module for m in g.members if m.side == "in"]
        hand.get_submodule(consumer).register_forward_pre_hook(keep(g.name))
    expected = {g.name: torch.zeros(g.channels) for g in space.searchable}
    for step in range(2):
        x, y = _batch(seed=step)
        F.cross_entropy(hand(x), y).backward()
        F.cross_entropy(work(x), y).backward()
        assert prop.update()
        for name, a in inputs.items():
            score = (a * a.grad).sum((0, 2, 3)).abs().detach()
            expected[name] = decay * expected[name] + (1 - decay) * score
            torch.testing.assert_close(prop.utility[name], expected[name], atol=1e-7, rtol=1e-4)
    assert prop.iteration == 2 and not prop.update()  # nothing new to fold


def test_masked_channels_get_no_gradient_and_kept_ones_do():
    work, space, prop = _propagation("full", warmup=1)
    rng = np.random.default_rng(0)
    for u in prop.utility.values():
        u.copy_(torch.as_tensor(rng.random(len(u))))
    prop.select()
    kept = prop.kept()
    assert any(len(k) < g.channels for g, k in zip(space.searchable, kept.values()))
    x, y = _batch()
    work.zero_grad()
    F.cross_entropy(work(x), y).backward()
    for g in space.searchable:
        off = np.setdiff1d(np.arange(g.channels), kept[g.name])
        for m in g.producers():
            module = work.get_submodule(m.module)
            if getattr(module, "weight", None) is None:
                continue  # the option-A shortcut
            rows = torch.as_tensor(m.index[np.isin(m.root, off)])
            assert module.weight.grad[rows].abs().max() == 0, m.module
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.bias.grad[rows].abs().max() == 0, m.module
            on = torch.as_tensor(m.index[np.isin(m.root, kept[g.name])])
            assert module.weight.grad[on].abs().sum() > 0, m.module


def test_kept_set_follows_the_utilities_and_meets_the_target():
    _work, space, prop = _propagation(warmup=1)
    rng = np.random.default_rng(0)
    for u in prop.utility.values():
        u.copy_(torch.as_tensor(rng.random(len(u)) + 0.5))
    prop.select()
    within_target(space, prop.counts, 0.5)
    before = prop.kept()
    name = next(n for n, k in before.items() if len(k) < len(prop.utility[n]))
    out_ch, in_ch = np.setdiff1d(np.arange(len(prop.utility[name])), before[name])[0], before[name][0]
    prop.utility[name][out_ch], prop.utility[name][in_ch] = 10.0, 0.0
    prop.select()
    after = prop.kept()
    assert out_ch in after[name] and in_ch not in after[name]
    assert prop.changes >= 1
    within_target(space, prop.counts, 0.5)


def test_propagation_masks_after_the_warmup_and_refreshes_every_interval():
    work, _space, prop = _propagation(warmup=2, interval=3)
    selected = []
    original = prop.select
    prop.select = lambda: (selected.append(prop.iteration), original())[1]
    for step in range(7):
        x, y = _batch(seed=step)
        F.cross_entropy(work(x), y).backward()
    assert selected == [2, 5]
    work.eval()
    with torch.no_grad():
        work(x)  # evaluation passes neither score nor step
    assert prop.iteration == 6


# -- the method -------------------------------------------------------------------------------------
def test_dcp_meets_the_target_with_trained_weights(tmp_path):
    context = tiny_context(tmp_path, target=0.5, warmup=2, interval=2)
    outcome = _dcp.run(context)
    space = context.space
    within_target(space, outcome.counts, 0.5)
    assert [len(outcome.kept[g.name]) for g in space.searchable] == outcome.counts.tolist()
    reference = context.model.state_dict()
    assert {k: v.shape for k, v in outcome.weights.items()} == {k: v.shape for k, v in reference.items()}
    assert any(not torch.equal(outcome.weights[k], reference[k]) for k in reference)
    assert outcome.info["iterations"] == 6 and 0 < outcome.info["pr"] < 1
    assert (tmp_path / "dcp.pt").exists()
