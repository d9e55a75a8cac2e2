"""Handcrafted baselines: the registry, uniform/global, Network Slimming's mechanics, and `search --agent <method>`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from _mask_methods import interrupt_in_second_epoch, tiny_context
from conftest import search_config, zoo_space

from autoprune import baselines
from autoprune.baselines import METHODS, Context, Outcome, get_method
from autoprune.baselines import _slimming as slimming
from autoprune.checkpoints import file_sha256
from autoprune.errors import AutopruneError, BudgetError, PolicyError, UnknownNameError
from autoprune.policy import Policy
from autoprune.search import export_policy, list_presets, load_preset, search, setup


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def bundle(tiny):
    """(preset, env, evaluator, space) of the tiny resnet20 setup the search tests use."""
    return setup(search_config(tiny, "uniform"))


def context(bundle, tmp_path, target=0.5, criterion="l1", model=None, **hyperparameters) -> Context:
    _, _, evaluator, space = bundle
    return Context(model=space.model if model is None else model, space=space, evaluator=evaluator, target=target,
                   criterion=criterion, hyperparameters=hyperparameters, work_dir=tmp_path, progress=False)


def one_step_each(space, counts) -> int:
    """MACs of one channel (rounding step) in every group, added or removed: the tolerance below the target.

    The env's one-channel rule, for any method: a threshold or a ratio stops where one more channel
    would break the budget. Taken both ways, so a method that keeps whole groups and removes
    kernels (DExp states its own MACs) is held to the same granularity.
    """
    full = np.array([g.channels for g in space.searchable])
    step = np.minimum(space.spec.round, full)
    base, extra = space.macs(counts), 0
    for j in range(len(counts)):
        up, down = np.array(counts), np.array(counts)
        up[j] = min(up[j] + step[j], full[j])
        down[j] = max(down[j] - step[j], 1)
        extra += max(space.macs(up) - base, base - space.macs(down))
    return extra


def assert_meets(space, target, counts, macs=None):
    lo, hi = space.spec.bounds
    n = len(space.searchable)
    assert counts.shape == (n,)
    assert (space.counts(np.full(n, lo)) <= counts).all() and (counts <= space.counts(np.full(n, hi))).all()
    macs = space.macs(counts) if macs is None else macs
    budget = target * space.base.macs
    assert macs <= budget, "above the target"
    assert budget - macs <= one_step_each(space, counts), "more than one channel per group below the target"


# -- the registry ----------------------------------------------------------------
def test_registry_names_every_method_and_imports_lazily(monkeypatch):
    assert {"uniform", "global", "slimming", "lasso", "dcp", "scp", "dexp"} <= set(METHODS)
    assert set(baselines.__all__) <= set(dir(baselines))
    assert get_method("slimming") is slimming.run
    with pytest.raises(UnknownNameError, match="Did you mean 'slimming'"):
        get_method("slimmin")
    monkeypatch.setitem(METHODS, "absent", "autoprune.baselines._absent:run")
    with pytest.raises(AutopruneError, match="autoprune.baselines._absent is not part of this installation"):
        get_method("absent")
    with pytest.raises(AutopruneError, match="'package.module:function'"):
        baselines.register("bad", "no_colon")


def test_handcrafted_presets_load():
    for name in ("uniform", "global-l1", "global-l2", "global-bn-gamma", "global-taylor", "slimming"):
        assert name in list_presets()
        preset = load_preset(name, episodes=3)  # --episodes is accepted and means nothing here
        assert preset.handcrafted and not preset.optuna and preset.algorithm in METHODS
    assert not load_preset("ddpg").handcrafted
    assert load_preset("slimming").criterion == "bn-gamma"


# -- the contract every method keeps ----------------------------------------------
def _hyperparameters(method: str) -> tuple[dict, str]:
    """The shipped preset's knobs and criterion for ``method`` (the first preset that runs it)."""
    for name in list_presets():
        preset = load_preset(name)
        if preset.algorithm == method:
            return dict(preset.hyperparameters), preset.criterion
    return {}, "l1"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_meets_the_target_within_bounds_deterministically(bundle, tmp_path, method):
    try:
        run = get_method(method)
    except AutopruneError as e:
        pytest.skip(str(e))
    hp, criterion = _hyperparameters(method)
    first = run(context(bundle, tmp_path / "a", target=0.5, criterion=criterion, **hp))
    space = bundle[3]
    counts = np.asarray(first.counts)
    assert_meets(space, 0.5, counts, first.macs)
    if first.kept is not None:
        for name, n in zip(space.names, counts):
            idx = np.asarray(first.kept[name])
            assert len(idx) == n and (np.diff(idx) > 0).all() and idx.min() >= 0
    json.dumps(first.info, default=lambda v: v.item() if hasattr(v, "item") else v.tolist())
    again = run(context(bundle, tmp_path / "b", target=0.5, criterion=criterion, **hp))
    assert np.array_equal(counts, again.counts), "not deterministic under a seed"


