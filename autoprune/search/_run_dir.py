"""The run directory of a search: config, episode log, checkpoints, policies.

    runs/<id>/autoprune-run.json   the marker of a run of autoprune (see autoprune._run_dir)
    runs/<id>/config.yaml          the resolved configuration (what --resume replays)
    runs/<id>/log.txt              human-readable progress
    runs/<id>/episodes.csv         one row per episode
    runs/<id>/checkpoints/ep-N/    agent, replay buffer, env and RNG state after N episodes
    runs/<id>/checkpoints/latest   the name of the newest complete checkpoint
    runs/<id>/policy.json, policy-<target>.json   the final picks

A checkpoint directory is written completely before ``latest`` points to it,
so an interrupt at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .._io import save_torch, write_bytes
from .._run_dir import RunDir

__all__ = ["SearchRunDir", "EPISODE_FIELDS"]

EPISODE_FIELDS = ["episode", "target", "reward", "accuracy", "macs_fraction", "params_fraction", "cached", "ratios"]


class SearchRunDir(RunDir):
    """Files of one search run (claimed, replaced and resumed as :class:`autoprune._run_dir.RunDir` says)."""

    KINDS = ("search",)

    @classmethod
    def create(cls, path: str | os.PathLike[str], config: Mapping[str, Any] | None = None, *,
               kind: str | None = None, overwrite: bool = False,
               cli_options: Mapping[str, Any] | None = None) -> SearchRunDir:
        run = super().create(path, kind=kind, overwrite=overwrite, cli_options=cli_options)
        with open(run.episodes_csv, "w", newline="") as f:
            csv.writer(f).writerow(EPISODE_FIELDS)
        if config is not None:
            run.write_config(config)  # last: a run with a config.yaml has all its files
        return run

    @property
    def episodes_csv(self) -> Path:
        return self.path / "episodes.csv"

    def append_episode(self, row: dict[str, Any]) -> None:
        with open(self.episodes_csv, "a", newline="") as f:
            csv.DictWriter(f, EPISODE_FIELDS).writerow(row)

    def truncate_episodes(self, episodes: int) -> None:
        """Drop log rows after ``episodes`` (those the last checkpoint does not know)."""
        with open(self.episodes_csv, newline="") as f:
            rows = list(csv.reader(f))[: episodes + 1]
        with open(self.episodes_csv, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    # -- checkpoints ----------------------------------------------------------
    def save_checkpoint(self, episodes: int, agent: Any, state: dict[str, Any]) -> None:
        folder = self.path / "checkpoints" / f"ep-{episodes:06d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        agent.save(folder / "agent.zip")
        if hasattr(agent, "save_replay_buffer") and getattr(agent, "replay_buffer", None) is not None:
            agent.save_replay_buffer(folder / "replay.pkl")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        save_torch(folder / "rng.pt", {"python": repr(rng["python"]), "numpy": [rng["numpy"][0], rng["numpy"][1].tolist(),
                                        *rng["numpy"][2:]], "torch": rng["torch"]})
        text = yaml.safe_dump(state, sort_keys=False).encode()
        write_bytes(folder / "state.yaml", lambda f: f.write(text))
        write_bytes(self.path / "checkpoints" / "latest", lambda f: f.write(folder.name.encode()))
        for old in sorted((self.path / "checkpoints").glob("ep-*"))[:-2]:
            shutil.rmtree(old)

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint folder and its state, or None."""
        pointer = self.path / "checkpoints" / "latest"
        if not pointer.is_file():
            return None
        folder = self.path / "checkpoints" / pointer.read_text().strip()
        return folder, yaml.safe_load((folder / "state.yaml").read_text())

    @staticmethod
    def restore_rng(folder: Path) -> None:
        """Put Python's, numpy's and torch's global generators back as they were at the checkpoint."""
        rng = torch.load(folder / "rng.pt", weights_only=True)
        random.setstate(_literal_tuple(rng["python"]))
        np.random.set_state((rng["numpy"][0], np.array(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:]))
        torch.set_rng_state(rng["torch"])


def _literal_tuple(text: str) -> tuple:
    import ast
    return ast.literal_eval(text)
