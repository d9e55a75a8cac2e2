"""Training: fine-tuning improves a pruned model, resume is exact, Scratch-E/B budgets, KD, presets, clear errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from _synthetic import CLASSES, make_colours

from autoprune import load_model, load_pruned
from autoprune._device import autocast_dtype
from autoprune.cli import main
from autoprune.data import DeviceLoader
from autoprune.errors import AutopruneError, PolicyError
from autoprune.evaluate import Evaluator
from autoprune.training import (
    Distillation,
    Recipe,
    Trainer,
    kd_loss,
    load_recipe,
    make_config,
    resume_config,
    scratch_epochs,
    train,
)


@pytest.fixture(scope="module")
def quad(tmp_path_factory):
    return make_colours(tmp_path_factory.mktemp("quad"))


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def config(quad, mode="finetune", policy="u50", **recipe):
    return make_config(mode, quad / "data", policy=quad / f"{policy}.json" if policy else None, arch="resnet20",
                       checkpoint=quad / "base.th", preset="cpu", device="cpu", holdout=40, eval_batch_size=100,
                       recipe={"batch_size": 16, "lr": 0.02, **recipe})


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("epochs,scratch,base,pruned,expected", [
    (160, "E", 100, 50, 160),  # Scratch-E: the base model's epochs whatever the MACs
    (160, "B", 100, 50, 320),  # half the MACs: twice the epochs
    (160, "B", 100, 80, 200),  # 1.25x
    (160, "B", 100, 20, 320),  # 5x cheaper, but capped at 2x
    (3, "B", 100, 70, 4),  # 4.29 rounds to 4
    (1, "B", 100, 99, 1),
])
def test_scratch_epochs(epochs, scratch, base, pruned, expected):
    assert scratch_epochs(epochs, scratch, base, pruned) == expected


def test_scratch_b_config_scales_the_preset_epochs(quad):
    policy = json.loads((quad / "u50.json").read_text())
    c = make_config("scratch", quad / "data", policy=quad / "u50.json", scratch="B", preset="cifar", device="cpu")
    assert c.base_epochs == 160 and c.recipe.epochs == round(160 * min(policy["base_macs"] / policy["macs"], 2))
    assert c.recipe.schedule == "step" and c.recipe.lr == 0.1
    assert make_config("scratch", quad / "data", policy=quad / "u50.json", preset="cifar").scratch == "E"


def test_presets_say_what_they_train():
    name, gpu = load_recipe("auto", "finetune", device_type="cuda")
    assert name == "cifar" and (gpu.epochs, gpu.lr, gpu.schedule, gpu.batch_size) == (100, 0.01, "cosine", 128)
    assert gpu.nesterov and gpu.momentum == 0.9 and gpu.weight_decay == 1e-4
    name, cpu = load_recipe("auto", "finetune", device_type="cpu")
    assert name == "cpu" and cpu.epochs == 2 and cpu.lr == 0.01
    assert load_recipe("cifar", "scratch", epochs=7, lr=None)[1].epochs == 7  # None: keep the preset's
    with pytest.raises(AutopruneError, match="Did you mean 'cpu'"):
        load_recipe("cpuu", "finetune")
    with pytest.raises(AutopruneError, match="lr must be positive, but got lr=-0.1"):
        load_recipe("cpu", "finetune", lr=-0.1)
    with pytest.raises(AutopruneError, match="label_smoothing must lie in"):
        load_recipe("cpu", "finetune", label_smoothing=1.0)


def test_a_yaml_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"epochs": 5, "lr": 0.02, "schedule": "step", "milestones": [0.6]}}))
    _, recipe = load_recipe(path, "finetune")
    assert (recipe.epochs, recipe.lr, recipe.milestones) == (5, 0.02, (0.6,))
    with pytest.raises(AutopruneError, match="no 'scratch' recipe"):
        load_recipe(path, "scratch")
    path.write_text(yaml.safe_dump({"finetune": {"epochs": 5, "lr": 0.02, "warmup": 3}}))
    with pytest.raises(AutopruneError, match=r"unknown settings \['warmup'\]"):
        load_recipe(path, "finetune")


def test_kd_loss():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = F.cross_entropy(student, labels)
    assert torch.allclose(kd_loss(student, teacher, labels, temperature=4, weight=0), ce)
    assert torch.allclose(kd_loss(student, student, labels, temperature=4, weight=0.9), 0.1 * ce)  # KL(p||p) = 0
    soft = kd_loss(student, teacher, labels, temperature=2, weight=1)
    p_t = F.softmax(teacher / 2, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(student / 2, 1))).sum(1).mean() * 4
    assert torch.allclose(soft, expected)
    with pytest.raises(AutopruneError, match="KD weight must lie in"):
        Distillation(weight=1.5)


@pytest.mark.slow
def test_finetune_improves_accuracy_and_tests_once(quad, tmp_path, monkeypatch):
    calls = []
    original = Evaluator.test
    monkeypatch.setattr(Evaluator, "test", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    result = train(config(quad, epochs=5), tmp_path / "run", progress=False)
    m = result.metrics
    assert len(calls) == 1  # the test split: once, at the end
    assert m["start_holdout_top1"] < 0.4 and m["holdout_top1"] >= m["start_holdout_top1"] + 0.4, m
    assert m["test_top1"] >= 0.6, m
    assert [r["epoch"] for r in rows(tmp_path / "run")] == [str(e) for e in range(6)]
    _, policy = load_pruned(result.model_path)
    assert policy.accuracy == {"holdout": m["holdout_top1"], "test": m["test_top1"]}
    assert policy.provenance["trained"]["epochs"] == 5
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_top1"] == m["test_top1"]
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 5 and {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(state)


@pytest.mark.slow
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(quad, tmp_path):
    kw = {"epochs": 3, "schedule": "step", "milestones": [0.5], "label_smoothing": 0.1}
    c = config(quad, **kw)
    c.kd = Distillation(temperature=3, weight=0.5)  # teacher: the unpruned base model
    straight = train(c, tmp_path / "straight", progress=False)

    def interrupt(end):
        if end.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "cut", progress=False, on_epoch_end=interrupt)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert "interrupted after epoch 1" in (tmp_path / "cut" / "log.txt").read_text()
    resumed = train(resume_config(tmp_path / "cut"), tmp_path / "cut", resume=True, progress=False)
    log = (tmp_path / "cut" / "log.txt").read_text()
    assert "resumed after epoch 1" in log and [log.count(f"epoch {e}:") for e in (1, 2, 3)] == [1, 1, 1]

    a = torch.load(straight.model_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"images_per_s", "seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows(tmp_path / "straight")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows(tmp_path / "cut")]
    again = train(resume_config(tmp_path / "cut"), tmp_path / "cut", resume=True, progress=False)
    assert again.metrics == resumed.metrics  # a finished run is not trained again


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_cli_train_base_and_scratch_b(quad, tmp_path, capsys):
    common = ["--data-dir", quad / "data", "--holdout", 40, "--device", "cpu", "--preset", "cpu", "--batch-size", 32,
              "--no-progress"]
    code, out, err = run(capsys, "train", "--arch", "resnet20", "--epochs", 1, "--out", tmp_path / "base", *common)
    assert code == 0, err
    assert "use it: --arch resnet20 --checkpoint" in out
    model, sha = load_model("resnet20", tmp_path / "base" / "model.pt", num_classes=CLASSES)
    assert sha is not None and model.linear.out_features == CLASSES

    code, out, err = run(capsys, "train", "--policy", quad / "g70.json", "--scratch", "B", "--epochs", 1,
                         "--out", tmp_path / "scratch", *common)
    assert code == 0, err
    policy = json.loads((quad / "g70.json").read_text())
    saved = yaml.safe_load((tmp_path / "scratch" / "config.yaml").read_text())
    assert saved["recipe"]["epochs"] == round(min(policy["base_macs"] / policy["macs"], 2)) == 1
    assert saved["base_epochs"] == 1 and saved["scratch"] == "B"
    load_pruned(tmp_path / "scratch" / "model.pt")

    code, out, err = run(capsys, "finetune", "--policy", quad / "u50.json", "--checkpoint", quad / "base.th",
                         "--epochs", 1, "--out", tmp_path / "ft", *common)
    assert code == 0 and "test %" in out, err
    code, _, err = run(capsys, "finetune", "--policy", quad / "u50.json", "--checkpoint", quad / "base.th",
                       "--epochs", 1, "--out", tmp_path / "ft", *common)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    code, _, err = run(capsys, "finetune", "--policy", quad / "u50.json", "--checkpoint", quad / "base.th",
                       "--epochs", 1, "--out", tmp_path / "ft", "--overwrite", *common)
    assert code == 0, err


def test_a_policy_for_another_checkpoint_is_refused(quad, tmp_path, capsys):
    from autoprune.models import create

    torch.manual_seed(1)
    torch.save(create("resnet20", num_classes=CLASSES).state_dict(), tmp_path / "other.th")
    with pytest.raises(PolicyError, match="Policy was made on checkpoint"):
        train(make_config("finetune", quad / "data", policy=quad / "u50.json", checkpoint=tmp_path / "other.th",
                          preset="cpu", device="cpu", holdout=40), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    code, _, err = run(capsys, "finetune", "--policy", quad / "u50.json", "--checkpoint", tmp_path / "other.th",
                       "--data-dir", quad / "data", "--holdout", 40, "--device", "cpu", "--out", tmp_path / "run2")
    assert code == 2 and "Policy was made on checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["finetune", "scratch"])
def test_a_kernel_sparse_policy_is_refused_with_what_to_do(quad, tmp_path, mode):
    from autoprune.policy import Policy

    policy = Policy.load(quad / "u50.json")  # as DExp states it: fewer MACs than its channels', which it records
    policy.provenance.update(method="dexp", channel_macs=policy.macs)
    policy.macs -= 1000
    policy.save(tmp_path / "sparse.json")
    c = make_config(mode, quad / "data", policy=tmp_path / "sparse.json", checkpoint=quad / "base.th", preset="cpu",
                    device="cpu", holdout=40)
    with pytest.raises(AutopruneError, match=r"zeroing kernels \(dexp\).*grow back.*raise `epochs` in its preset"):
        train(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("argv,message", [
    (["finetune", "--policy", "{q}/u50.json", "{q}/g70.json", "--data-dir", "{q}/data"], "pass --ray"),
    (["finetune", "--policy", "{q}/u50.json", "--data-dir", "{q}/data", "--asha"], "--asha only apply with --ray"),
    (["finetune", "--data-dir", "{q}/data"], "--policy is required"),
    (["finetune", "--policy", "{q}/u50.json"], "--data-dir is required"),
    (["train", "--arch", "resnet20", "--scratch", "B", "--data-dir", "{q}/data"], "--scratch B needs --policy"),
    (["train", "--arch", "resnet32", "--policy", "{q}/u50.json", "--data-dir", "{q}/data"], "contradicts the policy"),
    (["train", "--arch", "resnet20", "--kd", "--data-dir", "{q}/data"], "needs a teacher"),
    (["finetune", "--policy", "{q}/u50.json", "--data-dir", "{q}/data", "--lr", "0"], "lr must be positive"),
    (["finetune", "--resume", "{q}"], "not a run"),
])
def test_bad_input_gets_a_message(quad, capsys, argv, message):
    code, _, err = run(capsys, *[a.format(q=quad) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_autocasts_to_bfloat16_only_on_a_cpu_that_has_it(monkeypatch, native):
    """bfloat16 on a CPU without it would be emulated, slower than float32: "auto" must not pick it there."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, "float32") is None and autocast_dtype(torch.device("cuda")) is torch.float16
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, CLASSES))
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(8) % CLASSES, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3,
                          device=cpu, shuffle=True)
    seen = []
    model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    for precision, expected in (("auto", torch.bfloat16 if native else torch.float32), ("float32", torch.float32)):
        seen.clear()
        trainer = Trainer(model, Recipe(epochs=1, lr=0.01, batch_size=4, precision=precision), loader, cpu)
        stats = trainer.train_epoch(progress=False)
        assert set(seen) == {expected} and math.isfinite(stats.loss)
        assert {p.dtype for p in model.parameters()} == {torch.float32}  # the weights stay float32
    with pytest.raises(AutopruneError, match="Unknown precision 'float23'. Did you mean 'float32'"):
        Recipe(epochs=1, lr=0.01, precision="float23")