@pytest.mark.parametrize("method,hyperparameters,message", [
    ("uniform", {"epochs": 3}, "Unknown uniform hyperparameter 'epochs'. Known: batches"),
    ("global", {"batches": 0}, "global: batches must be an integer of at least 1, but got batches=0"),
    ("slimming", {"lamda": 1e-4}, "Unknown slimming hyperparameter 'lamda'. Did you mean 'lambda'?"),
    ("slimming", {"lambda": -1}, "slimming: lambda must be a number of at least 0, but got lambda=-1"),
    ("lasso", {"imags": 10}, "Unknown lasso hyperparameter 'imags'. Did you mean 'images'?"),
    ("lasso", {"points": 0}, "lasso: points must be an integer of at least 1"),
    ("dcp", {"decayy": 0.9}, "Unknown dcp hyperparameter 'decayy'. Did you mean 'decay'?"),
    ("dcp", {"decay": 1.0}, r"dcp: decay must lie in \[0, 1\), but got decay=1.0"),
    ("dcp", {"warmup": 0}, "warmup must be an integer of at least 1"),
    ("dcp", {"interval": 0}, "interval must be an integer of at least 1"),
    ("dcp", {"epochs": 0}, "dcp: epochs must be an integer of at least 1"),
    ("scp", {"temprature": 1.0}, "Unknown scp hyperparameter 'temprature'. Did you mean 'temperature'?"),
    ("scp", {"temperature": 0}, "temperature must be positive, but got temperature=0"),
    ("scp", {"strength": -1}, "strength must be at least 0"),
    ("scp", {"threshold": 1.0}, r"threshold must lie in \(0, 1\)"),
    ("dexp", {"wya": "full-layer"}, "Unknown dexp hyperparameter 'wya'. Did you mean 'way'?"),
    ("dexp", {"epochs": -1}, "dexp: epochs must be an integer of at least 0"),
])
def test_bad_hyperparameters_say_what_is_wrong_before_any_work(tmp_path, method, hyperparameters, message):
    context = tiny_context(tmp_path)
    context.hyperparameters = hyperparameters
    with pytest.raises(UnknownNameError if "Unknown" in message else AutopruneError, match=message) as e:
        get_method(method)(context)
    assert isinstance(e.value, UnknownNameError) == ("Unknown" in message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["dcp", "scp"])
def test_an_unreachable_target_is_refused_before_training(tmp_path, method):
    with pytest.raises(BudgetError, match="unreachable"):
        get_method(method)(tiny_context(tmp_path, target=0.01))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("method,settings,other", [
    ("slimming", {"epochs": 2}, {"lambda": 1e-3}),
    ("dcp", {"epochs": 2, "warmup": 2, "interval": 2}, {"decay": 0.5}),
    ("scp", {"epochs": 2}, {"strength": 2.0}),
    ("dexp", {"epochs": 2}, {"lr": 0.05}),
])
def test_a_method_that_trains_resumes_exactly_and_refuses_other_settings(tmp_path, method, settings, other):
    run = get_method(method)

    def ctx(folder: str, **extra):
        c = tiny_context(tmp_path / folder, **settings, **extra)
        c.criterion = "bn-gamma" if method == "slimming" else c.criterion
        return c

    whole = run(ctx("whole"))
    interrupt_in_second_epoch(run, ctx("cut"))
    resumed = run(ctx("cut"))
    np.testing.assert_array_equal(resumed.counts, whole.counts)
    for name in whole.kept:
        np.testing.assert_array_equal(resumed.kept[name], whole.kept[name])
    assert whole.weights.keys() == resumed.weights.keys()
    for k in whole.weights:
        assert torch.equal(resumed.weights[k], whole.weights[k]), k
    with pytest.raises(AutopruneError, match="was written with other settings"):
        run(ctx("cut", **other))


# -- uniform and global ---------------------------------------------------------------
@pytest.mark.parametrize("method,criterion", [("uniform", "l1"), ("global", "l1"), ("global", "l2"),
                                              ("global", "bn-gamma"), ("global", "taylor")])
