"""Channel Pruning (He et al. 2017): LASSO selection, least-squares refit, the method and the criterion."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import zoo_space
from torch import nn

from autoprune.baselines._lasso import LassoSettings, _batches, run
from autoprune.baselines._method import Context
from autoprune.cli import main
from autoprune.data import Dataset, make_splits
from autoprune.errors import AutopruneError
from autoprune.evaluate import Evaluator
from autoprune.pruning import (
    CRITERIA,
    Group,
    Member,
    PrunableSpace,
    Reconstruction,
    consumers,
    lasso_path,
    prune,
    sample_features,
)

SMALL = {"images": 40, "points": 10, "batch_size": 20}


def group_of(channels: int, consumer: str, index: np.ndarray | None = None, root: np.ndarray | None = None) -> Group:
    """A hand-made group: ``channels`` channels read by module ``consumer`` (input ``index[j]`` is channel ``root[j]``)."""
    index = np.arange(channels) if index is None else index
    member = Member(consumer, "in", lambda m, idx: m, index, np.arange(channels) if root is None else root)
    return Group("producer", channels, (member,), "conv", 3, 3, 1, 8)


def contributions(x: torch.Tensor, w: torch.Tensor, channels) -> torch.Tensor:
    """sum over ``channels`` of X_i W_i^T: what a conv with weight ``w`` outputs from those inputs only."""
    w = w.reshape(w.shape[0], w.shape[1], -1)
    return torch.einsum("scp,ncp->sn", x[:, channels], w[:, channels])


def evaluator() -> Evaluator:
    g = torch.Generator().manual_seed(0)
    data = Dataset(name="synthetic", classes=[str(i) for i in range(10)],
                   train_images=torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g),
                   train_labels=torch.randint(0, 10, (60,), generator=g),
                   test_images=torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g),
                   test_labels=torch.randint(0, 10, (10,), generator=g), source="synthetic")
    return Evaluator(data, make_splits(60, holdout=20), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=20)


@pytest.fixture(scope="module")
def outcome():
    model, space = zoo_space("resnet20")
    context = Context(model=model, space=space, evaluator=evaluator(), target=0.5, hyperparameters=SMALL, seed=3)
    return context, run(context)


def test_sampled_patches_reproduce_the_layer_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, stride=2, padding=2, dilation=2),
                          nn.Flatten(), nn.Linear(4 * 16, 6))
    batches = [(torch.randn(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))] * 2
    first, second = list(sample_features(model, ["1", "3"], batches, points=7, seed=1))
    for name, (x, y) in first.items():
        module = model.get_submodule(name)
        assert torch.allclose(contributions(x, module.weight, slice(None)) + module.bias, y, atol=1e-5)
    assert first["1"][0].shape == (3 * 7, 5, 9) and first["3"][0].shape == (3, 64, 1)
    assert not torch.equal(first["1"][1], second["1"][1])  # each batch has its own positions...
    again = next(iter(sample_features(model, ["1"], batches, points=7, seed=1, inputs=False)))
    assert again["1"][0] is None and torch.equal(again["1"][1], first["1"][1])  # ...drawn from the seed


def test_lasso_recovers_a_planted_sparse_solution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.Conv2d(12, 8, 3, bias=False))
    planted = [1, 4, 7]
    problem = Reconstruction(model, group_of(12, "1"))
    for _ in range(2):  # accumulated over batches
        x = torch.randn(150, 12, 9)
        problem.add("1", x, contributions(x, model[1].weight.detach(), planted))
    assert problem.samples == 300
    assert problem.select(3).tolist() == planted
    scores = problem.scores()
    assert set(np.argsort(-scores)[:3]) == set(planted) and (scores > 0).all()


def coordinate_descent(gram: np.ndarray, corr: np.ndarray, alpha: float, beta: np.ndarray) -> np.ndarray:
    """A plain LASSO solver to check the path against (warm-started from ``beta``)."""
    beta = beta.copy()
    for _ in range(100000):
        old = beta.copy()
        for j in range(len(corr)):
            r = corr[j] - gram[j] @ beta + gram[j, j] * beta[j]
            beta[j] = np.sign(r) * max(abs(r) - alpha, 0) / gram[j, j]
        if np.abs(beta - old).max() < 1e-13:
            return beta
    raise AssertionError("coordinate descent did not converge")


def test_lasso_path_matches_coordinate_descent():
    """Walking the LARS path down to k non-zero coefficients gives the support a plain solver has at the
    largest penalty with k non-zeros, also when a coefficient leaves the path and re-enters."""
    rng = np.random.default_rng(102)
    z = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 50)) + 0.3 * rng.normal(size=(6, 50))  # correlated channels
    y = 2 * z[0] - z[1] + rng.normal(size=50)
    gram, corr = z @ z.T / 50, z @ y / 50
    entry, _ = lasso_path(gram, corr)
    first: dict[int, set[int]] = {}
    beta = np.zeros(6)
    for alpha in entry.max() * np.geomspace(1 - 1e-9, 1e-4, 300):
        beta = coordinate_descent(gram, corr, alpha, beta)
        first.setdefault(int(np.count_nonzero(beta)), set(np.flatnonzero(beta).tolist()))
    assert len(first) == 6
    for k, support in first.items():
        assert set(lasso_path(gram, corr, stop=k)[1]) == support, k


def test_least_squares_refits_exactly_on_noiseless_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.Conv2d(10, 6, 3))
    kept = np.array([0, 2, 3, 8])
    truth = torch.randn(6, 10, 3, 3)
    problem = Reconstruction(model, group_of(10, "1"), refit=True)
    x = torch.randn(400, 10, 9)
    y = contributions(x, truth, kept) + model[1].bias.detach()
    problem.add("1", x, y)
    weight = problem.refit(kept)["1"]
    residual = contributions(x, weight, kept) + model[1].bias.detach() - y
    assert residual.norm() / y.norm() < 1e-6
    assert torch.allclose(weight[:, kept], truth[:, kept], atol=1e-5)
    assert not weight[:, np.setdiff1d(np.arange(10), kept)].any()
    assert problem.error(kept, {"1": weight}) < 1e-10 < problem.error(kept)


def test_refit_of_a_classifier_reading_a_flattened_map():
    """A Linear consumer: each channel is several input features (its flattened 2x2 map)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5))
    group = group_of(4, "2", index=np.arange(16), root=np.repeat(np.arange(4), 4))
    problem = Reconstruction(model, group, refit=True)
    features = torch.arange(16).reshape(4, 4)
    x = torch.randn(100, 16, 1)
    truth = torch.randn(5, 16)
    y = contributions(x, truth, features[[1, 3]].reshape(-1)) + model[2].bias.detach()
    problem.add("2", x, y)
    assert problem.select(2).tolist() == [1, 3]
    weight = problem.refit(np.array([1, 3]))["2"]
    assert torch.allclose(weight[:, features[[1, 3]].reshape(-1)], truth[:, features[[1, 3]].reshape(-1)], atol=1e-5)