def test_a_run_written_before_the_precision_option_resumes_in_float32_on_a_cpu(quad, tmp_path):
    def interrupt(end):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(quad, epochs=2), tmp_path / "run", progress=False, on_epoch_end=interrupt)
    assert resume_config(tmp_path / "run").recipe.precision == "auto"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["recipe"]["precision"]  # as an older autoprune wrote it
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resume_config(tmp_path / "run").recipe.precision == "float32"


def test_split_seed_fixes_the_holdout_while_seed_varies_the_training(quad, tmp_path, monkeypatch):
    from autoprune.data import make_splits
    from autoprune.training import _run

    drawn = []
    monkeypatch.setattr(_run, "make_splits", lambda n, holdout, seed: drawn.append(seed) or make_splits(n, holdout=holdout,
                                                                                                         seed=seed))
    runs = {}
    for name, seed, split_seed in (("a", 0, None), ("b", 1, 0), ("c", 1, None)):
        c = config(quad, epochs=1)
        c.seed, c.split_seed = seed, split_seed
        runs[name] = train(c, tmp_path / name, progress=False).metrics
    assert drawn == [0, 0, 1]  # the holdout split: seed 0, then split_seed 0 although seed is 1, then seed 1
    assert runs["a"]["start_holdout_top1"] == runs["b"]["start_holdout_top1"]  # the same images judged alike
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["split_seed"] == 0  # --resume keeps it


def test_recipe_lr_schedule_reaches_zero(quad, tmp_path):
    result = train(config(quad, epochs=2, lr=0.04), tmp_path / "run", progress=False)
    lrs = [float(r["lr"]) for r in rows(tmp_path / "run")[1:]]
    assert math.isclose(lrs[0], 0.02, rel_tol=1e-5) and lrs[1] == 0  # cosine over 2 epochs, stepped per batch
    assert result.metrics["epoch"] == 2


def test_public_names_resolve_and_ray_is_imported_lazily():
    import subprocess
    import sys

    import autoprune.training
    import autoprune.tune

    for module in (autoprune.training, autoprune.tune):
        assert all(hasattr(module, name) for name in module.__all__)
    code = "import sys, autoprune.training, autoprune.tune, autoprune.cli; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
