"""The pruning engine: physical pruning equals masking, the cost model equals a traced count."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from autoprune.errors import AutopruneError, BudgetError, PolicyError, UnknownNameError
from autoprune.models import list_models
from autoprune.pruning import CRITERIA, counts_for_target, parse_target, reachable, top_k

from conftest import zoo_space

CIFAR = [m for m in list_models() if not m.startswith("imagenet_")]
CASES = [(a, None) for a in CIFAR] + [("resnet20", "full"), ("resnet20_b", "full")]
IMAGENET = [pytest.param(a, None, marks=pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="ImageNet models come from torchvision, which is not installed (the `vision` extra)"))
    for a in list_models("imagenet_*")]


def random_kept(space, seed):
    rng = np.random.default_rng(seed)
    counts = space.counts(rng.uniform(*space.spec.bounds, size=len(space.searchable)))
    return space.select(counts, space.scores("random", seed=seed))


@pytest.mark.parametrize("arch,space_name", CASES + IMAGENET)
def test_pruned_model_equals_masked_original(arch, space_name):
    model, space = zoo_space(arch, space_name)
    kept = random_kept(space, seed=1)
    pruned = space.apply(kept).double()
    x = torch.randn(2, *space.info.input_size, dtype=torch.float64)
    reference = copy.deepcopy(model).double()
    space.model = reference  # mask the float64 copy with the same hooks
    try:
        with torch.no_grad(), space.masked(kept) as masked:
            expected = masked(x)
    finally:
        space.model = model
    with torch.no_grad():
        got = pruned(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-6
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,space_name", CASES + IMAGENET)
def test_cost_model_matches_traced_count(arch, space_name):
    model, space = zoo_space(arch, space_name)
    for seed in (2, 3):
        kept = random_kept(space, seed)
        pruned = space.apply(kept)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            pruned(torch.randn(1, *space.info.input_size))
        predicted = space.cost([len(kept[n]) for n in space.names])
        traced_macs = counter.get_total_flops() / 2
        assert abs(predicted.macs - traced_macs) <= 0.005 * traced_macs
        assert predicted.params == sum(p.numel() for p in pruned.parameters())


def test_original_model_untouched_by_apply():
    model, space = zoo_space("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space.apply(random_kept(space, 4))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_resnet56_base_figures_and_spaces():
    _, inner = zoo_space("resnet56")
    assert inner.base.macs == 125_485_696 and inner.base.params == 853_018
    assert len(inner.searchable) == 27 and all(n.endswith("conv1") for n in inner.names)
    _, full = zoo_space("resnet56", "full")
    assert len(full.searchable) == 30
    residual = [g for g in full.searchable if g.kind == "residual"]
    assert [g.name for g in residual] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert [g.channels for g in residual] == [16, 32, 64]


def test_channels_of_the_searchable_groups_are_cached_and_read_only():
    _, space = zoo_space("resnet20")
    assert space.channels.tolist() == [g.channels for g in space.searchable]
    assert space.channels.dtype == np.int64 and space.channels is space.channels
    with pytest.raises(ValueError, match="read-only"):
        space.channels[0] = 1


@pytest.mark.parametrize("method", ["uniform", "global"])
def test_target_is_met_from_below(method):
    _, space = zoo_space("resnet56")
    counts = counts_for_target(space, 0.5, method, space.scores("l1"))
    fraction = space.macs(counts) / space.base.macs
    assert 0.49 <= fraction <= 0.5


def test_absolute_and_bad_targets():
    assert parse_target("60M", 120_000_000) == pytest.approx(0.5)
    assert parse_target(0.3, 1) == 0.3
    for bad in ("1.5", "0", "-0.2", "200M", "lots"):
        with pytest.raises(BudgetError):
            parse_target(bad, 120_000_000)
    _, space = zoo_space("resnet56")
    low, high = reachable(space)
    with pytest.raises(BudgetError, match=rf"reachable range is \[{low:.3f}, 1.0\)"):
        counts_for_target(space, low / 2, "uniform", {})


def test_criteria_pick_the_strongest_filters():
    model, space = zoo_space("resnet20")
    group = space.searchable[0]
    conv = model.get_submodule(group.name)
    with torch.no_grad():
        saved = conv.weight.clone()
        conv.weight.mul_(0.01)
        conv.weight[[3, 7]] *= 1000.0
    try:
        for criterion in ("l1", "l2"):
            scores = space.scores(criterion)
            assert list(top_k(scores[group.name], 2)) == [3, 7]
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved)
    bn = model.get_submodule(group.name.replace("conv", "bn"))
    assert np.allclose(space.scores("bn-gamma")[group.name], bn.weight.detach().abs().numpy())
    a, b = space.scores("random", seed=1), space.scores("random", seed=1)
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_taylor_scores_need_and_use_gradients():
    model, space = zoo_space("resnet20")
    with pytest.raises(AutopruneError, match="needs gradients"):
        space.scores("taylor")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    scores = space.scores("taylor", batches=batches)
    assert all(s.shape == (g.channels,) and (s >= 0).all() for g, s in zip(space.searchable, scores.values()))
    assert all(p.grad is None for p in model.parameters())


def test_unknown_names_suggest_fixes():
    _, space = zoo_space("resnet20")
    with pytest.raises(UnknownNameError, match="Did you mean 'l1'"):
        space.scores("l11")
    with pytest.raises(UnknownNameError, match="Did you mean 'full'"):
        from autoprune.pruning import PrunableSpace
        PrunableSpace(space.model, "resnet20", "ful")
    assert set(CRITERIA) == {"l1", "l2", "bn-gamma", "group-l1", "group-l2", "group-bn-gamma", "random", "taylor",
                             "reconstruction"}


def test_bad_kept_indices_are_refused():
    _, space = zoo_space("resnet20")
    name = space.names[0]
    for bad in ({name: []}, {name: [0, 0]}, {name: [99]}, {"nope": [0]}):
        with pytest.raises(PolicyError):
            space.apply(bad)
