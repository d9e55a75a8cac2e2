"""`autoprune search` end to end on a tiny model and synthetic images: artefacts, resume, errors."""

from __future__ import annotations

import json

import pytest
from conftest import episode_rows as rows
from conftest import search_config as config

from autoprune.errors import AutopruneError, UnknownNameError
from autoprune.pruning import uniform_counts
from autoprune.search import list_presets, load_preset, search
from autoprune.search import _run_dir



def test_the_final_pick_says_where_its_time_went_and_judges_the_uniform_answer_once(tiny, tmp_path):
    """result.json and the table's footer split the run's time; the uniform method's answer is its own
    reference (the same model judged alike), with the figures a separate re-judgement gives."""
    searched = search(config(tiny, "tpe", episodes=3, targets=[0.5]), tmp_path / "tpe")
    spent = json.loads((tmp_path / "tpe" / "result.json").read_text())["seconds"]["final_pick"]
    assert set(spent) == {"rejudge", "test", "uniform_reference", "latency"} and spent["latency"] == 0
    assert spent["rejudge"] > 0 and spent["test"] > 0 and spent["uniform_reference"] > 0
    assert "time: search" in searched.table and "% of the run" in searched.table
    answered = search(config(tiny, "uniform", targets=[0.5]), tmp_path / "uniform")
    assert answered.seconds["final_pick"]["uniform_reference"] == 0  # not judged a second time
    assert answered.uniform[0.5] == searched.uniform[0.5]  # what judging it again gives
    policy = answered.policies[0.5]
    assert answered.uniform[0.5] == (policy.accuracy["holdout"], policy.accuracy["test"])

@pytest.mark.parametrize("agent", ["ddpg", "td3", "sac", "ppo"])
def test_search_writes_a_complete_run(tiny, tmp_path, agent):
    overrides = {"ppo": {"episodes": 4}}.get(agent, {})
    result = search(config(tiny, agent, **overrides), tmp_path / "run")
    log = rows(tmp_path / "run")
    assert len(log) == overrides.get("episodes", 6)
    assert all(float(r["macs_fraction"]) <= 0.5 for r in log)
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert set(policy["accuracy"]) == {"reward", "select", "holdout", "test"}
    assert (tmp_path / "run" / "policy-0.5.json").is_file() and "uniform-L1" in result.table
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_the_picks_holdout_is_its_reward_and_select_parts_added_up(tiny, tmp_path):
    """The pick's whole-holdout accuracy is summed from the parts the search measured: the same as judging it afresh."""
    from autoprune.policy import Policy
    from autoprune.search import setup

    cfg = config(tiny, "ddpg")
    search(cfg, tmp_path / "run")
    policy = Policy.load(tmp_path / "run" / "policy.json")
    _, _, evaluator, space = setup(cfg)
    model = evaluator.ready(evaluator.prepare(space.apply(policy.channels)))
    assert policy.accuracy["holdout"] == evaluator.holdout(model).top1
    assert policy.accuracy["test"] == evaluator.test(model).top1
    # uniform-L1 too, though the final pick reuses the search's BN statistics and reward-part accuracy for it
    uniform = json.loads((tmp_path / "run" / "result.json").read_text())["uniform"]["0.5"]
    reference = evaluator.judge(space, space.select(uniform_counts(space, 0.5), space.scores("l1")))
    assert (uniform["holdout"], uniform["test"]) == (evaluator.holdout(reference).top1, evaluator.test(reference).top1)


def test_the_final_pick_recalibrates_nothing_the_search_recalibrated(tiny, tmp_path, monkeypatch):
    """Re-judging the top candidates and the uniform reference reuses the search's BN statistics (the normalized
    reward scored uniform-L1 already); a from-scratch judgement gives the same figures (test above)."""
    from autoprune import evaluate
    from autoprune.search import _pick

    calls = []
    monkeypatch.setattr(evaluate, "recalibrate_bn", lambda model, batches, f=evaluate.recalibrate_bn, **kw: (
        calls.append(1), f(model, batches, **kw))[1])
    judged = []
    original = _pick.pick
    monkeypatch.setattr("autoprune.search._search.pick", lambda *a, **k: (judged.append(len(calls)), original(*a, **k))[1])
    search(config(tiny, "cacp", episodes=3, targets=[0.5]), tmp_path / "run")
    assert judged and len(calls) == judged[0]  # no recalibration after the search


