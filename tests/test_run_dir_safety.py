"""A run directory is data: loading one never runs code, and a damaged one fails with one clear message.

Every file a search or training run holds is replaced, in turn, by a file of
the same kind carrying a payload that creates a marker folder when loaded
unsafely (a pickle with ``__reduce__``, a torch file holding such a pickle, an
object array in an ``.npz``, a YAML ``!!python/object/apply`` tag). Resuming,
exporting or loading must then refuse with an AutopruneError naming the file,
or ignore the file, and the marker must never appear. ``test_payloads_are_live``
shows that each payload does run under an unsafe loader, so the marker checks
can fail.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _synthetic import make_colours
from conftest import episode_rows as rows
from conftest import search_config as config
from test_amc_ddpg import T, ToyPruneEnv

from autoprune import _rng
from autoprune.checkpoints import load_model, load_pruned
from autoprune.errors import AutopruneError, CheckpointError, OutputError, PolicyError
from autoprune.policy import Policy
from autoprune.search import export_policy, resume_config, search
from autoprune.search._agent_files import read_agent, restore_agent, save_agent
from autoprune.search._run_dir import SearchRunDir as RunDir
from autoprune.training import make_config, train
from autoprune.training import resume_config as train_resume_config

CHECKPOINT_FILES = ["params.pt", "rng.pt", "buffer.npz", "agent.yaml", "state.yaml"]
UNSAFE_HINTS = ("weights_only=False", "weights_only` set to `False", "will likely succeed", "add_safe_globals")


class Payload:
    """Unpickled, it creates the folder ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a file of its kind that creates ``marker`` when loaded unsafely."""
    if path.suffix in (".pt", ".th"):
        torch.save({"state_dict": Payload(marker)}, path)
    elif path.suffix == ".npz":
        np.savez(path, pos=np.array([Payload(marker)], dtype=object))
    elif path.suffix == ".yaml":
        path.write_text(f"!!python/object/apply:os.mkdir [{json.dumps(str(marker))}]\n")
    else:  # .json, .db and extension-less files: a bare pickle
        path.write_bytes(pickle.dumps(Payload(marker)))


def cut_short(path: Path, marker: Path) -> None:
    """Keep the file's first half (a copy or transfer cut short); same signature as :func:`plant`."""
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a payload planted in a run directory was executed"


@pytest.mark.parametrize("name", ["x.pt", "x.npz", "x.yaml", "x.json"])
def test_payloads_are_live(tmp_path, name):
    """The planted files do run code under the loaders autoprune must not use: the marker checks mean something."""
    path, ran = tmp_path / name, tmp_path / "ran"
    plant(path, ran)
    if name.endswith(".pt"):
        torch.load(path, weights_only=False)
    elif name.endswith(".npz"):
        np.load(path, allow_pickle=True)["pos"]
    elif name.endswith(".yaml"):
        yaml.unsafe_load(path.read_text())
    else:
        pickle.loads(path.read_bytes())
    assert ran.is_dir()


# -- search: an RL run with two checkpoints ------------------------------------------------------


@pytest.fixture(scope="module")
def rl_run(tiny, tmp_path_factory):
    """A finished 4-episode ddpg search, checkpointed after episodes 2 and 4."""
    root = tmp_path_factory.mktemp("rl")
    (root / "ddpg.yaml").write_text("algorithm: ddpg\ntargets: [0.5]\nreward: acc\nwarmup_episodes: 1\n"
                                    "checkpoint_every: 2\nhyperparameters: {batch_size: 8}\n")
    search(config(tiny, str(root / "ddpg.yaml"), episodes=4, top_k=1), root / "run")
    assert sorted(p.name for p in (root / "run" / "checkpoints").iterdir()) == ["ep-000002", "ep-000004", "latest"]
    return root / "run"


@pytest.fixture
def run(rl_run, tmp_path):
    shutil.copytree(rl_run, tmp_path / "run")
    return tmp_path / "run"


def resume(run: Path):
    return search(resume_config(run), run, resume=True)


def export(run: Path):
    return export_policy(run, 0.5, run / "exported.json")


def test_a_checkpoint_holds_data_files_only(rl_run):
    folder = rl_run / "checkpoints" / "ep-000004"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    manifest = yaml.safe_load((folder / "agent.yaml").read_text())
    assert manifest["class"] == "AMCDDPG" and manifest["attributes"]["_episode_num"] == 4
    with np.load(folder / "buffer.npz", allow_pickle=False) as buffer:  # the filled rows only
        assert int(buffer["pos"]) == len(buffer["observations"]) == manifest["attributes"]["num_timesteps"] > 0