def test_run_meets_the_target_within_the_bounds(outcome):
    context, result = outcome
    space = context.space
    counts = result.counts
    assert counts.shape == (len(space.searchable),)
    assert all(n in space.count_options(j) for j, n in enumerate(counts))
    budget = context.target * space.base.macs
    assert space.macs(counts) <= budget
    bigger = space.count_options(len(counts) - 1)
    bigger = bigger[bigger > counts[-1]]
    assert bigger.size == 0 or space.macs(np.append(counts[:-1], bigger[0])) > budget  # within one channel
    assert [len(result.kept[g.name]) for g in space.searchable] == counts.tolist()
    space.check(result.kept)
    reference = context.model.state_dict()
    assert result.weights.keys() == reference.keys()
    assert all(result.weights[k].shape == v.shape and result.weights[k].dtype == v.dtype for k, v in reference.items())
    json.dumps(result.info)  # goes into the policy's provenance
    assert result.info["images"] == 40 and result.info["points_per_image"] == 10
    layers = result.info["layers"]
    assert all(layers[g]["error_refit"] <= layers[g]["error_dropped"] for g in space.names)


def test_refit_weights_reconstruct_the_sampled_outputs_better(outcome):
    context, result = outcome
    space = context.space
    model = context.model
    refit = copy.deepcopy(model)
    refit.load_state_dict(result.weights)
    pruned = {"original": space.apply(result.kept), "refit": PrunableSpace(refit, "resnet20").apply(result.kept)}
    batches = _batches(context, LassoSettings(**SMALL))
    names = [m.module for g in space.searchable for m in consumers(model, g)]
    sampling = {"points": SMALL["points"], "seed": context.seed, "inputs": False}
    target = list(sample_features(model, names, batches, **sampling))
    errors = {}
    for label, net in pruned.items():
        got = list(sample_features(net, names, batches, **sampling))
        errors[label] = {n: sum(float((g[n][1] - t[n][1]).pow(2).sum()) for g, t in zip(got, target))
                         / sum(float(t[n][1].pow(2).sum()) for t in target) for n in names}
    assert sum(errors["refit"].values()) < 0.5 * sum(errors["original"].values())
    assert errors["refit"][names[-1]] < errors["original"][names[-1]]


