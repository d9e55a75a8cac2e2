"""DExp (seed 003): bucket ordering, mask counts, way A's filter order, the compress-rate parser, mask files,
the fine-tune holding the masks (and resuming), and the honest MAC count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _mask_methods import interrupt_in_second_epoch
from conftest import zoo_space
from PIL import Image
from torch import nn

from autoprune.baselines import Context
from autoprune.baselines._compress_rate import (
    conv_rates,
    mask_count,
    parse_compress_rate,
    uniform_rate,
)
from autoprune.baselines._dexp import (
    CHECKPOINT_FILE,
    MASKS_FILE,
    DExpSettings,
    load_masks,
    run,
    save_masks,
)
from autoprune.baselines._kernel_macs import (
    alive_channels,
    find_layers,
    honest_macs,
    without_dead_producers,
)
from autoprune.baselines._kernels import compute_masks, kernel_mask, kernel_sums
from autoprune.baselines._settings import settings_from
from autoprune.errors import (
    AutopruneError,
    BudgetError,
    CheckpointError,
    UnknownNameError,
)
from autoprune.evaluate import Evaluator


def tiny_net(bn: bool = True) -> nn.Module:
    """conv 3->4 (3x3, 8x8 out), conv 4->6 (3x3, stride 2: 4x4 out), linear 6->5; input 3x8x8."""
    torch.manual_seed(0)
    norm = (lambda n: nn.BatchNorm2d(n)) if bn else (lambda n: nn.Identity())
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), norm(4), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), norm(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    if bn:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return net.eval()


def tiny_layers(bn: bool = True):
    net = tiny_net(bn)
    return net, find_layers(net, torch.zeros(1, 3, 8, 8))


# -- the compress-rate list ------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ("[0.0]+[0.4]*3+[0.5]", [0.0, 0.4, 0.4, 0.4, 0.5]),
    (" [ .5 ] * 2 + [0.] ", [0.5, 0.5, 0.0]),
    ("[0.25]", [0.25]),
    ([0, 0.3, 0.3], [0.0, 0.3, 0.3]),
])
def test_parse_compress_rate(spec, expected):
    assert parse_compress_rate(spec) == expected


@pytest.mark.parametrize("spec", [
    "__import__('os').system('true')", "[0.4]*2-1", "[0.4,0.5]", "[-0.1]", "[1e-1]", "[0.4]*0", "[1.0]", "[0.4]**2",
    "[0.4]+", "(0.4)*2", "0.4", "", "[0.4]*99999999", [0.1, "0.2"], [True], 0.4,
])
def test_parse_compress_rate_refuses_anything_else(spec):
    with pytest.raises(AutopruneError, match="compress_rate|compress rate"):
        parse_compress_rate(spec)


def test_rate_list_of_the_wrong_length_names_both_counts_and_the_convs():
    _, layers = tiny_layers()
    with pytest.raises(AutopruneError) as e:
        conv_rates(parse_compress_rate("[0.0]+[0.4]*2"), layers, "tiny")
    assert "3 rates" in str(e.value) and "2 convolutions" in str(e.value) and "0, 3" in str(e.value)


# -- which kernels ---------------------------------------------------------------------------

def one_filter(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(1, len(values), 1, 1)


# kernel sums: six at 0 (the most populated bin), three at 1.0 (next), two at -1.2, one outlier at 3.0
SUMS = [0.0, 0.0, -1.2, 0.0, 3.0, 1.0, 0.0, 0.0, 1.0, -1.2, 0.0, 1.0]
ZEROS, ONES, NEGATIVES = [0, 1, 3, 6, 7, 10], [5, 8, 11], [2, 9]


@pytest.mark.parametrize("n,masked", [
    (4, ZEROS[:4]),  # within the most populated bin
    (6, ZEROS),
    (7, ZEROS + ONES[:1]),  # then the second most populated bin
    (9, ZEROS + ONES),
    (11, ZEROS + ONES + NEGATIVES),  # the outlier last
])
def test_kernels_of_the_most_populated_bins_are_masked_first(n, masked):
    for way in ("full-layer", "bn-priority"):
        keep = kernel_mask(one_filter(SUMS), n, way=way, gamma=torch.ones(1))
        assert sorted(np.flatnonzero(~keep.numpy().ravel())) == sorted(masked), way


def test_the_score_is_the_kernel_sum_plus_the_bn_shift():
    w = torch.arange(24.0).view(2, 3, 2, 2)
    assert torch.equal(kernel_sums(w, torch.tensor([0.5, -1.0])),
                       w.sum((2, 3)).double() + torch.tensor([[0.5], [-1.0]], dtype=torch.float64))


def test_way_a_visits_filters_by_ascending_abs_gamma():
    w = torch.zeros(4, 3, 3, 3)  # every kernel sum equal: one bin, only the filter order decides
    gamma = torch.tensor([0.5, -0.1, 2.0, 0.3])
    keep = kernel_mask(w, 7, way="bn-priority", gamma=gamma)
    assert (~keep).sum(1).tolist() == [1, 3, 0, 3]  # filters 1 (|0.1|), 3 (0.3), then filter 0 starts
    keep = kernel_mask(w, 7, way="full-layer")
    assert (~keep).sum(1).tolist() == [3, 3, 1, 0]  # way B: the layer in flat order


def test_way_a_masks_only_inside_the_most_populated_bins():
    w = torch.cat([one_filter(SUMS), one_filter(SUMS)])
    keep = kernel_mask(w, 6, way="bn-priority", gamma=torch.tensor([2.0, 0.1]))
    assert keep[0].all() and sorted(np.flatnonzero(~keep[1].numpy())) == ZEROS


@pytest.mark.parametrize("way", ["bn-priority", "full-layer"])
@pytest.mark.parametrize("rates", [[0.3, 0.3], [0.1, 0.55], [0.0, 0.9]])
def test_mask_counts_are_rate_times_kernels_per_conv(way, rates):
    net, layers = tiny_layers()
    counts = [mask_count(r, c) for r, c in zip(rates, layers.convs)]
    assert counts == [round(r * c.kernels) for r, c in zip(rates, layers.convs)]
    masks = compute_masks(net, layers, counts, way=way)
    for conv, n in zip(layers.convs, counts):
        assert int((~masks[conv.name]).sum()) == n if n else conv.name not in masks


def test_a_rate_that_masks_a_whole_conv_is_refused():
    _, layers = tiny_layers()
    with pytest.raises(AutopruneError, match=r"all 12 kernels of conv 0.*below 0\.9583"):
        mask_count(0.99, layers.convs[0])


def test_bn_priority_needs_a_batchnorm_after_each_pruned_conv():
    net, layers = tiny_layers(bn=False)
    with pytest.raises(AutopruneError, match=r"\['0', '3'\] are not followed by one; use way 'full-layer'"):
        compute_masks(net, layers, [2, 5], way="bn-priority")
    masks = compute_masks(net, layers, [2, 5], way="full-layer")
    assert [int((~m).sum()) for m in masks.values()] == [2, 5]


def test_settings_refuse_unknown_and_bad_values():
    with pytest.raises(UnknownNameError, match="Unknown dexp hyperparameter 'wya'. Did you mean 'way'"):
        settings_from(DExpSettings, {"wya": "full-layer"}, "dexp")
    with pytest.raises(UnknownNameError, match="^dexp: Unknown DExp way 'full_layer'. Did you mean 'full-layer'"):
        settings_from(DExpSettings, {"way": "full_layer"}, "dexp")
    with pytest.raises(AutopruneError, match="buckets must be an integer of at least 2"):
        DExpSettings(buckets=1)
    with pytest.raises(AutopruneError, match="temperature must be a number, but got temperature='1'"):
        DExpSettings(temperature="1")
    with pytest.raises(AutopruneError, match="lr must be a number, but got lr='0.1'"):
        DExpSettings(lr="0.1")
    assert DExpSettings(epochs=0).epochs == 0  # no fine-tune


# -- honest MACs -------------------------------------------------------------------------------

def test_honest_macs_by_hand_on_a_tiny_conv_net():
    _, layers = tiny_layers()
    # conv1: 4x3 kernels x 9 x (8x8); conv2: 6x4 kernels x 9 x (4x4); linear 6x5
    assert honest_macs(layers, {}) == 4 * 3 * 9 * 64 + 6 * 4 * 9 * 16 + 30 == 10398
    masks = {"0": torch.ones(4, 3, dtype=torch.bool), "3": torch.ones(6, 4, dtype=torch.bool)}
    masks["0"].view(-1)[:5] = False
    masks["3"].view(-1)[3:13] = False
    assert honest_macs(layers, masks) == 10398 - 5 * 9 * 64 - 10 * 9 * 16


def test_honest_macs_match_the_cost_model_unmasked_and_the_uniform_rate_meets_the_target():
    model, space = zoo_space("resnet20")
    layers = find_layers(model, torch.zeros(1, 3, 32, 32))
    base = honest_macs(layers, {})
    assert base == space.base.macs
    rate = uniform_rate(layers, 1, 0.6, base)

    def macs(r):  # the first round(r x f x c) kernels of every conv but the stem masked
        return honest_macs(layers, {c.name: torch.arange(c.kernels).view(c.filters, c.channels) >= mask_count(r, c)
                                    for c in layers.convs[1:]})

    assert macs(rate) <= 0.6 * base < macs(rate - 1e-3)
    with pytest.raises(BudgetError, match="cannot reach target=0.01"):
        uniform_rate(layers, 1, 0.01, base)


def test_a_channel_no_consumer_reads_is_removed_and_leaves_the_mac_count():
    model, space = zoo_space("resnet20")
    layers = find_layers(model, torch.zeros(1, 3, 32, 32))
    masks = {"layer1.0.conv2": torch.ones(16, 16, dtype=torch.bool), "layer1.0.conv1": torch.ones(16, 16, dtype=torch.bool)}
    masks["layer1.0.conv2"][:, 3] = False  # nothing reads channel 3 of layer1.0.conv1's group
    masks["layer1.0.conv1"][5] = False  # a filter whose kernels are all masked still emits its BN shift: kept
    kept = alive_channels(space, masks)
    assert sorted(set(range(16)) - set(kept["layer1.0.conv1"].tolist())) == [3]
    assert all(len(k) == g.channels for g, k in zip(space.searchable, kept.values()) if g.name != "layer1.0.conv1")
    macs = honest_macs(layers, without_dead_producers(space, masks, kept))
    assert macs == space.base.macs - (16 + 16 + 16) * 9 * 32 * 32  # the column, filter 5, and filter 3


# -- mask files ------------------------------------------------------------------------------------

def test_masks_survive_save_and_load_and_bad_files_are_refused(tmp_path):
    net, layers = tiny_layers()
    masks = compute_masks(net, layers, [3, 7])
    save_masks(tmp_path / "m.pt", masks)
    loaded = load_masks(tmp_path / "m.pt", layers)
    assert loaded.keys() == masks.keys() and all(torch.equal(loaded[k], masks[k]) for k in masks)
    save_masks(tmp_path / "bad.pt", {"3": torch.ones(4, 6, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match="shape \\(4, 6\\), but the conv has 6 filters x 4 input channels"):
        load_masks(tmp_path / "bad.pt", layers)
    save_masks(tmp_path / "other.pt", {"conv9": torch.ones(4, 6, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match="'conv9', which is not a conv of this model"):
        load_masks(tmp_path / "other.pt", layers)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_masks(tmp_path / "none.pt", layers)


# -- the whole method: fine-tune with the masks held, resume ----------------------------------------

@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    root = tmp_path_factory.mktemp("dexp")
    rng = np.random.default_rng(0)
    for c in range(4):
        for split, n in (("train", 10), ("test", 2)):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOPRUNE_CACHE", str(root / "cache"))
    try:
        yield Evaluator.from_data_dir(root / "data", "resnet20", holdout=8, device="cpu")
    finally:
        mp.undo()


def context(evaluator, work_dir, **hyperparameters):
    model, space = zoo_space("resnet20")
    hp = {"epochs": 1, "batch_size": 16, "lr": 0.05, **hyperparameters}
    return Context(model=model, space=space, evaluator=evaluator, target=0.6, hyperparameters=hp,
                   work_dir=work_dir, progress=False)


def test_run_holds_the_masks_through_the_finetune_and_counts_macs_honestly(evaluator, tmp_path):
    ctx = context(evaluator, tmp_path)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())  # the context's model untouched
    masks = load_masks(tmp_path / MASKS_FILE, find_layers(ctx.model, torch.zeros(1, 3, 32, 32)))
    for name, mask in masks.items():
        w = out.weights[f"{name}.weight"]
        assert (w[~mask] == 0).all() and (w[mask] != 0).all()  # masked exactly zero, the rest trained
        assert not torch.equal(w[mask], before[f"{name}.weight"][mask])
    layers = find_layers(ctx.model, torch.zeros(1, 3, 32, 32))
    assert out.macs == honest_macs(layers, masks) <= 0.6 * ctx.space.base.macs
    assert out.counts.tolist() == [g.channels for g in ctx.space.searchable]  # nothing unread: no channel removed
    assert out.info["meets_target"] and "kernel sparsity, not channel removal" in out.info["macs_note"]
    json.dumps(out.info)  # recordable in the policy's provenance
    assert out.weights.keys() == ctx.model.state_dict().keys()


def test_an_interrupted_finetune_resumes_exactly_and_masks_resume_identical(evaluator, tmp_path):
    full = run(context(evaluator, tmp_path / "full", epochs=2))
    interrupt_in_second_epoch(run, context(evaluator, tmp_path / "cut", epochs=2))
    assert (tmp_path / "cut" / CHECKPOINT_FILE).is_file()
    resumed = run(context(evaluator, tmp_path / "cut", epochs=2, resume_mask=str(tmp_path / "full" / MASKS_FILE)))
    assert resumed.info["finetune"]["resumed_after_epoch"] == 1
    assert all(torch.equal(full.weights[k], resumed.weights[k]) for k in full.weights)
    a, b = (torch.load(p / MASKS_FILE, weights_only=True) for p in (tmp_path / "full", tmp_path / "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(AutopruneError, match="dexp_finetune.pt was written with other settings"):
        run(context(evaluator, tmp_path / "cut", epochs=2, lr=0.01))  # never mixed into another run


def test_given_rates_of_the_wrong_length_fail_before_any_work(evaluator, tmp_path):
    with pytest.raises(AutopruneError, match="compress_rate has 3 rates but resnet20 has 19 convolutions"):
        run(context(evaluator, tmp_path, compress_rate="[0.0]+[0.4]*2"))
    assert not (tmp_path / MASKS_FILE).exists()