@pytest.mark.parametrize("action", [resume, export])
@pytest.mark.parametrize("damage", [plant, cut_short])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_checkpoint_file_is_refused_by_name(run, marker, name, damage, action):
    """Found while the checkpoint is read, before anything is applied (so an earlier one could stand in)."""
    shutil.rmtree(run / "checkpoints" / "ep-000002")  # nothing to fall back on
    file = run / "checkpoints" / "ep-000004" / name
    damage(file, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(file))) as e:
        action(run)
    assert "No earlier whole checkpoint can replace it" in str(e.value)
    assert not any(hint in str(e.value) for hint in UNSAFE_HINTS)


@pytest.mark.parametrize("name,damage", [("params.pt", cut_short), ("state.yaml", cut_short), ("rng.pt", plant)])
def test_a_damaged_checkpoint_gives_way_to_the_one_before(run, rl_run, marker, capsys, name, damage):
    """Resumed from episode 2 instead of 4, the run replays episodes 3 and 4 exactly."""
    file = run / "checkpoints" / "ep-000004" / name
    damage(file, marker)
    resume(run)
    line = capsys.readouterr().err
    assert "checkpoint ep-000004 is damaged, using ep-000002 instead" in line and str(file) in line
    assert "using ep-000002 instead" in (run / "log.txt").read_text()
    assert rows(run) == rows(rl_run)
    assert (run / "checkpoints" / "latest").read_text() == "ep-000004"
    read_agent(run / "checkpoints" / "ep-000004")  # written afresh


def test_latest_naming_a_missing_folder(run, rl_run, capsys):
    (run / "checkpoints" / "latest").write_text("ep-000009")
    resume(run)
    err = capsys.readouterr().err
    assert "checkpoint ep-000009 is damaged, using ep-000004" in err and "is missing" in err
    (run / "checkpoints" / "latest").write_text("ep-000001")
    with pytest.raises(CheckpointError, match=r"ep-000001 is missing.*No earlier whole checkpoint"):
        resume(run)
    assert (run / "checkpoints" / "ep-000004").is_dir()  # a pointer gone wrong removes nothing


def test_latest_holding_garbage(run, marker):
    plant(run / "checkpoints" / "latest", marker)
    with pytest.raises(CheckpointError, match=r"latest is damaged: it should name a checkpoint folder"):
        resume(run)


def test_an_export_never_replaces_the_search_pick_unless_asked(run):
    pick = (run / "policy-0.5.json").read_bytes()
    with pytest.raises(OutputError, match="policy-0.5.json exists .* --out FILE, or replace it with --overwrite"):
        export_policy(run, 0.5)
    assert (run / "policy-0.5.json").read_bytes() == pick
    exported = export_policy(run, 0.5, overwrite=True)
    assert "test" not in exported.accuracy and (run / "policy-0.5.json").read_bytes() != pick


def test_unfinished_newer_checkpoints_are_removed_on_resume_only(run, rl_run):
    unfinished = run / "checkpoints" / "ep-000006"
    unfinished.mkdir()
    (unfinished / "params.pt").write_bytes(b"\x80")  # a write cut short
    export(run)
    assert unfinished.is_dir()  # an export must not touch what a live search may be writing
    resume(run)
    assert not unfinished.exists() and rows(run) == rows(rl_run)


def test_a_run_stopped_before_its_first_whole_checkpoint_starts_over(run, rl_run):
    """Without ``latest`` every checkpoint folder is a write cut short; the episodes of that attempt go too."""
    (run / "checkpoints" / "latest").unlink()
    assert RunDir(run).latest_checkpoint() is None and (run / "checkpoints" / "ep-000004").is_dir()
    resume(run)
    assert rows(run) == rows(rl_run)  # not the first attempt's rows followed by the second's
    assert (run / "checkpoints" / "latest").read_text() == "ep-000004"


def test_a_checkpoint_of_pickles_from_an_older_autoprune_is_refused(run, marker):
    folder = run / "checkpoints" / "ep-000004"
    for name in ("agent.zip", "replay.pkl"):
        plant(folder / name, marker)
    with pytest.raises(CheckpointError, match=r"older autoprune that stored the agent as pickles \(agent.zip, "
                                              r"replay.pkl\).*cannot be resumed or exported safely"):
        resume(run)


def test_a_planted_config_is_refused_by_name(run, marker, tiny):
    plant(run / "config.yaml", marker)
    for load in (resume_config, lambda r: search(config(tiny), r, resume=True), export):
        with pytest.raises(CheckpointError, match=re.escape(str(run / "config.yaml")) + ".*not valid YAML"):
            load(run)


