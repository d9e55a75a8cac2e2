"""The reward proxies (issue 16): deterministic, the original model untouched, cached by the env, bad names refused."""

from __future__ import annotations

import pytest
import torch

from autoprune.data import Splits, load_dataset, make_splits
from autoprune.env import EnvConfig, PruningEnv
from autoprune.errors import AutopruneError, DataError, UnknownNameError
from autoprune.evaluate import Evaluator
from autoprune.models import get_model_info
from autoprune.proxies import BNProxy, FinetuneProxy, ReconstructProxy, get_proxy
from autoprune.pruning import uniform_counts
from conftest import search_config, zoo_space

# tiny settings: the tiny dataset has 60 training images outside a holdout of 20
PROXIES = {
    "bn": lambda: BNProxy(),
    "reconstruct": lambda: ReconstructProxy(images=20, points=3, batch_size=10),
    "finetune": lambda: FinetuneProxy(3, batch_size=16),
    "distill": lambda: FinetuneProxy(3, kd=True, batch_size=16),
}


def _evaluator(tiny, proxy=None, splits=None) -> Evaluator:
    data = load_dataset(tiny / "data")
    info = get_model_info("resnet20")
    splits = splits or make_splits(len(data.train_labels), holdout=20, seed=0)
    return Evaluator(data, splits, mean=info.mean, std=info.std, batch_size=50, recal_batches=1, recal_batch_size=10,
                     proxy=proxy)


def _kept(space, target=0.5):
    return space.select(uniform_counts(space, target), space.scores("l1"))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(PROXIES))
def test_each_proxy_is_deterministic_and_leaves_the_model_untouched(tiny, name):
    model, space = zoo_space("resnet20")
    before = _state(model)
    kept = _kept(space)
    judged = []
    for _ in range(2):  # a fresh proxy and evaluator each time: nothing carried over but the seed
        evaluator = _evaluator(tiny, PROXIES[name]())
        torch.manual_seed(123)  # the proxy must not depend on the global RNG's state ...
        m = evaluator.judge(space, kept)
        judged.append((evaluator.holdout(m).top1, _state(m)))
        torch.rand(7)  # ... nor leave it differently consumed
    (acc0, s0), (acc1, s1) = judged
    assert acc0 == acc1
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the space's model was modified"


@pytest.mark.parametrize("name", ["reconstruct", "finetune", "distill"])
def test_proxies_other_than_bn_change_the_judged_weights(tiny, name):
    _, space = zoo_space("resnet20")
    kept = _kept(space)
    plain = _state(_evaluator(tiny).judge(space, kept))
    timings: dict[str, float] = {}
    other = _state(_evaluator(tiny, PROXIES[name]()).judge(space, kept, timings=timings))
    convs = [k for k in plain if k.endswith("conv2.weight")]
    assert any(not torch.equal(plain[k], other[k]) for k in convs)
    assert {"apply", "recalibrate"} <= set(timings)
    assert timings.get("finetune" if name != "reconstruct" else "reconstruct", 0) > 0


def test_reconstruct_refits_towards_the_unpruned_outputs(tiny):
    """The refit consumer reproduces the unpruned model's block output better than the plain cut does."""
    model, space = zoo_space("resnet20")
    kept = _kept(space, 0.3)
    evaluator = _evaluator(tiny)
    x = next(iter(evaluator.recal_loader))[0]
    group = space.searchable[0]
    consumer = next(m.module for m in group.members if m.side == "in")

    def output(m):
        seen = []
        h = m.get_submodule(consumer).register_forward_hook(lambda _m, _a, o: seen.append(o.detach()))
        with torch.no_grad():
            m.eval()(x)
        h.remove()
        return seen[0]

    reference = output(model)
    cut = output(space.apply(kept))
    proxy = ReconstructProxy(images=60, points=8, batch_size=20)
    refit_model = proxy.judge(evaluator, space, kept)  # recalibration does not touch the conv's own output
    refit_model.load_state_dict({**refit_model.state_dict(), **{k: v for k, v in space.apply(kept).state_dict().items()
                                                                if "bn" in k or "running" in k}})
    refit = output(refit_model)
    assert (refit - reference).pow(2).sum() < (cut - reference).pow(2).sum()


