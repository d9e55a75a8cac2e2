"""The command line end to end on a tiny image-folder dataset: outputs, files, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.cli import main
from autoprune.models import create


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-class 32x32 image-folder dataset (8 train, 2 test images a class) and a resnet20 checkpoint."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in range(10):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": create("resnet20").state_dict()}, root / "r20.th")
    return root


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