@pytest.mark.parametrize("target", [0.4, 0.7])
def test_uniform_and_global_meet_the_target_through_the_cost_model(bundle, tmp_path, method, criterion, target):
    out = get_method(method)(context(bundle, tmp_path, target=target, criterion=criterion))
    space = bundle[3]
    assert_meets(space, target, np.asarray(out.counts))
    assert bundle[1].space.macs(out.counts) == space.macs(out.counts)  # the env prices it the same
    if method == "uniform":
        ratios = np.asarray(out.counts) / np.array([g.channels for g in space.searchable])
        assert ratios.max() - ratios.min() < 0.07  # one ratio, up to rounding to whole channels


# -- Network Slimming ---------------------------------------------------------------
def test_the_penalty_shrinks_gamma(bundle, tmp_path):
    def trained(penalty: float):
        ctx = context(bundle, tmp_path / str(penalty), criterion="bn-gamma")
        model = slimming.sparsity_train(ctx, slimming.SlimmingSettings(penalty=penalty, epochs=2, batch_size=20))
        with torch.no_grad():
            return float(slimming.bn_penalty(model, ctx.space, 1.0)(model))

    plain, sparse = trained(0.0), trained(1e-2)  # the same 6 SGD steps on the same batches, but for the penalty
    assert sparse < plain - 1e-2, (plain, sparse)


def test_the_threshold_is_one_threshold_that_meets_the_target():
    _, space = zoo_space("resnet20")
    rng = np.random.default_rng(0)
    scores = {g.name: rng.gamma(2.0, 1.0 + 0.1 * j, g.channels) for j, g in enumerate(space.searchable)}
    for target in (0.35, 0.5, 0.8):
        counts, threshold, raw = slimming.threshold_counts(space, target, scores, bounded=False)
        assert np.array_equal(counts, raw)
        kept = space.select(counts, scores)
        kept_scores = np.concatenate([scores[n][kept[n]] for n in space.names])
        removed = np.concatenate([np.delete(scores[n], kept[n]) for n in space.names])
        assert kept_scores.min() == threshold and (removed < threshold).all()  # raw |gamma|, across groups
        budget = target * space.base.macs
        assert space.macs(counts) <= budget
        best_removed = max(space.names, key=lambda n: np.delete(scores[n], kept[n]).max(initial=-1))
        more = counts.copy()
        more[space.names.index(best_removed)] += 1
        assert space.macs(more) > budget  # the next channel by score would break the budget


def test_a_threshold_that_empties_a_group_is_refused_unless_the_bounds_keep_it(bundle, tmp_path):
    _, space = zoo_space("resnet20")
    scores = {g.name: np.ones(g.channels) for g in space.searchable}
    victim = space.names[4]
    scores[victim] = np.full(space.searchable[4].channels, 1e-6)
    with pytest.raises(BudgetError, match=f"removes every channel of group '{victim}'"):
        slimming.threshold_counts(space, 0.5, scores, bounded=False)
    counts, _, raw = slimming.threshold_counts(space, 0.5, scores, bounded=True)
    assert raw[4] == 0 and counts[4] == space.counts(np.full(len(counts), space.spec.bounds[0]))[4]
    assert space.macs(counts) <= 0.5 * space.base.macs

    # through run(): a model whose group has dead BatchNorm scales, thresholded without training
    tiny_space = bundle[3]
    model = copy.deepcopy(tiny_space.model)
    name = tiny_space.names[4]
    bn = next(m.module for m in tiny_space.searchable[4].producers()
              if isinstance(model.get_submodule(m.module), torch.nn.BatchNorm2d))
    with torch.no_grad():
        model.get_submodule(bn).weight.mul_(1e-6)
    ctx = context(bundle, tmp_path, criterion="bn-gamma", model=model, epochs=0, bounded=False)
    with pytest.raises(BudgetError, match=f"group '{name}'"):
        slimming.run(ctx)
    out = slimming.run(context(bundle, tmp_path, criterion="bn-gamma", model=model, epochs=0))
    assert name in out.info["floored"] and out.weights is None
    with pytest.raises(AutopruneError, match="criterion bn-gamma"):
        slimming.run(context(bundle, tmp_path, criterion="l1"))


