"""The engine on the structures of modern CNNs (tests/model_zoo.py): equivalence, exact cost, what is left whole.

For every structure: the physically pruned model equals the masked original in float64, and the cost
model's MACs equal ``FlopCounterMode``'s count on the pruned model exactly (params: the parameter count).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.errors import PolicyError
from autoprune.pruning import CRITERIA, counts_for_target, prune

from model_zoo import EVERY_GROUP, SMALL, STRUCTURES, Structure, registered, structure_model, structure_space

space_of = functools.lru_cache(maxsize=None)(structure_space)


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def random_kept(space, seed):
    rng = np.random.default_rng(seed)
    counts = space.counts(rng.uniform(*space.spec.bounds, size=len(space.searchable)))
    return space.select(counts, space.scores("random", seed=seed))


def max_difference(model, space, kept) -> float:
    """Largest |pruned - masked original| over every output, both in float64."""
    pruned = space.apply(kept).double()
    x = torch.randn(2, *space.info.input_size, dtype=torch.float64)
    space.model = copy.deepcopy(model).double()
    try:
        with torch.no_grad(), space.masked(kept) as masked:
            expected = _outputs(masked(x))
    finally:
        space.model = model
    with torch.no_grad():
        got = _outputs(pruned(x))
    assert [g.shape for g in got] == [e.shape for e in expected]
    return max((g - e).abs().max().item() for g, e in zip(got, expected))


@pytest.mark.parametrize("space_file", [None, EVERY_GROUP], ids=["auto", "every"])
@pytest.mark.parametrize("name", SMALL)
def test_pruned_structure_equals_masked_original(name, space_file):
    model, space = space_of(name, space_file)
    for seed in (1, 2):
        kept = random_kept(space, seed)
        assert max_difference(model, space, kept) < 1e-6
    assert sum(p.numel() for p in space.apply(kept).parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_cost_model_equals_flop_counter(name):
    model, space = space_of(name, EVERY_GROUP)
    for seed in (3, 4):
        kept = random_kept(space, seed)
        pruned = space.apply(kept)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            pruned(torch.randn(1, *space.info.input_size))
        predicted = space.cost([len(kept[n]) for n in space.names])
        assert predicted.macs == counter.get_total_flops() // 2
        assert predicted.params == sum(p.numel() for p in pruned.parameters())


LEFT_WHOLE = {  # structure -> {group: words of the reason}
    "convnext": {"stem.0": "LayerNorm stem.1 normalises", "fc": "classifier"},
    "groupnorm": {"conv1": "GroupNorm gn1 normalises 4", "conv2": "GroupNorm gn2 normalises 8"},
    "split_concat": {"mix.0": "chunks of different sizes"},
    "two_heads": {"box": "an output of the model", "fc": "classifier"},
    "flatten_linear": {"hidden": "fully connected layers after a flatten"},
    "unet": {"head": "classifier"},
}


@pytest.mark.parametrize("name", SMALL)
def test_groups_left_whole_say_why(name):
    _, space = space_of(name, EVERY_GROUP)
    expected = LEFT_WHOLE.get(name, {})
    assert set(space.unprunable) == set(expected) | {STRUCTURES[name].classifier}
    for group, words in expected.items():
        assert words in space.unprunable[group]
    assert not set(space.unprunable) & {g.name for g in space.groups}


def test_grouped_convs_keep_every_conv_group_equally_wide():
    model, space = space_of("resnext", EVERY_GROUP)
    grouped = {g.name: g for g in space.searchable if g.step > 1}
    assert sorted(grouped) == ["blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2"]
    assert all(g.step == 4 and np.bincount(g.blocks).tolist() == [g.channels // 4] * 4 for g in grouped.values())
    j = space.names.index("blocks.1.conv1")
    assert space.steps[j] == 4 and all(c % 4 == 0 for c in space.count_options(j))
    assert all(c % 4 == 0 for c in space.counts(np.full(len(space.names), 0.37))[[space.names.index(n) for n in grouped]])
    kept = random_kept(space, 5)
    conv2 = space.apply(kept).get_submodule("blocks.1.conv2")
    assert conv2.groups == 4 and conv2.in_channels == len(kept["blocks.1.conv1"])
    assert conv2.out_channels == len(kept["blocks.1.conv2"]) and conv2.weight.shape[1] == conv2.in_channels // 4


def test_each_conv_group_keeps_its_own_best_channels():
    _, space = space_of("resnext", EVERY_GROUP)
    group = next(g for g in space.searchable if g.name == "blocks.1.conv1")
    scores = {g.name: np.zeros(g.channels) for g in space.searchable}
    scores[group.name][[0, 9, 18, 27, 1, 10]] = 1.0  # conv-groups of 8: two favourites in groups 0 and 1
    counts = np.array([g.channels for g in space.searchable])
    counts[space.names.index(group.name)] = 4
    assert space.select(counts, scores)[group.name].tolist() == [0, 9, 18, 27]
    with pytest.raises(PolicyError, match="multiple of 4"):
        space.select(np.where(np.arange(len(counts)) == space.names.index(group.name), 6, counts), scores)
    with pytest.raises(PolicyError, match="each of its 4 blocks"):
        space.apply({group.name: [0, 1, 2, 3]})


def test_squeeze_excitation_is_coupled_with_the_channels_it_scales():
    for name, group, se in (("regnet_se", "blocks.0.conv2", "blocks.0.se"), ("mbconv_se", "blocks.0.expand.0",
                                                                                 "blocks.0.se")):
        _, space = space_of(name, EVERY_GROUP)
        members = {(m.module, m.side) for m in next(g for g in space.groups if g.name == group).members}
        assert {(f"{se}.reduce", "in"), (f"{se}.expand", "out")} <= members


def test_layer_scale_parameters_are_pruned_with_their_channels():
    model, space = space_of("layer_scale", EVERY_GROUP)
    group = next(g for g in space.groups if any(m.module == "scale" for m in g.members))
    kept = {group.name: np.arange(0, group.channels, 2)}
    pruned = space.apply(kept)
    assert pruned.scale.shape == (1, group.channels // 2, 1, 1) and isinstance(pruned.scale, nn.Parameter)
    assert torch.equal(pruned.scale.detach().flatten(), model.scale.detach().flatten()[::2])
    assert max_difference(model, space, kept) < 1e-6


def test_convnext_block_applies_and_prunes_its_mlp():
    model, space = space_of("convnext")
    assert space.names == ["blocks.0.pwconv1", "blocks.1.pwconv1"]  # the crash: gamma is a group member
    pruned = space.apply(random_kept(space, 6))
    assert pruned.blocks[0].pwconv1.out_features < 64 and pruned.blocks[0].gamma.shape == (16,)


def test_every_head_keeps_its_width():
    model, space = space_of("two_heads", EVERY_GROUP)
    pruned = space.apply(random_kept(space, 7))
    logits, boxes = pruned(torch.randn(1, 3, 16, 16))
    assert logits.shape == (1, 10) and boxes.shape == (1, 4, 8, 8)


# -- group criteria -----------------------------------------------------------------------------------

class ConvBnConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv, self.bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.out, self.bn_out = nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_out(self.out(torch.relu(self.bn(self.conv(self.stem(x))))))
        return self.fc(y.mean((2, 3)))


def _tiny_space():
    from autoprune.pruning import PrunableSpace

    torch.manual_seed(0)
    model = ConvBnConv().eval()
    with torch.no_grad():
        model.bn.weight.uniform_(-1, 1)
    with registered("tiny", Structure(ConvBnConv, (3, 8, 8), "fc", "stem")) as key:
        return model, PrunableSpace(model, key)


def test_group_criteria_equal_the_hand_computed_sums():
    model, space = _tiny_space()
    assert space.names == ["conv", "out"]
    w, g, c = model.conv.weight.detach().double(), model.bn.weight.detach().double(), model.out.weight.detach().double()
    l1 = w.abs().sum((1, 2, 3)) + g.abs() + c.abs().sum((0, 2, 3))
    l2 = (w.pow(2).sum((1, 2, 3)) + g.pow(2) + c.pow(2).sum((0, 2, 3))).sqrt()
    assert np.allclose(space.scores("group-l1")["conv"], l1.numpy(), rtol=1e-12)
    assert np.allclose(space.scores("group-l2")["conv"], l2.numpy(), rtol=1e-12)
    assert np.allclose(space.scores("group-bn-gamma")["conv"], g.abs().numpy(), rtol=1e-12)
    assert np.allclose(space.scores("l1")["conv"], w.abs().sum((1, 2, 3)).numpy(), rtol=1e-6)  # float32 norms


def test_group_criteria_count_the_consumers():
    model, space = _tiny_space()
    with torch.no_grad():
        saved = model.out.weight.clone(), model.conv.weight.clone()
        model.conv.weight[[1, 4]] *= 0.01  # the weakest filters ...
        model.out.weight[:, [1, 4]] *= 1e4  # ... but the consumer leans on channels 1 and 4
    try:
        producer, group = space.scores("l1")["conv"], space.scores("group-l1")["conv"]
        assert sorted(np.argsort(-group)[:2].tolist()) == [1, 4]
        assert sorted(np.argsort(producer)[:2].tolist()) == [1, 4]
    finally:
        with torch.no_grad():
            model.out.weight.copy_(saved[0])
            model.conv.weight.copy_(saved[1])


@pytest.mark.parametrize("name", SMALL)
def test_group_criteria_score_every_structure(name):
    model, space = space_of(name, EVERY_GROUP)
    for criterion in ("group-l1", "group-l2"):
        scores = space.scores(criterion)
        assert all(s.shape == (g.channels,) and (s > 0).all() for g, s in zip(space.searchable, scores.values()))
        kept = space.select(space.counts(np.full(len(space.names), 0.5)), scores)
        assert max_difference(model, space, kept) < 1e-6


def test_group_bn_gamma_reads_group_norms_and_layer_norms():
    model, space = space_of("groupnorm", EVERY_GROUP)
    assert np.allclose(space.scores("group-bn-gamma")["conv3"], model.gn3.weight.detach().abs().numpy())
    with pytest.raises(Exception, match="use group-l1"):
        space_of("convnext")[1].scores("group-bn-gamma")


def test_group_criteria_are_accepted_wherever_criteria_are():
    assert {"group-l1", "group-l2", "group-bn-gamma"} <= set(CRITERIA)
    model = structure_model("resnext")
    with registered("resnext") as key:
        for method in ("uniform", "global"):
            policy, pruned = prune(model, key, 0.6, method=method, criterion="group-l1")
            assert policy.criterion == "group-l1" and pruned(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    _, space = space_of("resnext")
    counts = counts_for_target(space, 0.6, "global", space.scores("group-l2"))
    assert all(c % s == 0 for c, s in zip(counts, space.steps))


@pytest.mark.slow
def test_resnet50_sized_model_traces_and_prices_exactly():
    model, space = structure_space("resnet50")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert space.base.macs == counter.get_total_flops() // 2
    assert space.base.params == sum(p.numel() for p in model.parameters())