def test_run_is_deterministic_under_its_seed(outcome):
    context, result = outcome
    again = run(context)
    assert all(np.array_equal(result.kept[n], again.kept[n]) for n in result.kept)
    assert all(torch.equal(result.weights[k], again.weights[k]) for k in result.weights)


def test_unsupported_architectures_and_settings_are_refused():
    model, space = zoo_space("resnet20", "full")
    context = Context(model=model, space=space, evaluator=evaluator(), target=0.5, hyperparameters=SMALL)
    with pytest.raises(AutopruneError, match="residual stage.*'inner'"):
        run(context)
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(AutopruneError, match="depthwise conv"):
        consumers(depthwise, group_of(8, "1"))
    odd = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(AutopruneError, match=r"feeds 1 \(BatchNorm2d\), not a Conv2d or Linear"):
        consumers(odd, group_of(8, "1"))


def test_reconstruction_criterion_scores_every_channel():
    assert "reconstruction" in CRITERIA
    model, space = zoo_space("resnet20")
    with pytest.raises(AutopruneError, match="'reconstruction' needs feature maps"):
        space.scores("reconstruction")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    scores = space.scores("reconstruction", batches=batches)
    assert list(scores) == space.names
    assert all(s.shape == (grp.channels,) and np.isfinite(s).all() and (s >= 0).all()
               for grp, s in zip(space.searchable, scores.values()))
    assert np.mean(np.concatenate(list(scores.values())) > 0) > 0.9  # 0: a channel dead on these images
    again = space.scores("reconstruction", batches=batches)
    assert all(np.array_equal(scores[n], again[n]) for n in scores)
    policy, _ = prune(model, "resnet20", 0.5, criterion="reconstruction", batches=batches)
    assert policy.criterion == "reconstruction"
    assert all(np.array_equal(policy.channels[n], np.sort(np.argsort(-scores[n], kind="stable")[:len(policy.channels[n])]))
               for n in space.names)


def test_prune_command_takes_data_for_the_criterion(tiny, capsys, tmp_path):
    base = ["prune", "--arch", "resnet20", "--checkpoint", str(tiny / "r20.th"), "--target-flops", "0.5",
            "--criterion", "reconstruction", "--out", str(tmp_path / "run")]
    assert main(base) == 2
    assert "--criterion reconstruction needs training data: pass --data-dir" in capsys.readouterr().err
    assert main(base + ["--data-dir", str(tiny / "data"), "--holdout", "20", "--device", "cpu"]) == 0
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["criterion"] == "reconstruction" and policy["macs"] <= 0.5 * policy["base_macs"]
