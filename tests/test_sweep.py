"""`autoprune sweep` on a local 2-CPU Ray: 4 cells, 2 at a time, one killed after its search and retried."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from model_zoo import SEBasicNet

from autoprune.errors import AutopruneError
from autoprune.tune import RayOptions

VICTIM = "random-t0.5"


def killed_once(config: dict) -> None:
    """The sweep trainable, except that the victim cell SIGKILLs its worker once, right after its search."""
    from autoprune.sweep import _policy, sweep_trial

    trial = config["trial"]
    marker = Path(trial["run_dir"]).parent / "killed"
    if trial["name"] == VICTIM and not marker.exists():
        _policy(trial, Path(trial["run_dir"]))
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    sweep_trial(config)


@pytest.mark.slow
def test_sweep_cells_search_then_finetune_and_a_killed_cell_is_retried(tiny, tmp_path, local_ray):
    from autoprune.sweep import SweepConfig, sweep

    config = SweepConfig(arch="resnet20", data_dir=str(tiny / "data"), targets=(0.5, 0.7), agents=("uniform", "random"),
                         checkpoint=str(tiny / "r20.th"), episodes=2, finetune_epochs=2, preset="cpu",
                         search={"holdout": 20, "reward_samples": 10, "recal_batches": 1, "recal_batch_size": 10,
                                 "device": "cpu"},
                         train={"holdout": 20, "device": "cpu", "eval_batch_size": 50})
    options = RayOptions(cpus_per_trial=1, max_failures=1, max_concurrent=2, verbose=0)
    outcomes = sweep(config, tmp_path / "sweep", options, trainable=killed_once)

    out = tmp_path / "sweep"
    assert [o.name for o in outcomes] == ["uniform-t0.5", "uniform-t0.7", "random-t0.5", "random-t0.7"]
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert (out / "killed").exists()
    assert "resumed" not in (out / VICTIM / "search" / "log.txt").read_text()  # the finished search was kept
    assert len((out / VICTIM / "search" / "episodes.csv").read_text().splitlines()) == 3
    for o in outcomes:
        assert o.metrics["macs_fraction"] <= o.metrics["target"] + 1e-9 and 0 <= o.metrics["test_top1"] <= 1
        rows = list(csv.DictReader((out / o.name / "finetune" / "metrics.csv").read_text().splitlines()))
        assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    results = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [(r["agent"], float(r["target"])) for r in results] == [(o.metrics["agent"], o.metrics["target"])
                                                                   for o in outcomes]
    assert (out / "sweep.png").stat().st_size > 1000
    with pytest.raises(AutopruneError, match="already holds a run"):
        sweep(config, out, options)


def test_sweep_refuses_bad_input(tiny):
    from autoprune.sweep import SweepConfig

    with pytest.raises(AutopruneError, match="Did you mean 'tpe'"):
        SweepConfig(arch="resnet20", data_dir=str(tiny), targets=(0.5,), agents=("tpee",))
    with pytest.raises(AutopruneError, match="--finetune-epochs must be at least 1"):
        SweepConfig(arch="resnet20", data_dir=str(tiny), targets=(0.5,), agents=("uniform",), finetune_epochs=0)
    with pytest.raises(AutopruneError, match=r"--reward-samples must be in \(0, 20\)"):  # before Ray, not per trial
        SweepConfig(arch="resnet20", data_dir=str(tiny), targets=(0.5,), agents=("uniform",), search={"holdout": 20})


@pytest.mark.slow
def test_sweep_of_a_users_model_from_the_cli(tiny, tmp_path, local_ray, capsys):
    """`autoprune sweep --model file.py:factory`: each cell searches and fine-tunes the user's model, whose spec
    its policy records."""
    from autoprune.cli import main
    from autoprune.policy import Policy

    factory = f"{Path(__file__).with_name('model_zoo.py')}:SEBasicNet"
    torch.manual_seed(0)
    torch.save(SEBasicNet().state_dict(), tmp_path / "se.pt")
    code = main(["sweep", "--model", factory, "--input-size", "3,32,32", "--checkpoint", str(tmp_path / "se.pt"),
                 "--targets", "0.5", "--agents", "uniform", "random", "--episodes", "2", "--finetune-epochs", "1",
                 "--data-dir", str(tiny / "data"), "--holdout", "20", "--reward-samples", "10", "--recal-batches",
                 "1", "--device", "cpu", "--cpus-per-trial", "1", "--out", str(tmp_path / "sweep"), "--no-report"])
    assert code == 0, capsys.readouterr()
    for cell in ("uniform-t0.5", "random-t0.5"):
        policy = Policy.load(tmp_path / "sweep" / cell / "search" / "policy-0.5.json")
        assert policy.model_spec.source == factory and policy.macs_fraction <= 0.5 + 1e-9
        assert (tmp_path / "sweep" / cell / "finetune" / "model.pt").is_file()
