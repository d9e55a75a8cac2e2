"""Atomic writes and the curated public surface."""

from __future__ import annotations

import importlib

import pytest

from autoprune._io import atomic_open, write_json


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "policy.json"
    write_json(path, {"good": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write(b'{"half": ')
            raise KeyboardInterrupt
    assert path.read_text().strip().startswith('{\n  "good": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


@pytest.mark.parametrize("module", ["autoprune", "autoprune.models", "autoprune.data", "autoprune.pruning",
                                    "autoprune.errors", "autoprune.policy", "autoprune.checkpoints",
                                    "autoprune.evaluate"])
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)