@pytest.mark.parametrize("text,message", [
    ("[1, 2]\n", "must be a mapping of settings"),
    ("arch: resnet20\nnot_a_setting: 1\n", "does not hold what autoprune wrote there"),
])
def test_an_invalid_config_is_refused_by_name(run, text, message):
    (run / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=re.escape(str(run / "config.yaml")) + f".*{message}"):
        resume_config(run)


def test_a_config_without_episodes_csv(run):
    (run / "episodes.csv").unlink()
    with pytest.raises(CheckpointError, match="has a config.yaml but no episodes.csv"):
        resume(run)


@pytest.mark.parametrize("name", ["policy.json", "policy-0.5.json"])
def test_a_planted_policy_is_refused_by_name(run, marker, name):
    plant(run / name, marker)
    with pytest.raises(PolicyError, match=re.escape(str(run / name)) + " is not valid JSON"):
        Policy.load(run / name)


def test_planted_weights_are_refused_by_name(run, marker):
    weights = run / "weights-0.5.pt"  # what a method that trains leaves beside its policy
    plant(weights, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + " cannot be read: it holds Python objects "
                                              "or code") as e:
        load_model("resnet20", weights)
    assert not any(hint in str(e.value) for hint in UNSAFE_HINTS)


# -- search: an Optuna run's study ---------------------------------------------------------------


def plant_cma_state(db: Path, payload: bytes) -> None:
    """Store ``payload`` as the CMA-ES optimiser state of the study's last complete trial, as Optuna does."""
    with sqlite3.connect(db) as con:
        (trial_id,) = con.execute("SELECT trial_id FROM trials WHERE state = 'COMPLETE' "
                                  "ORDER BY trial_id DESC LIMIT 1").fetchone()
        con.execute("INSERT OR REPLACE INTO trial_system_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                    (trial_id, "cma:optimizer:0", json.dumps(payload.hex())))


def test_a_planted_cma_state_in_the_study_is_refused(tiny, tmp_path, marker):
    import optuna

    run = tmp_path / "run"
    search(config(tiny, "cmaes", episodes=2), run)
    plant_cma_state(run / "study.db", pickle.dumps(Payload(marker)))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["preset"]["episodes"] = 3  # one more trial to run: the sampler reads the stored state
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(AutopruneError, match=r"CMA-ES state \(cma:optimizer\*\) that is not plain data \(it names "
                                             r"posix.mkdir"):
        resume(run)

    # Optuna's own sampler would have run it: the refusal above is what stops the payload.
    ran = tmp_path / "ran"
    plant_cma_state(run / "study.db", pickle.dumps(Payload(ran)))
    study = optuna.load_study(study_name="run-t0.5", storage=f"sqlite:///{run / 'study.db'}",
                              sampler=optuna.samplers.CmaEsSampler(n_startup_trials=1))
    space = study.trials[0].distributions["g000"]  # a parameter the sampler reads the stored state for
    study.optimize(lambda trial: trial.suggest_float("g000", space.low, space.high), n_trials=1)
    assert ran.is_dir()


def test_a_genuine_cma_state_still_loads(tiny, tmp_path):
    """The restricted unpickler reads what Optuna stores: a CMA-ES search that passes a generation resumes."""
    import optuna

    from autoprune.search._cmaes import SafeCmaEsSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=SafeCmaEsSampler(n_startup_trials=1, seed=0))
    study.optimize(lambda t: sum(t.suggest_float(f"x{j}", 0, 1) ** 2 for j in range(3)), n_trials=12)
    assert any("cma:optimizer:0" in t.system_attrs for t in study.trials)
    sampler = SafeCmaEsSampler(n_startup_trials=1, seed=0)
    assert sampler._restore_optimizer(study.trials).generation >= 1


# -- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    quad = make_colours(tmp_path_factory.mktemp("quad"), train=8, test=2)
    cfg = make_config("finetune", quad / "data", policy=quad / "u50.json", arch="resnet20", checkpoint=quad / "base.th",
                      preset="cpu", device="cpu", holdout=8, eval_batch_size=32, recipe={"batch_size": 8, "epochs": 1})
    out = tmp_path_factory.mktemp("train") / "run"
    train(cfg, out, progress=False)
    return out


@pytest.fixture
def trained(train_run, tmp_path):
    shutil.copytree(train_run, tmp_path / "run")
    return tmp_path / "run"


def train_resume(run: Path):
    return train(train_resume_config(run), run, resume=True, progress=False)


