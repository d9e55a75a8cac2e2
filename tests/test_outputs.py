"""Output folders (issue 20): whose they are, --overwrite, read-only and full disks, all-or-none outputs,
failed starts that leave nothing, options kept on --resume, and the bad inputs of the same issue.

The read-only and full-disk cases mount tiny tmpfs filesystems (chmod does not stop root); where this
machine forbids mounting they are skipped with the reason.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from autoprune._io import output_error, write_together
from autoprune._run_dir import MARKER, RunDir
from autoprune.cli import main
from autoprune.errors import OutputError
from autoprune.search import search
from conftest import search_config, tmpfs


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(err: str, *says: str) -> str:
    """The single `autoprune ...: error:` line of ``err`` (besides progress: bars and a search's set-up steps),
    which must hold every ``says``."""
    progress = re.compile(r"%\||^autoprune search: (?!error: )")
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and not progress.search(line)]
    assert len(lines) == 1 and lines[0].startswith("autoprune ") and ": error: " in lines[0], err
    assert "Traceback" not in err and all(s in lines[0] for s in says), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A resnet20 policy (pruned from the tiny checkpoint) and a random resnet32 one, from `autoprune prune`."""
    from autoprune.models import create

    root = tmp_path_factory.mktemp("made")
    torch.manual_seed(1)
    torch.save({"state_dict": create("resnet32").state_dict()}, root / "r32.th")
    for arch, ck in (("resnet20", tiny / "r20.th"), ("resnet32", root / "r32.th")):
        assert main(["prune", "--arch", arch, "--checkpoint", str(ck), "--target-flops", "0.5",
                     "--out", str(root / arch)]) == 0
    return {"r20": root / "resnet20" / "policy.json", "r32": root / "resnet32" / "policy.json"}


def data(tiny):
    return ["--data-dir", tiny / "data", "--holdout", 20, "--device", "cpu"]


def prune_cmd(tiny):
    return ["prune", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--target-flops", 0.5]


def search_cmd(tiny, agent="uniform", recal=1):
    return ["search", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--agent", agent, "--reward-samples", 10,
            "--recal-batches", recal, "--target-flops", 0.5, "--no-report", *data(tiny)]


def finetune_cmd(tiny, made):
    return ["finetune", "--policy", made["r20"], "--checkpoint", tiny / "r20.th", "--preset", "cpu", "--epochs", 1,
            "--batch-size", 16, "--eval-batch-size", 50, "--no-progress", *data(tiny)]


def command(name, tiny, made):
    return {"prune": lambda: prune_cmd(tiny), "search": lambda: search_cmd(tiny),
            "finetune": lambda: finetune_cmd(tiny, made)}[name]()




def started_run(path: Path, kind: str, *files: str) -> Path:
    run = RunDir.create(path, kind=kind)
    for name in files:
        (path / name).write_text("x")
    run.mark_started()
    return path


# -- item 2: --overwrite never removes a user's folder ------------------------------------------------------
@pytest.mark.parametrize("name", ["prune", "search", "finetune"])
def test_overwrite_refuses_a_folder_that_holds_no_run(tiny, made, capsys, tmp_path, name):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years")
    code, _, err = run(capsys, *command(name, tiny, made), "--out", precious, "--overwrite")
    assert code == 2
    one_error(err, "thesis.txt", "no run of autoprune", "--overwrite replaces runs of autoprune only")
    assert (precious / "thesis.txt").read_text() == "four years" and os.listdir(precious) == ["thesis.txt"]


def test_overwrite_refuses_a_run_that_also_holds_a_users_file(tmp_path):
    started_run(tmp_path / "run", "search", "config.yaml", "episodes.csv", "thesis.txt")
    with pytest.raises(OutputError, match=r"holds a run of `autoprune search` but also thesis.txt, which no such run"):
        RunDir.check(tmp_path / "run", kind="search", overwrite=True)
    with pytest.raises(OutputError, match="already holds a run .*--overwrite would not replace it either, since it "
                                          "also holds thesis.txt"):
        RunDir.check(tmp_path / "run", kind="search")
    assert (tmp_path / "run" / "thesis.txt").is_file()


def test_overwrite_replaces_a_run_of_autoprune_and_keeps_the_folder(tiny, capsys, tmp_path):
    out = started_run(tmp_path / "run", "search", "config.yaml", "episodes.csv", "report.md")
    (out / "checkpoints").mkdir()
    code, _, err = run(capsys, *prune_cmd(tiny), "--out", out, "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out)) == [MARKER, "model.pt", "policy.json"]
    assert json.loads((out / MARKER).read_text())["kind"] == "prune"


# -- item 3: one command's output is not mixed with another's ------------------------------------------------
@pytest.mark.parametrize("kind,files,name", [
    ("prune", ("policy.json", "model.pt"), "finetune"),
    ("finetune", ("config.yaml", "metrics.csv"), "search"),
    ("search", ("config.yaml", "episodes.csv"), "prune"),
])
def test_a_folder_of_another_command_is_refused(tiny, made, capsys, tmp_path, kind, files, name):
    out = started_run(tmp_path / "run", kind, *files)
    before = sorted(os.listdir(out))
    code, _, err = run(capsys, *command(name, tiny, made), "--out", out)
    assert code == 2
    one_error(err, f"holds a run of `autoprune {kind}`", files[0], "will not mix its files", "--overwrite")
    assert sorted(os.listdir(out)) == before


def test_the_same_command_says_resume_and_prune_has_nothing_to_resume(tiny, capsys, tmp_path):
    started_run(tmp_path / "s", "search", "config.yaml")
    with pytest.raises(OutputError, match=r"already holds a run of `autoprune search`; resume it with --resume"):
        RunDir.check(tmp_path / "s", kind="search")
    assert run(capsys, *prune_cmd(tiny), "--out", tmp_path / "p")[0] == 0
    code, _, err = run(capsys, *prune_cmd(tiny), "--out", tmp_path / "p")
    assert code == 2 and "resume" not in one_error(err, "already holds a run of `autoprune prune`", "--overwrite")


def test_a_folder_written_before_the_marker_is_known_by_its_config(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("arch: resnet20\nagent: cacp\n")
    (tmp_path / "old" / "episodes.csv").write_text("episode\n")
    with pytest.raises(OutputError, match="already holds a run of `autoprune search`"):
        RunDir.check(tmp_path / "old", kind="search")
    with pytest.raises(OutputError, match=r"is a run of `autoprune search`, not of `autoprune finetune` or "
                                          r"`autoprune train`; continue it with `autoprune search --resume"):
        from autoprune.training import resume_config
        resume_config(tmp_path / "old")
    RunDir.check(tmp_path / "old", kind="train", overwrite=True)  # an autoprune run: --overwrite may replace it


# -- "also wrong today": a read-only or full disk ------------------------------------------------------------
@pytest.mark.parametrize("name", ["prune", "search", "finetune"])
def test_a_read_only_out_is_one_clear_error_before_any_work(tiny, made, capsys, tmp_path, name):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code, _, err = run(capsys, *command(name, tiny, made), "--out", ro / "run")
    assert code == 2
    one_error(err, f"{ro / 'run'}", "read-only filesystem", "Choose --out on a writable one")


def test_prune_into_a_full_disk_writes_both_files_or_neither(tiny, capsys, tmp_path):
    with tmpfs(tmp_path / "full", "size=256k") as full:
        code, _, err = run(capsys, *prune_cmd(tiny), "--out", full / "p")
        left = full.exists() and sorted(p.name for p in full.rglob("*"))
    assert code == 2
    one_error(err, "Could not write", "free). Free some space, or choose --out on another disk.")
    assert left == []  # neither policy.json nor model.pt, nor the folder the command made


def test_finetune_into_a_full_disk_is_one_error(tiny, made, capsys, tmp_path):
    with tmpfs(tmp_path / "full", "size=320k") as full:
        code, _, err = run(capsys, *finetune_cmd(tiny, made), "--out", full / "ft")
        left = sorted(p.name for p in full.iterdir())
    assert code == 2 and left == []
    one_error(err, "Could not write", "Free some space, or choose --out on another disk")


def test_a_search_into_a_full_disk_is_one_line_without_the_sql_dump(tiny, capsys, tmp_path):
    with tmpfs(tmp_path / "full", "size=64k") as full:  # the run's first files fit, the SQLite study does not
        code, _, err = run(capsys, *search_cmd(tiny, agent="tpe"), "--episodes", 1, "--out", full / "s")
        left = sorted(p.name for p in full.iterdir())
    assert code == 2 and left == []
    assert "[SQL" not in one_error(err, "study.db: no space left on the device")


def test_write_together_replaces_all_files_or_none(tmp_path):
    (tmp_path / "a.json").write_text("old")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"Could not write .*b.pt: no space left on the device \(.* free\)"):
        write_together({tmp_path / "a.json": lambda f: f.write(b"new"), tmp_path / "b.pt": full})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old"
    write_together({tmp_path / "a.json": lambda f: f.write(b"new"), tmp_path / "b.pt": lambda f: f.write(b"pt")})
    assert (tmp_path / "a.json").read_text() == "new" and (tmp_path / "b.pt").read_text() == "pt"


@pytest.mark.parametrize("error,says", [
    (RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file "
                  "write failed"), "the write failed; is the disk full?"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 262208 vs 262104"), "is the disk full?"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/x/log.txt"), "/mnt/x/log.txt: it is on a read-only"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/q/model.pt"), "/q/model.pt: no space left on the device"),
])
def test_disk_errors_become_one_line(error, says):
    assert says in str(output_error(error, None if isinstance(error, OSError) else "out/model.pt"))
    assert "out/model.pt: " in str(output_error(error, "out/model.pt"))  # the file written, not its temporary
    assert output_error(ValueError("x")) is None and output_error(OSError(errno.ENOENT, "missing")) is None
    assert output_error(RuntimeError("PytorchStreamReader failed reading zip archive (inline_container.cc)")) is None


def test_a_full_sqlite_study_is_one_line_without_the_sql_dump(monkeypatch, capsys):
    import sqlite3

    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    def full_study(args):
        try:
            raise sqlalchemy.exc.OperationalError("INSERT INTO trials (number, study_id) VALUES (?, ?)", (0, 1),
                                                  sqlite3.OperationalError("database or disk is full"))
        except sqlalchemy.exc.OperationalError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e

    assert "[SQL:" in str(sqlalchemy.exc.OperationalError("INSERT", (), sqlite3.OperationalError("full")))
    monkeypatch.setattr("autoprune._commands.run_models", full_study)
    code, _, err = run(capsys, "models")
    assert code == 2 and "[SQL" not in one_error(err, "no space left on the device")


def test_a_read_only_disk_met_mid_run_is_one_line(monkeypatch, capsys):
    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", "runs/x/log.txt")

    monkeypatch.setattr("autoprune._commands.run_models", read_only)
    code, _, err = run(capsys, "models")
    assert code == 2
    one_error(err, "runs/x/log.txt: it is on a read-only filesystem")


# -- a search that fails before its first episode leaves nothing --------------------------------------------
def test_a_search_failing_before_its_first_episode_leaves_nothing(tiny, made, capsys, tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(Exception, match="resnet32|does not fit|group"):
        search(search_config(tiny, agent="tpe", episodes=1, warm_start=[str(made["r32"])]), out)
    assert not (tmp_path / "new").exists()  # and not the parent it made either
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, *search_cmd(tiny, agent="tpe"), "--episodes", 1, "--out", tmp_path / "empty",
                       "--storage", "postgresql://u:pw@127.0.0.1:9/db")
    assert code == 2 and "cannot be reached" in err
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())  # not made here: emptied, kept
    code, _, err = run(capsys, *search_cmd(tiny, agent="tpe"), "--episodes", 1, "--out", out, "--ray",
                       "--ray-address", "ray://127.0.0.1:9")
    assert code == 2 and "Cannot reach the Ray cluster" in err and not (tmp_path / "new").exists()
    result = search(search_config(tiny, agent="tpe", episodes=1), out)  # the corrected command, no --overwrite
    assert (result.run_dir / "policy.json").is_file()


def test_a_run_that_never_started_is_replaced_without_overwrite(tmp_path):
    first = RunDir.create(tmp_path / "run", {"arch": "resnet20", "agent": "tpe"}, kind="search")
    assert not first.started
    RunDir.create(tmp_path / "run", kind="prune")  # same process (a dead one's marker reads the same)
    marker = json.loads((tmp_path / "run" / MARKER).read_text())
    assert marker["kind"] == "prune" and not (tmp_path / "run" / "config.yaml").exists()
    marker.update(host=socket.gethostname(), pid=1)  # pid 1 is alive: a run starting in another process
    (tmp_path / "run" / MARKER).write_text(json.dumps(marker))
    with pytest.raises(OutputError, match="that process 1 is starting"):
        RunDir.check(tmp_path / "run", kind="search")


def test_cleanup_removes_only_what_the_run_wrote(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError):
        with RunDir.create(tmp_path / "a" / "b", kind="search").cleanup_unless_started() as run:
            (run.path / "config.yaml").write_text("x")
            raise ValueError
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    with pytest.raises(ValueError):
        with RunDir.create(tmp_path / "c", kind="search").cleanup_unless_started() as run:
            run.mark_started()
            raise ValueError
    assert json.loads((tmp_path / "c" / MARKER).read_text())["started"] is True
    with pytest.raises(ValueError):
        with RunDir.open(tmp_path / "c").cleanup_unless_started():  # a resumed run is never removed
            raise ValueError
    assert (tmp_path / "c" / MARKER).is_file()


def test_an_experiment_whose_trial_started_is_kept(tmp_path):
    sweep = RunDir.create(tmp_path / "sweep", {"experiment": "sweep", "cells": {"uniform-t0.5": {}}}, kind="sweep")
    RunDir.create(tmp_path / "sweep" / "uniform-t0.5" / "search", kind="search").mark_started()
    with pytest.raises(KeyboardInterrupt):
        with sweep.cleanup_unless_started():
            raise KeyboardInterrupt
    assert (tmp_path / "sweep" / "uniform-t0.5" / "search" / MARKER).is_file()
    with pytest.raises(OutputError, match="already holds a run of `autoprune sweep`"):
        RunDir.check(tmp_path / "sweep", kind="sweep")


# -- options given at the start hold for the resume -----------------------------------------------------------
def test_no_report_holds_on_resume(tiny, capsys, tmp_path):
    assert run(capsys, *search_cmd(tiny), "--out", tmp_path / "run")[0] == 0
    assert json.loads((tmp_path / "run" / MARKER).read_text())["options"] == {"report": False}
    code, out, err = run(capsys, "search", "--resume", tmp_path / "run")
    assert code == 0, err
    assert "report:" not in out and not (tmp_path / "run" / "report.md").exists()


def test_no_progress_holds_on_resume(tmp_path):
    from autoprune._commands import _kept_on

    RunDir.create(tmp_path / "ft", {"mode": "finetune"}, kind="finetune", cli_options={"progress": False})
    assert _kept_on(tmp_path / "ft", "progress", True) is False
    RunDir.create(tmp_path / "tr", {"mode": "scratch"}, kind="train", cli_options={"progress": True})
    assert _kept_on(tmp_path / "tr", "progress", True) is True and _kept_on(tmp_path / "tr", "progress", False) is False


# -- bad values: a message, not a traceback or a silent no-op ------------------------------------------------
def test_eval_batch_size_0_is_an_error(tiny, capsys):
    code, _, err = run(capsys, "eval", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--batch-size", 0,
                       *data(tiny))
    assert code == 2
    one_error(err, "--batch-size must be at least 1, but got 0.")


@pytest.mark.parametrize("flag,value,says", [("--kd-weight", 0.5, "--kd-weight only applies"),
                                              ("--kd-temperature", 2, "--kd-temperature only applies")])
@pytest.mark.parametrize("command_name", ["finetune", "train"])
def test_kd_settings_without_kd_are_refused(tiny, made, capsys, tmp_path, flag, value, says, command_name):
    argv = finetune_cmd(tiny, made) if command_name == "finetune" else \
        ["train", "--arch", "resnet20", "--epochs", 1, "--no-progress", *data(tiny)]
    code, _, err = run(capsys, *argv, flag, value, "--out", tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    one_error(err, says, "add --kd (or --kd-teacher)")


def test_search_refuses_recal_batches_0(tiny, capsys, tmp_path):
    code, _, err = run(capsys, *search_cmd(tiny, recal=0), "--out", tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    one_error(err, "--recal-batches must be at least 1 for a search", "rewards would be meaningless")


@pytest.mark.parametrize("value,says", [("-0.2", "must be in (0, 1) as a fraction"), ("1.5", "but got 1.5"),
                                        ("half", "neither a fraction in (0, 1)"), ("-20M", "base MACs")])
def test_a_target_outside_the_range_says_the_range(tiny, capsys, tmp_path, value, says):
    code, _, err = run(capsys, "prune", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", f"--target-flops={value}",
                       "--out", tmp_path / "p")
    assert code == 2 and not (tmp_path / "p").exists()
    one_error(err, "(0, 1)", says)


def test_every_command_takes_the_same_target_forms(tiny, capsys, tmp_path):
    from autoprune._commands import _fractions
    from autoprune.models import create
    from autoprune.pruning import space_for

    base = space_for(create("resnet20").eval(), "resnet20").base.macs
    assert _fractions(["0.5", 0.3, "20M", "0.02G"], "resnet20") == pytest.approx([0.5, 0.3, 20e6 / base, 20e6 / base])
    code, _, err = run(capsys, *[a if a != 0.5 else "20M" for a in search_cmd(tiny)], "--out", tmp_path / "run")
    assert code == 0, err
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["target"]["fraction"] == pytest.approx(20e6 / base) and policy["macs"] <= 20e6
