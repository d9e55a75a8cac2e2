"""Optuna agents on the tiny model: budgets, warm start, resume, NSGA-II front, parallel runs, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import time

import numpy as np
import pytest
from conftest import episode_rows, search_config

from autoprune.errors import AutopruneError, UnknownNameError
from autoprune.search import _tracker, load_preset, search


@pytest.mark.parametrize("agent", ["tpe", "cmaes", "random", "qmc"])
def test_sampler_respects_the_budget_and_starts_uniform(tiny, tmp_path, agent):
    from autoprune.checkpoints import load_model
    from autoprune.pruning import space_for, uniform_counts

    result = search(search_config(tiny, agent, episodes=5), tmp_path / agent)
    rows = episode_rows(tmp_path / agent)
    assert len(rows) == 5 and result.evaluations <= 5
    assert all(0.45 <= float(r["macs_fraction"]) <= 0.5 for r in rows)
    model, _ = load_model("resnet20", str(tiny / "r20.th"))
    space = space_for(model, "resnet20")
    uniform = uniform_counts(space, 0.5) / np.array([g.channels for g in space.searchable])
    first = [float(x) for x in rows[0]["ratios"].split()]
    assert np.allclose(first[:-1], uniform[:-1], atol=1e-3)  # the env fills the budget with the last group
    assert first[-1] >= uniform[-1] - 1e-3
    assert result.policies[0.5].macs_fraction <= 0.5 and (tmp_path / agent / "study.db").is_file()
    saved = json.loads((tmp_path / agent / "result.json").read_text())  # what scripts read back
    assert saved["evaluations"] == result.evaluations and saved["seconds"]["search"] == result.seconds["search"]
    assert saved["uniform"]["0.5"] == dict(zip(("holdout", "test"), result.uniform[0.5], strict=True))


def interrupt_at_episode(monkeypatch, n):
    """Ctrl-C while episode ``n`` is recorded: that trial still finishes, then the run stops."""
    original = _tracker.Tracker.episode

    def episode(self, info, reward):
        if self.episodes + 1 == n:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, info, reward)

    monkeypatch.setattr(_tracker.Tracker, "episode", episode)


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["tpe", "random", "qmc", "cmaes"])
def test_resume_ends_with_the_trials_of_an_uninterrupted_study(tiny, tmp_path, monkeypatch, agent):
    (tmp_path / f"{agent}.yaml").write_text(f"algorithm: {agent}\nwarmup_episodes: 2\n")
    preset = str(tmp_path / f"{agent}.yaml")
    search(search_config(tiny, preset, episodes=7), tmp_path / "straight")
    with monkeypatch.context() as m:
        interrupt_at_episode(m, 4)
        with pytest.raises(KeyboardInterrupt):
            search(search_config(tiny, preset, episodes=7), tmp_path / "resumed")
    assert len(episode_rows(tmp_path / "resumed")) == 4
    search(search_config(tiny, preset, episodes=7), tmp_path / "resumed", resume=True)
    assert episode_rows(tmp_path / "straight") == episode_rows(tmp_path / "resumed")


@pytest.mark.slow
def test_nsga2_exports_a_non_dominated_front(tiny, tmp_path):
    search(search_config(tiny, "nsga2", episodes=8), tmp_path / "moo")
    with open(tmp_path / "moo" / "front.csv", newline="") as f:
        front = [(float(r["accuracy"]), float(r["macs_fraction"])) for r in csv.DictReader(f)]
    trials = [(float(r["accuracy"]), float(r["macs_fraction"])) for r in episode_rows(tmp_path / "moo")]
    assert front and len(list((tmp_path / "moo" / "front").glob("policy-*.json"))) == len(front)
    for acc, macs in front:
        assert not any(a >= acc and m <= macs and (a, m) != (acc, macs) for a, m in trials)
    assert 0.3 - 0.05 <= min(m for _, m in trials) and max(m for _, m in trials) <= 0.7
    assert (tmp_path / "moo" / "front.png").stat().st_size > 1000


@pytest.mark.slow
def test_multi_fidelity_prunes_and_scores_as_a_full_evaluation(tiny, tmp_path):
    (tmp_path / "mf.yaml").write_text("algorithm: random\nmulti_fidelity: true\nwarmup_episodes: 1\n")
    search(search_config(tiny, str(tmp_path / "mf.yaml"), episodes=8), tmp_path / "mf")
    db = sqlite3.connect(tmp_path / "mf" / "study.db")
    states = [s for (s,) in db.execute("select state from trials")]
    assert len(states) == 8 and "COMPLETE" in states
    assert len(episode_rows(tmp_path / "mf")) == states.count("COMPLETE")


def test_env_screen_sees_a_quarter_and_the_total_is_unchanged(tiny):
    from autoprune.search import setup

    _, env, _, space = setup(search_config(tiny, "random"))
    counts = np.array([g.channels for g in space.searchable])
    seen = []
    with_screen, _ = env.accuracy(counts, screen=seen.append)
    env._cache.clear()
    assert seen and env.accuracy(counts)[0] == with_screen


@pytest.mark.slow
def test_two_workers_finish_the_study(tiny, tmp_path):
    search(search_config(tiny, "random", episodes=6, workers=2), tmp_path / "par")
    assert len(episode_rows(tmp_path / "par")) >= 6 and (tmp_path / "par" / "policy.json").is_file()


@pytest.mark.slow
def test_ray_run_leaves_the_artefacts_of_a_serial_run(tiny, tmp_path):
    import ray

    search(search_config(tiny, "random", episodes=4), tmp_path / "serial")
    try:
        search(search_config(tiny, "random", episodes=4, ray=True, workers=2), tmp_path / "ray")
    finally:
        ray.shutdown()
    names = {p.name for p in (tmp_path / "serial").iterdir()}
    assert names <= {p.name for p in (tmp_path / "ray").iterdir()}
    assert len(episode_rows(tmp_path / "ray")) == 4
    assert [r.keys() for r in episode_rows(tmp_path / "ray")] == [r.keys() for r in episode_rows(tmp_path / "serial")]


def test_bad_input_gets_clear_errors(tiny, tmp_path):
    (tmp_path / "bad.yaml").write_text("algorithm: tpee\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'tpe'"):
        load_preset(tmp_path / "bad.yaml")
    with pytest.raises(AutopruneError, match="--workers must be at least 1"):
        search_config(tiny, "tpe", workers=0)
    start = time.perf_counter()
    with pytest.raises(AutopruneError, match=r"cannot be reached .*127\.0\.0\.1:9"):
        search(search_config(tiny, "tpe", storage="postgresql://u:p@127.0.0.1:9/db"), tmp_path / "pg")
    assert time.perf_counter() - start < 30
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    search(search_config(tiny, "random", episodes=2, storage=shared, study_name="s"), tmp_path / "a")
    with pytest.raises(AutopruneError, match="was made for space 'inner', not 'full'"):
        search(search_config(tiny, "random", episodes=2, storage=shared, study_name="s", space="full"), tmp_path / "b")
    with pytest.raises(AutopruneError, match="RL agent"):
        search(search_config(tiny, "ddpg", workers=2), tmp_path / "c")


def test_command_line_optuna_errors(tiny, tmp_path, capsys):
    from autoprune.cli import main

    common = ["--arch", "resnet20", "--data-dir", str(tiny / "data"), "--checkpoint", str(tiny / "r20.th"),
              "--device", "cpu", "--holdout", "20", "--reward-samples", "10", "--recal-batches", "1"]
    assert main(["search", "--agent", "tpee", "--out", str(tmp_path / "a"), *common]) == 2
    assert "Did you mean 'tpe'" in capsys.readouterr().err
    assert main(["search", "--agent", "tpe", "--workers", "0", "--out", str(tmp_path / "b"), *common]) == 2
    assert "--workers must be at least 1, but got 0" in capsys.readouterr().err
    assert main(["search", "--agent", "tpe", "--storage", "mysql://u:p@127.0.0.1:9/db", "--out", str(tmp_path / "c"),
                 *common]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_a_kill_during_the_warm_start_trial_resumes_as_an_uninterrupted_study(tiny, tmp_path):
    """kill -9 while the enqueued uniform policy is played: --resume plays it again first, so nothing is lost."""
    import subprocess
    import sys
    from pathlib import Path

    search(search_config(tiny, "tpe", episodes=4), tmp_path / "straight")
    tests = Path(__file__).resolve().parent
    script = (f"import os, signal, sys; sys.path.insert(0, {str(tests)!r})\n"
              "from pathlib import Path\nfrom conftest import search_config\n"
              "import autoprune.search._optuna as optuna_side\n"
              "optuna_side.play = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "from autoprune.search import search\n"
              f"search(search_config(Path({str(tiny)!r}), 'tpe', episodes=4), Path({str(tmp_path / 'resumed')!r}))\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=tests.parent, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert not episode_rows(tmp_path / "resumed")
    search(search_config(tiny, "tpe", episodes=4), tmp_path / "resumed", resume=True)
    assert episode_rows(tmp_path / "straight") == episode_rows(tmp_path / "resumed")