def test_env_caches_proxy_evaluations(tiny):
    _, space = zoo_space("resnet20")
    env = PruningEnv(space, _evaluator(tiny, FinetuneProxy(2, batch_size=16)), EnvConfig(targets=(0.5,), part="all"))
    counts = uniform_counts(space, 0.5)
    first, cached = env.accuracy(counts)
    assert not cached and env.evaluations == 1 and env.timings["finetune"] > 0
    spent = env.timings["finetune"]
    again, cached = env.accuracy(counts)
    assert cached and again == first and env.evaluations == 1 and env.timings["finetune"] == spent


@pytest.mark.parametrize(("name", "kind", "steps"), [("bn", BNProxy, None), ("reconstruct", ReconstructProxy, None),
                                                      ("finetune-200", FinetuneProxy, 200),
                                                      ("distill-150", FinetuneProxy, 150)])
def test_names(name, kind, steps):
    proxy = get_proxy(name)
    assert type(proxy) is kind and proxy.name == name
    if steps is not None:
        assert proxy.steps == steps and proxy.kd == name.startswith("distill")


@pytest.mark.parametrize(("name", "error", "says"), [
    ("finetun-200", UnknownNameError, "Did you mean 'finetune-200'?"),
    ("bm", UnknownNameError, "Did you mean 'bn'?"),
    ("reconstruction", UnknownNameError, "Did you mean 'reconstruct'?"),
    ("finetune", AutopruneError, "finetune-200"),
    ("distill", AutopruneError, "distill-200"),
    ("finetune-0", AutopruneError, "at least 1, but got steps=0"),
    ("finetune--5", AutopruneError, "at least 1, but got steps=-5"),
    ("bn-10", AutopruneError, "takes no step count"),
])
def test_bad_names_are_refused_with_the_fix(name, error, says):
    with pytest.raises(error, match=None) as info:
        get_proxy(name)
    assert says in str(info.value)


def test_a_proxy_that_needs_training_data_is_refused_without_it(tiny):
    data = load_dataset(tiny / "data")
    empty = Splits(train=torch.zeros(0, dtype=torch.int64), holdout=torch.arange(len(data.train_labels)))
    _evaluator(tiny, BNProxy(), splits=empty)  # bn with no recalibration batches asks for nothing
    for proxy in (FinetuneProxy(5), ReconstructProxy()):
        with pytest.raises(DataError, match=f"Reward proxy '{proxy.name}' needs at least 1 training images .* but "
                                            "none are given"):
            _evaluator(tiny, proxy, splits=empty)


def test_search_config_and_preset_refuse_a_bad_proxy_when_built(tiny):
    with pytest.raises(UnknownNameError, match="Did you mean 'finetune-100'"):
        search_config(tiny, reward_proxy="finetne-100")
    from autoprune.search import load_preset

    with pytest.raises(AutopruneError, match="finetune-200"):
        load_preset("uniform", reward_proxy="finetune")


def test_a_search_keeps_its_proxy_on_resume(tiny, tmp_path):
    from autoprune.search import resume_config, search
    from autoprune.search import setup

    config = search_config(tiny, agent="uniform", targets=[0.5], reward_proxy="finetune-2")
    search(config, tmp_path / "run")
    resumed = resume_config(tmp_path / "run")
    assert resumed.reward_proxy == "finetune-2" and resumed.preset["reward_proxy"] == "finetune-2"
    evaluator = setup(resumed)[2]
    assert isinstance(evaluator.proxy, FinetuneProxy) and evaluator.proxy.steps == 2
