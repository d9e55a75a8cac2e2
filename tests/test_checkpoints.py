"""Checkpoints: safe loading of the shared pretrained files, clear errors, pruned-model files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from autoprune.checkpoints import (PRETRAINED, file_sha256, load_checkpoint, load_model, load_pruned,
                                   pretrained_path, save_pruned)
from autoprune.errors import CheckpointError
from autoprune.models import create
from autoprune.pruning import prune

from conftest import PRETRAINED_DIR, require


def test_shared_checkpoints_load_and_match_the_registry():
    for arch, weights in PRETRAINED.items():
        path = require(PRETRAINED_DIR / weights.filename)
        model, sha = load_model(arch, path)
        assert sha == weights.sha256 == file_sha256(path)
        assert not model.training


def test_registry_uses_the_cache_and_fails_offline_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"resnet56-4bfd9763\.th.*--checkpoint PATH"):
        pretrained_path("resnet56", download=False)
    src = require(PRETRAINED_DIR / "resnet20-12fca82f.th")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(src, tmp_path / "checkpoints" / src.name)
    assert pretrained_path("resnet20", download=False) == tmp_path / "checkpoints" / src.name


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "model.th"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(create("resnet20"), bad, "resnet20")
    truncated = tmp_path / "resnet20-12fca82f.th"
    truncated.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="corrupt: its sha256"):
        load_checkpoint(create("resnet20"), truncated, "resnet20")


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in create("resnet20").state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match=r"does not fit resnet32 \(missing keys: layer1\.3\."):
        load_checkpoint(create("resnet32"), path, "resnet32")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(create("resnet20", num_classes=100), path, "resnet20")


def test_pruned_model_round_trip(tmp_path):
    model = create("resnet20").eval()
    policy, pruned = prune(model, "resnet20", 0.5, method="global", criterion="l1")
    save_pruned(tmp_path / "model.pt", pruned, policy)
    loaded, loaded_policy = load_pruned(tmp_path / "model.pt")
    assert loaded_policy == policy
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))
    assert sum(p.numel() for p in loaded.parameters()) == policy.params
    with pytest.raises(CheckpointError, match="pruned model written by autoprune"):
        load_checkpoint(create("resnet20"), tmp_path / "model.pt", "resnet20")


def test_pruned_option_a_shortcut_survives_save_and_load(tmp_path):
    from autoprune.pruning import space_for
    model = create("resnet20").eval()
    space = space_for(model, "resnet20", "full")
    counts = space.counts(np.full(len(space.searchable), 0.5))
    from autoprune.policy import make_policy
    kept = space.select(counts, space.scores("l1"))
    policy = make_policy(space, np.full(len(counts), 0.5), kept, dataset="cifar10", num_classes=10,
                         checkpoint=None, criterion="l1")
    pruned = space.apply(kept)
    save_pruned(tmp_path / "m.pt", pruned, policy)
    loaded, _ = load_pruned(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_download_checks_the_hash_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from autoprune.checkpoints import PretrainedWeights
    src = require(PRETRAINED_DIR / "resnet20-12fca82f.th")
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    good = PretrainedWeights("resnet20", "cifar10", src.as_uri(), file_sha256(src), 91.73)
    monkeypatch.setitem(PRETRAINED, "resnet20", good)
    path = pretrained_path("resnet20")
    assert path.is_file() and file_sha256(path) == good.sha256
    path.unlink()
    monkeypatch.setitem(PRETRAINED, "resnet20", PretrainedWeights("resnet20", "cifar10", src.as_uri(), "0" * 64, 0.0))
    with pytest.raises(CheckpointError, match="expected 0000"):
        pretrained_path("resnet20")
    assert list((tmp_path / "cache" / "checkpoints").iterdir()) == []


def test_a_missing_checkpoint_named_like_a_published_one_says_it_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):  # not "corrupt: its sha256 starts ,"
        load_checkpoint(create("resnet20"), tmp_path / "resnet20-12fca82f.th", "resnet20")