@pytest.mark.parametrize("damage", [plant, cut_short])
def test_a_damaged_training_checkpoint_is_refused_by_name(trained, marker, damage):
    last = trained / "checkpoints" / "last.pt"
    damage(last, marker)
    with pytest.raises(CheckpointError, match=re.escape(str(last)) + r" cannot be read.*Delete it to train this "
                                                                     "run again") as e:
        train_resume(trained)
    assert not any(hint in str(e.value) for hint in UNSAFE_HINTS)


def test_a_training_checkpoint_of_other_contents_is_refused_by_name(trained):
    last = trained / "checkpoints" / "last.pt"
    torch.save({"epoch": 1, "model": {}}, last)
    with pytest.raises(CheckpointError, match=re.escape(str(last)) + " is damaged"):
        train_resume(trained)


def test_a_planted_model_is_refused_by_its_loaders_and_ignored_by_resume(trained, marker):
    model = trained / "model.pt"
    plant(model, marker)
    for load in (load_pruned, lambda path: load_model("resnet20", path)):
        with pytest.raises(CheckpointError, match=re.escape(str(model)) + " cannot be read"):
            load(model)
    assert train_resume(trained).model_path == model  # a finished run is not trained, nor its model read


def test_a_planted_training_config_is_refused_by_name(trained, marker):
    plant(trained / "config.yaml", marker)
    with pytest.raises(CheckpointError, match=re.escape(str(trained / "config.yaml")) + ".*not valid YAML"):
        train_resume_config(trained)
    (trained / "config.yaml").write_text("- a list\n")
    with pytest.raises(AutopruneError, match=re.escape(str(trained / "config.yaml"))):
        train_resume_config(trained)


def test_a_planted_training_policy_is_refused_by_name(trained, marker):
    plant(trained / "policy.json", marker)
    with pytest.raises(PolicyError, match=re.escape(str(trained / "policy.json")) + " is not valid JSON"):
        train_resume(trained)


# -- what the data files keep --------------------------------------------------------------------


def test_rng_state_round_trips_and_reads_the_training_format_of_before(tmp_path):
    generator = np.random.default_rng(5)
    state = _rng.capture({"g": generator})
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), generator.random())
    _rng.restore(torch.load(tmp_path / "rng.pt", weights_only=True), {"g": generator})
    assert (random.random(), np.random.rand(), torch.rand(1).item(), generator.random()) == expected

    version, words, gauss = random.getstate()  # the old training checkpoints: Python's state as a tuple of ints
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    old = {"torch": torch.get_rng_state(), "python": (version, words, gauss),
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    torch.save(old, tmp_path / "old.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    _rng.restore(torch.load(tmp_path / "old.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def toy_agent(algorithm: str, env: ToyPruneEnv):
    import stable_baselines3 as sb3

    from autoprune.search._amc_ddpg import AMCDDPG

    if algorithm == "ddpg":
        return AMCDDPG("MlpPolicy", env, warmup_episodes=2, seed=0, device="cpu")
    if algorithm == "ppo":
        return sb3.PPO("MlpPolicy", env, n_steps=2 * T, batch_size=T, n_epochs=2, seed=0, device="cpu")
    cls = {"td3": sb3.TD3, "sac": sb3.SAC}[algorithm]
    return cls("MlpPolicy", env, learning_starts=2 * T, train_freq=(1, "episode"), gradient_steps=-1, batch_size=8,
               seed=0, device="cpu")


@pytest.mark.parametrize("algorithm", ["ddpg", "td3", "sac", "ppo"])
def test_every_algorithm_continues_exactly_from_its_files(tmp_path, algorithm):
    """Saved after 4 episodes, restored into a fresh agent and trained 4 more: as if never stopped.

    Warm-up is shorter than the first part, so the restored networks, optimisers (SAC's
    entropy coefficient and its optimiser too), buffer and generators all matter.
    """
    straight_env = ToyPruneEnv()
    straight = toy_agent(algorithm, straight_env)
    straight.learn(8 * T)

    first_env = ToyPruneEnv()
    first = toy_agent(algorithm, first_env)
    first.learn(4 * T)
    save_agent(first, tmp_path / "agent")
    np.random.rand(3), torch.rand(3), random.random()  # restoring must undo these draws
    second_env = ToyPruneEnv()
    second = toy_agent(algorithm, second_env)
    restore_agent(second, read_agent(tmp_path / "agent"))
    second.learn(4 * T, reset_num_timesteps=False)

    assert first_env.actions + second_env.actions == straight_env.actions
    a, b = straight.get_parameters(), second.get_parameters()
    assert all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])
    if algorithm == "sac":
        assert torch.equal(straight.log_ent_coef, second.log_ent_coef) and second.log_ent_coef.item() != 0.0
