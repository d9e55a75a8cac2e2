"""Ray Tune: fine-tunes as trials on a local 2-CPU Ray, a killed trial retried from its checkpoint, clear errors."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import time

import pytest
import torch
from _synthetic import make_colours

from autoprune import load_pruned
from autoprune.errors import AutopruneError
from autoprune.tune import ExperimentDir, RayOptions, check_address, check_resources, ray_session, run_experiment

VICTIM = "victim"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_fails_fast_and_names_it():
    port = _free_port()  # closed again: nothing listens there
    start = time.perf_counter()
    with pytest.raises(AutopruneError, match=f"Cannot reach the Ray cluster at ray://127.0.0.1:{port}"):
        check_address(f"ray://127.0.0.1:{port}", timeout=2)
    assert time.perf_counter() - start < 3
    with pytest.raises(AutopruneError, match="not of the form"):
        check_address("my-head-node")


def test_more_gpus_per_trial_than_any_node_has_is_refused():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 16.0}]
    check_resources(nodes, cpus=16, gpus=2)
    with pytest.raises(AutopruneError, match="--gpus-per-trial 3 asks for more GPUs than the cluster has on any "
                                             r"node \(2 at most\)"):
        check_resources(nodes, cpus=1, gpus=3)
    with pytest.raises(AutopruneError, match="use --gpus-per-trial 0"):
        check_resources([{"CPU": 2.0}], cpus=1, gpus=1)
    with pytest.raises(AutopruneError, match="--cpus-per-trial 32"):
        check_resources(nodes, cpus=32, gpus=0)
    with pytest.raises(AutopruneError, match="--max-failures must be at least 0"):
        RayOptions(max_failures=-1)


def test_cli_checks_policies_and_the_address_before_any_trial(tmp_path, capsys):
    from autoprune.cli import main
    from autoprune.models import create

    root = make_colours(tmp_path)
    torch.manual_seed(1)
    torch.save(create("resnet20", num_classes=4).state_dict(), tmp_path / "other.th")
    common = ["finetune", "--policy", root / "u50.json", root / "g70.json", "--data-dir", root / "data", "--ray",
              "--out", tmp_path / "exp"]
    code = main([str(a) for a in [*common, "--checkpoint", tmp_path / "other.th"]])
    err = capsys.readouterr().err
    assert code == 2 and "u50.json: Policy was made on checkpoint" in err
    port = _free_port()
    code = main([str(a) for a in [*common, "--checkpoint", root / "base.th", "--ray-address", f"ray://127.0.0.1:{port}"]])
    err = capsys.readouterr().err
    assert code == 2 and f"Cannot reach the Ray cluster at ray://127.0.0.1:{port}" in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists()


def test_a_ray_the_session_started_is_shut_down_however_the_block_ends(monkeypatch, tmp_path):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), ray_session(RayOptions()) as options:
            assert options.gpus_per_trial == 0 and calls == ["init"]
            raise error
        assert calls == ["init", "shutdown"]
        calls.clear()

    def plan(options: RayOptions) -> dict:
        raise AutopruneError("a trial could not be set up")

    with pytest.raises(AutopruneError, match="could not be set up"):
        run_experiment(ExperimentDir.claim(tmp_path / "exp", "finetune-ray"), killed_once, RayOptions(), key="trials", plan=plan,
                       epochs=lambda trial: 1)
    assert calls == ["init", "shutdown"] and not (tmp_path / "exp").exists()


def test_an_existing_ray_connection_is_left_alone(local_ray):
    import ray

    with pytest.raises(RuntimeError), ray_session(RayOptions(gpus_per_trial=0)):
        raise RuntimeError
    assert ray.is_initialized()


def killed_once(config: dict) -> None:
    """The fine-tune trainable, except that the "victim" trial SIGKILLs its own worker after epoch 1, once."""
    from pathlib import Path

    from autoprune.training import finetune_trial

    trial = config["trial"]
    marker = Path(trial["run_dir"]).parent / "killed"

    def after_epoch(epoch: int) -> None:
        if trial["name"] == VICTIM and epoch == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    finetune_trial(config, after_epoch=after_epoch)


@pytest.mark.slow
def test_four_trials_two_at_a_time_one_killed_and_retried(local_ray, tmp_path):
    from autoprune.training import finetune_on_ray, resume_experiment

    root = make_colours(tmp_path)
    shutil.copy(root / "u50.json", root / f"{VICTIM}.json")  # same config as u50: must end with its weights
    (root / "more").mkdir()
    shutil.copy(root / "g70.json", root / "more" / "g70.json")  # a repeated stem: named by its folder
    policies = [root / "u50.json", root / "g70.json", root / f"{VICTIM}.json", root / "more" / "g70.json"]
    out = tmp_path / "exp"
    # ASHA is on, but its only rung is the last epoch: the scheduler runs, every trial finishes
    options = RayOptions(cpus_per_trial=1, max_failures=1, verbose=0, asha=True, asha_grace=3)
    settings = {"checkpoint": root / "base.th", "holdout": 40, "device": "cpu", "eval_batch_size": 100,
                "recipe": {"epochs": 3, "batch_size": 32, "lr": 0.05}}
    outcomes = finetune_on_ray(policies, root / "data", out, options, preset="cpu", trainable=killed_once, **settings)

    names = [o.name for o in outcomes]
    assert names == ["u50", f"{root.name}-g70", VICTIM, "more-g70"]
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert (out / "killed").exists()
    log = (out / VICTIM / "log.txt").read_text()
    assert "resumed after epoch 1" in log and [log.count(f"epoch {e}:") for e in (1, 2, 3)] == [1, 1, 1], log
    assert "resumed" not in (out / "u50" / "log.txt").read_text()
    for o in outcomes:
        assert o.metrics["epoch"] == 3 and 0 <= o.metrics["test_top1"] <= 1
        rows = list(csv.DictReader((out / o.name / "metrics.csv").read_text().splitlines()))
        assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]  # the retry rewrote no epoch twice
        load_pruned(out / o.name / "model.pt")
    victim, twin = (torch.load(out / n / "model.pt", weights_only=True)["state_dict"] for n in (VICTIM, "u50"))
    assert all(torch.equal(victim[k], twin[k]) for k in twin)  # the retry continued exactly
    results = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [r["trial"] for r in results] == names and {r["status"] for r in results} == {"done"}

    with pytest.raises(AutopruneError, match="already holds a run"):
        finetune_on_ray(policies, root / "data", out, options, preset="cpu", **settings)
    again = resume_experiment(out, trainable=killed_once)  # finished trials are not run again
    assert [(o.name, o.status, o.metrics["test_top1"]) for o in again] == \
        [(o.name, o.status, o.metrics["test_top1"]) for o in outcomes]
    assert all((out / n / "log.txt").read_text().count("started") == 1 for n in names)


def test_every_node_is_asked_for_its_autoprune_and_the_paths_before_any_trial(local_ray, tmp_path):
    from autoprune.tune import check_nodes, node_id, require_paths

    check_nodes([tmp_path])  # this machine's node: the same autoprune, the same files
    missing = tmp_path / "not-here"
    with pytest.raises(AutopruneError, match=f"Ray node {node_id()} .* cannot see {missing}. Every node needs the "
                                             "data, the checkpoints and the output folder at the same paths"):
        check_nodes([tmp_path, missing])
    with pytest.raises(AutopruneError, match=f"Ray node {node_id()} .* cannot see {missing}: every node needs"):
        require_paths([tmp_path, missing])  # what a trial checks where it lands
    with pytest.raises(AutopruneError, match="--max-concurrent must be at least 1, but got 0"):
        RayOptions(max_concurrent=0)
