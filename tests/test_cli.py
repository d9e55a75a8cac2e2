"""The command line end to end on a tiny image-folder dataset: outputs, files, and clear errors."""

from __future__ import annotations

import json

import pytest

from autoprune.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_then_eval_the_written_model(tiny, capsys, tmp_path):
    code, out, _ = run(capsys, "prune", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--target-flops", "0.5",
                       "--method", "global", "--criterion", "l2", "--out", tmp_path / "run")
    assert code == 0 and "wrote" in out
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["arch"] == "resnet20" and 0.49 <= policy["macs"] / policy["base_macs"] <= 0.5
    code, out, _ = run(capsys, "eval", "--checkpoint", tmp_path / "run" / "model.pt", "--data-dir", tiny / "data",
                       "--holdout", 20, "--recal-batches", 1, "--device", "cpu")
    assert code == 0
    assert "pruned to" in out and "1 batches" in out and "no" in out
    code, _, err = run(capsys, "prune", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--target-flops", "0.5",
                       "--out", tmp_path / "run")
    assert code == 2 and "--overwrite" in err


def test_eval_with_policy_and_flops(tiny, capsys, tmp_path):
    run(capsys, "prune", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--target-flops", "20M",
        "--out", tmp_path / "p")
    code, out, _ = run(capsys, "flops", "--arch", "resnet20", "--policy", tmp_path / "p" / "policy.json")
    assert code == 0 and "pruned:" in out
    code, out, _ = run(capsys, "eval", "--arch", "resnet20", "--checkpoint", tiny / "r20.th", "--policy",
                       tmp_path / "p" / "policy.json", "--data-dir", tiny / "data", "--holdout", 20, "--device", "cpu")
    assert code == 0 and "test top-1" in out


@pytest.mark.parametrize("argv,message", [
    (["flops", "--arch", "resnet57"], "Did you mean 'resnet56'"),
    (["prune", "--arch", "resnet20", "--checkpoint", "{ck}", "--target-flops", "1.5", "--out", "{tmp}"], "in (0, 1)"),
    (["prune", "--arch", "resnet20", "--checkpoint", "{ck}", "--target-flops", "0.01", "--out", "{tmp}"], "reachable range"),
    (["prune", "--arch", "resnet20", "--checkpoint", "{ck}", "--target-flops", "0.5", "--method", "unifrom",
      "--out", "{tmp}"], "Did you mean 'uniform'"),
    (["prune", "--arch", "resnet20", "--checkpoint", "{ck}", "--target-flops", "0.5", "--criterion", "l3",
      "--out", "{tmp}"], "Unknown criterion 'l3'"),
    (["eval", "--arch", "resnet32", "--checkpoint", "{ck}", "--data-dir", "{data}"], "does not fit resnet32"),
    (["eval", "--arch", "resnet20", "--checkpoint", "{ck}", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["eval", "--arch", "resnet20", "--checkpoint", "{tmp}/missing.th", "--data-dir", "{data}"], "does not exist"),
])
def test_bad_input_gets_a_message_not_a_traceback(tiny, capsys, tmp_path, argv, message):
    values = {"ck": tiny / "r20.th", "tmp": tmp_path, "data": tiny / "data"}
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("models", "flops", "eval", "prune"):
        assert command in out
