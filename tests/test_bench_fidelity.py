"""scripts/bench_fidelity.py on a tiny setup: interrupted in the middle of a policy (a proxy, a fine-tune between
its epochs), resumed, it stores what an uninterrupted run stores; and its statistics are those of scipy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune._device import autocast_dtype

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_fidelity as bf  # noqa: E402

TIMING = {"seconds", "timings", "train_seconds"}


def _setup(tiny: Path) -> bf.Setup:
    return bf.Setup(data_dir=str(tiny / "data"), cells=(bf.Cell("resnet20", 0.5, str(tiny / "r20.th")),),
                    proxies=("bn", "finetune-2"), random=1, agents=("cmaes",), episodes=2, epochs=2, batch_size=16,
                    seeds=(0, 1), seeded=2, holdout=20, reward_samples=10, recal_batches=1, recal_batch_size=10,
                    eval_batch_size=50)


def _stored(results: Path) -> dict[str, dict]:
    """Every stored measurement and policy, without times and paths (which differ between runs)."""
    out = {}
    for path in sorted(results.glob("resnet20-0.5/*/*.json")):
        record = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
        if path.name == "policy.json":
            for key in ("search_run", "created"):  # where and when, not what
                record["provenance"].pop(key, None)
        out[str(path.relative_to(results))] = record
    return out


@pytest.mark.slow
def test_an_interrupted_benchmark_resumes_to_the_same_results(tiny, tmp_path, monkeypatch):
    setup = _setup(tiny)
    bf.run(setup, tmp_path / "whole")
    whole = _stored(tmp_path / "whole")
    expected = {f"resnet20-0.5/{name}/{kind}.json" for _, name, kind in bf.plan(setup)}
    assert set(whole) == expected
    autocast = {r["autocast"] for k, r in whole.items() if "finetune-seed" in k}
    assert autocast == {"bfloat16" if autocast_dtype(torch.device("cpu")) else "float32"}  # the record says which
    assert {r["split_seed"] for k, r in whole.items() if "finetune-seed" in k} == {0}  # seeds share one holdout

    from autoprune.proxies import FinetuneProxy
    from autoprune.training import Trainer

    # 1. killed inside a policy's proxy measurement, after its bn proxy was stored
    def stop_in_proxy(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FinetuneProxy, "judge", stop_in_proxy)
    parted = tmp_path / "parted"
    with pytest.raises(KeyboardInterrupt):
        bf.run(setup, parted)
    monkeypatch.undo()
    first = next(iter(setup.policy_names()))
    assert (parted / "resnet20-0.5" / first / "proxy-bn.json").is_file()
    assert not (parted / "resnet20-0.5" / first / "proxy-finetune-2.json").exists()

    # 2. killed in the middle of a fine-tune, after its first epoch's checkpoint
    original = Trainer.train_epoch
    calls = []

    def stop_in_second_epoch(self, *args, **kwargs):
        if self.recipe.epochs == setup.epochs:  # a fine-tune, not a proxy's steps
            calls.append(self.epoch)
            if len(calls) == 4:  # the second epoch of the second fine-tune
                raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        bf.run(setup, parted)
    monkeypatch.undo()
    second = setup.policy_names()[1]
    runs = parted / "resnet20-0.5" / second / "runs" / "seed0"
    assert (runs / "checkpoints" / "last.pt").is_file() and not (parted / "resnet20-0.5" / second /
                                                                   "finetune-seed0.json").exists()

    # 3. resumed: the fine-tune continues from its epoch, and everything ends as in the uninterrupted run
    resumed_from = []
    monkeypatch.setattr(Trainer, "train_epoch",
                        lambda self, *a, **k: (resumed_from.append(self.epoch), original(self, *a, **k))[1])
    bf.run(setup, parted)
    assert resumed_from[0] == 1 or 1 in resumed_from  # the interrupted fine-tune started at its second epoch
    resumed = _stored(parted)
    assert resumed.keys() == whole.keys()
    assert {k: v for k, v in resumed.items() if v != whole[k]} == {}

    text = bf.report(setup, parted)
    assert "finetune-2" in text and (parted / "fidelity.png").is_file()
    assert f"autocast {autocast.pop()};" in text  # the recipe line says the precision the fine-tunes ran in
    assert "| cell | proxy | policies | Kendall tau |" in (parted / "fidelity.md").read_text()  # Markdown, to quote


def test_fidelity_statistics_are_scipys_and_regret_is_the_best_minus_the_pick():
    from scipy.stats import kendalltau, spearmanr

    rng = np.random.default_rng(0)
    y = rng.uniform(0.8, 0.9, 12)
    x = y + rng.normal(0, 0.02, 12)
    rows = [bf.PolicyResult(f"p{i}", 0.5, {"bn": float(a)}, {"bn": 1.0}, [float(b)], [float(b)])
            for i, (a, b) in enumerate(zip(x, y))]
    f = bf.fidelity(rows, "bn")
    assert f["tau"] == pytest.approx(kendalltau(x, y).statistic)
    assert f["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert f["tau_ci"][0] <= f["tau"] <= f["tau_ci"][1]
    assert f["regret"] == pytest.approx(y.max() - y[np.argmax(x)])
    assert bf.fidelity(rows[:2], "bn") is None  # too few policies to rank


def test_claim_intervals_come_from_the_pooled_seed_noise():
    rows = [bf.PolicyResult("cacp", 0.5, holdout=[0.90, 0.92], test=[0.91, 0.93]),
            bf.PolicyResult("uniform-l1", 0.5, holdout=[0.88, 0.88], test=[0.89, 0.89]),
            bf.PolicyResult("global-l1", 0.5, holdout=[0.87], test=[0.88])]
    sd, dof = bf.seed_noise(rows)
    assert dof == 2 and sd == pytest.approx(np.sqrt((0.01 ** 2 * 2) / 2))
    holdout = {(a, r): (d, h) for m, a, r, _, _, d, h, *_ in bf.claim(rows, ["cacp"]) if m == "holdout"}
    diff, half = holdout[("cacp", "uniform-l1")]
    t2 = 4.302653  # Student's t, 97.5 % quantile, 2 degrees of freedom: two policies fine-tuned twice
    assert diff == pytest.approx(0.03) and half == pytest.approx(t2 * sd * np.sqrt(1 / 2 + 1 / 2))
    assert holdout[("cacp", "global-l1")][1] == pytest.approx(t2 * sd * np.sqrt(1 / 2 + 1))


def _rows(bn_noise: float, proxy_noise: float, n: int = 16) -> list:
    """Policies whose fine-tuned accuracy is ``y``; bn and the proxy see it through noise of their own."""
    rng = np.random.default_rng(1)
    y = rng.uniform(0.8, 0.9, n)
    bn, good = y + rng.normal(0, bn_noise, n), y + rng.normal(0, proxy_noise, n)
    return [bf.PolicyResult(f"p{i}", 0.5, {"bn": float(a), "good": float(g)}, {"bn": 1.0, "good": 3.0}, [float(t)],
                            [float(t)]) for i, (a, g, t) in enumerate(zip(bn, good, y))]


def test_versus_bn_is_the_paired_gain_and_decides_the_default_only_on_a_clear_win():
    from scipy.stats import kendalltau

    rows = _rows(bn_noise=0.05, proxy_noise=0.002)
    v = bf.versus(rows, "good")
    y = np.array([r.holdout[0] for r in rows])
    x, b = (np.array([r.proxies[p] for r in rows]) for p in ("good", "bn"))
    assert v["tau_gain"] == pytest.approx(kendalltau(x, y).statistic - kendalltau(b, y).statistic)
    assert 0 < v["tau_gain_ci"][0] <= v["tau_gain"] <= v["tau_gain_ci"][1]
    assert v["regret_gain"] == pytest.approx((y.max() - y[np.argmax(b)]) - (y.max() - y[np.argmax(x)]))
    assert v["cost"] == pytest.approx(3.0) and bf.versus(rows[:2], "good") is None

    clear = {"good": {"a": v, "b": v}}
    assert bf.decide(clear, complete=True).startswith("Default proxy: good: it ranks the policies better than bn")
    assert "provisional" in bf.decide(clear, complete=False)
    assert "keep bn" in bf.decide({"good": {"a": v, "b": None}}, complete=True)  # a cell not measured: no verdict
    same = bf.versus(_rows(bn_noise=0.01, proxy_noise=0.01), "good")  # no clear win: the interval spans 0
    assert same["tau_gain_ci"][0] < 0 < same["tau_gain_ci"][1]
    assert "keep bn" in bf.decide({"good": {"a": v, "b": same}}, complete=True)
    no_regret = {**v, "regret_gain": 0.0}  # ranks better, but its pick is no better: not a clear win
    assert "keep bn" in bf.decide({"good": {"a": no_regret}}, complete=True)