def interrupt_after_first_checkpoint(monkeypatch):
    original = _run_dir.SearchRunDir.save_checkpoint

    def save_then_interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_run_dir.SearchRunDir, "save_checkpoint", save_then_interrupt)


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["ddpg", "cacp", "td3"])
def test_resume_ends_as_an_uninterrupted_run(tiny, tmp_path, monkeypatch, agent):
    """Interrupted after the first checkpoint and resumed: the same episodes, actions and picks.

    Warm-up is shorter than the first chunk, so the resumed part is the learnt actor exploring.
    """
    source = load_preset(agent)
    text = (f"algorithm: {source.algorithm}\ntargets: {list(source.targets)}\nreward: {source.reward}\n"
            f"warmup_episodes: 2\ncheckpoint_every: 3\nhyperparameters: {json.dumps(source.hyperparameters)}\n")
    (tmp_path / f"{agent}.yaml").write_text(text)
    agent = str(tmp_path / f"{agent}.yaml")
    preset = dict(episodes=2) if "cacp" in agent else {}
    search(config(tiny, agent, **preset), tmp_path / "straight")
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            search(config(tiny, agent, **preset), tmp_path / "resumed")
    marker = tmp_path / "resumed" / "autoprune-run.json"
    created = "2031-04-02T08:00:00+00:00"  # as if the run had been created long before this resume
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "created": created}))
    search(config(tiny, agent, **preset), tmp_path / "resumed", resume=True)
    assert rows(tmp_path / "straight") == rows(tmp_path / "resumed")
    # the report's wall time counts from the run's creation, not from the resumed process's start
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["started"] == created
    for name in sorted(p.name for p in (tmp_path / "straight").glob("policy*.json")):
        a = json.loads((tmp_path / "straight" / name).read_text())
        b = json.loads((tmp_path / "resumed" / name).read_text())
        assert a["channels"] == b["channels"] and a["accuracy"] == b["accuracy"]


@pytest.mark.slow
def test_conditional_run_covers_every_target(tiny, tmp_path):
    search(config(tiny, "cacp", episodes=3), tmp_path / "cacp")
    targets = {float(r["target"]) for r in rows(tmp_path / "cacp")}
    assert targets <= {0.3, 0.5, 0.7} and len(rows(tmp_path / "cacp")) == 9
    for t in targets:
        assert (tmp_path / "cacp" / f"policy-{t:g}.json").is_file()


def test_a_conditional_agent_picks_only_the_asked_targets(tiny, tmp_path):
    """It trains on its range and the asked target, but the final pick (re-judging, test, uniform reference) is
    paid for the asked one only; the others are named with the command that exports them."""
    result = search(config(tiny, "cacp", episodes=2, targets=[0.5]), tmp_path / "cacp")
    assert {float(r["target"]) for r in rows(tmp_path / "cacp")} == {0.3, 0.5, 0.7}
    assert set(result.policies) == {0.5} and set(result.uniform) == {0.5}
    assert sorted(p.name for p in (tmp_path / "cacp").glob("policy*.json")) == ["policy-0.5.json", "policy.json"]
    assert any("also trained on target(s) 0.3, 0.7" in n and f"export-policy --run {tmp_path / 'cacp'} "
               "--target-flops T" in n for n in result.notes)


def test_presets_and_bad_input(tiny, tmp_path):
    assert {"ddpg", "cacp", "td3", "sac", "ppo"} <= set(list_presets())
    with pytest.raises(UnknownNameError, match="Did you mean 'ddpg'"):
        load_preset("dpg")
    (tmp_path / "bad.yaml").write_text("algorithm: ddpg\nepisodse: 3\n")
    with pytest.raises(AutopruneError, match=r"unknown keys \['episodse'\]"):
        load_preset(tmp_path / "bad.yaml")
    with pytest.raises(AutopruneError, match="episodes must be at least 1"):
        config(tiny, episodes=0)
    search(config(tiny, episodes=1), tmp_path / "one")
    with pytest.raises(AutopruneError, match="already holds a run"):
        search(config(tiny, episodes=1), tmp_path / "one")


@pytest.mark.slow
def test_command_line_search_resume_and_export(tiny, tmp_path, capsys):
    from autoprune.cli import main
    common = ["--data-dir", str(tiny / "data"), "--holdout", "20", "--reward-samples", "10", "--recal-batches", "1",
              "--device", "cpu", "--checkpoint", str(tiny / "r20.th")]
    code = main(["search", "--arch", "resnet20", "--agent", "cacp", "--episodes", "2", "--target-flops", "0.5",
                 "--out", str(tmp_path / "run"), *common])
    assert code == 0 and "uniform-L1" in capsys.readouterr().out
    assert main(["export-policy", "--run", str(tmp_path / "run"), "--target-flops", "0.45"]) == 0
    assert f"wrote {tmp_path / 'run' / 'policy-0.45.json'}" in capsys.readouterr().out  # where it went
    exported = json.loads((tmp_path / "run" / "policy-0.45.json").read_text())
    assert exported["macs"] <= 0.45 * exported["base_macs"]
    assert main(["export-policy", "--run", str(tmp_path / "run"), "--target-flops", "0.9"]) == 2
    assert "outside [0.3, 0.7]" in capsys.readouterr().err
    assert main(["search", "--resume", str(tmp_path / "run"), "--arch", "resnet32"]) == 2
    assert "not 'resnet32'" in capsys.readouterr().err
    assert main(["search", "--arch", "resnet20", "--agent", "dpg", "--out", str(tmp_path / "x"), *common]) == 2
    assert "Did you mean 'ddpg'" in capsys.readouterr().err


def test_a_search_says_its_plan_before_the_first_episode(tiny, tmp_path, capsys):
    """The set-up steps and the plan (targets, episodes) are printed first: an asked target widens cacp's range."""
    search(config(tiny, "cacp", episodes=1, targets=[0.4]), tmp_path / "run")
    err = capsys.readouterr().err
    assert "targets 0.3, 0.4, 0.5, 0.7; 4 episodes" in err
    assert err.index("autoprune search: loading resnet20") < err.index("targets 0.3")