# -- in `autoprune search` --------------------------------------------------------------
def test_search_with_the_uniform_agent(tiny, tmp_path):
    result = search(search_config(tiny, "uniform"), tmp_path / "run")
    policy = Policy.load(tmp_path / "run" / "policy.json")
    assert (tmp_path / "run" / "policy-0.5.json").is_file() and not list((tmp_path / "run").glob("weights-*"))
    assert set(policy.accuracy) == {"holdout", "test"} and policy.provenance["method"] == "uniform"
    assert policy.checkpoint == file_sha256(tiny / "r20.th") and policy.macs_fraction <= 0.5
    assert result.uniform[0.5] == (policy.accuracy["holdout"], policy.accuracy["test"])  # it IS uniform-L1
    assert "uniform-L1" in result.table and result.evaluations == 1
    assert result.notes == [f"fine-tune: autoprune finetune --policy {tmp_path / 'run' / 'policy-0.5.json'} "
                            f"--data-dir {tiny / 'data'}"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["evaluations"] == 1
    from autoprune.reports import write_report  # no episodes to plot: the report still holds the table

    written = write_report(tmp_path / "run")
    assert "uniform @ 0.5" in (tmp_path / "run" / "report.md").read_text() and written
    with pytest.raises(AutopruneError, match="handcrafted method 'uniform'"):
        export_policy(tmp_path / "run", 0.45)
    with pytest.raises(AutopruneError, match="'uniform' is not one"):
        search(search_config(tiny, "uniform", workers=2), tmp_path / "parallel")


def fake(context: Context) -> Outcome:
    """A method that removes more than channels (as DExp's kernels) and leaves the channel choice to the search."""
    from autoprune.pruning import uniform_counts

    counts = uniform_counts(context.space, context.target)
    return Outcome(counts=counts, macs=context.space.macs(counts) - 1000, info={"rate": np.float32(0.25)})


def test_a_method_stating_its_macs_and_leaving_the_selection(tiny, bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "fake", f"{__name__}:fake")
    (tmp_path / "fake.yaml").write_text("algorithm: fake\ncriterion: l2\n")
    result = search(search_config(tiny, str(tmp_path / "fake.yaml"), targets=[0.5, 0.6]), tmp_path / "run")
    assert all("kernel-sparse" in note and "not with autoprune finetune" in note for note in result.notes)
    policy = Policy.load(tmp_path / "run" / "policy-0.6.json")
    assert policy.macs == policy.provenance["channel_macs"] - 1000 and policy.provenance["info"] == {"rate": 0.25}
    space = bundle[3]
    policy.validate(space)  # the stated MACs are accepted with the channels' own count beside them
    scores = space.scores("l2")
    assert policy.channels == {k: v.tolist() for k, v in space.select([len(c) for c in policy.channels.values()],
                                                                       scores).items()}
    policy.provenance["channel_macs"] += 1
    with pytest.raises(PolicyError, match="edited"):
        policy.validate(space)


@pytest.mark.slow
def test_slimming_from_the_command_line_then_finetune_from_its_weights(tiny, tmp_path, capsys):
    from autoprune.cli import main
    from autoprune.training import make_config, train

    run = tmp_path / "run"
    common = ["--data-dir", str(tiny / "data"), "--holdout", "20", "--reward-samples", "10", "--recal-batches", "1",
              "--device", "cpu", "--checkpoint", str(tiny / "r20.th")]
    assert main(["search", "--arch", "resnet20", "--agent", "slimming", "--target-flops", "0.5", "--out", str(run),
                 *common]) == 0
    printed = capsys.readouterr().out
    assert "uniform-L1" in printed
    assert f"autoprune finetune --policy {run / 'policy-0.5.json'}" in printed
    assert f"--checkpoint {run / 'weights-0.5.pt'}" in printed
    policy = Policy.load(run / "policy.json")
    weights = run / "weights-0.5.pt"
    assert policy.checkpoint == file_sha256(weights) and policy.provenance["weights"] == "weights-0.5.pt"
    state = torch.load(weights, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert (run / "method" / "t0.5" / "sparsity.pt").is_file()
    info = policy.provenance["info"]
    assert info["sum_abs_gamma"]["after"] != info["sum_abs_gamma"]["before"] and info["epochs"] == 1
    assert policy.macs_fraction <= 0.5

    # --resume of a run missing its policy re-runs that target: the method resumes from its checkpoint
    for f in ("policy.json", "policy-0.5.json"):
        (run / f).unlink()
    assert main(["search", "--resume", str(run), "--no-report"]) == 0
    again = Policy.load(run / "policy.json")
    assert again.channels == policy.channels and again.checkpoint == policy.checkpoint

    def finetune(checkpoint):
        return make_config("finetune", tiny / "data", policy=run / "policy-0.5.json", checkpoint=checkpoint,
                           preset="cpu", device="cpu", holdout=20, eval_batch_size=50,
                           recipe={"epochs": 1, "batch_size": 16})

    with pytest.raises(PolicyError, match="Pass the checkpoint it names"):
        train(finetune(tiny / "r20.th"), tmp_path / "wrong")
    result = train(finetune(weights), tmp_path / "ft", progress=False)
    assert 0 <= result.metrics["test_top1"] <= 1 and result.metrics["macs"] == policy.macs
