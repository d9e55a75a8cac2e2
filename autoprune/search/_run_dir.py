"""The run directory of a search: config, episode log, checkpoints, policies.

    runs/<id>/autoprune-run.json   the marker of a run of autoprune (see autoprune._run_dir)
    runs/<id>/config.yaml          the resolved configuration (what --resume replays)
    runs/<id>/log.txt              human-readable progress
    runs/<id>/episodes.csv         one row per episode
    runs/<id>/checkpoints/ep-N/    after N episodes: the agent (params.pt, agent.yaml, buffer.npz,
                                   rng.pt: see ``_agent_files``) and state.yaml (episodes, the env's
                                   evaluation cache and target schedule, the candidates so far)
    runs/<id>/checkpoints/latest   the name of the newest complete checkpoint
    runs/<id>/policy.json, policy-<target>.json   the final picks

A checkpoint directory is written completely before ``latest`` points to it,
so an interrupt at any moment leaves the previous checkpoint usable. Every
file is data (YAML, ``.npz`` without pickles, weights-only torch files):
resuming a run directory that came from elsewhere never runs code from it.
A damaged newest checkpoint gives way to the one before it (two are kept).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .._io import read_yaml, reading, write_bytes
from .._run_dir import RunDir
from ..errors import CheckpointError
from ._agent_files import read_agent
from ._agents import save_agent

__all__ = ["SearchRunDir", "EPISODE_FIELDS"]

EPISODE_FIELDS = ["episode", "target", "reward", "accuracy", "macs_fraction", "params_fraction", "cached", "ratios"]

_CHECKPOINT_NAME = re.compile(r"ep-\d{6}")
_STATE_FORMAT = "autoprune-search-checkpoint-v1"
_PICKLED = ("agent.zip", "replay.pkl")  # what autoprune wrote before checkpoints were data


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

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, kind: str | None = None, writing: bool = True) -> SearchRunDir:
        """An existing search run; refuses a folder that is not a whole one (config.yaml without episodes.csv)."""
        run = super().open(path, kind=kind, writing=writing)
        if (run.path / "config.yaml").is_file() and not run.episodes_csv.is_file():
            raise CheckpointError(f"{run.path} has a config.yaml but no episodes.csv: the run directory is incomplete "
                                  "(copied in part, or its creation was cut short). Copy the whole run, or start it "
                                  "again with --overwrite.")
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
        """Write the agent and ``state`` after ``episodes`` episodes, then point ``latest`` at them; keep two."""
        folder = self.path / "checkpoints" / f"ep-{episodes:06d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        save_agent(agent, folder)
        # the format last: a file cut short anywhere lacks it, so it never reads as a whole one
        text = yaml.safe_dump({**state, "format": _STATE_FORMAT}, sort_keys=False).encode()
        write_bytes(folder / "state.yaml", lambda f: f.write(text))
        write_bytes(self.path / "checkpoints" / "latest", lambda f: f.write(folder.name.encode()))
        for old in sorted((self.path / "checkpoints").glob("ep-*"))[:-2]:
            shutil.rmtree(old)

    def latest_checkpoint(self, *, resuming: bool = False) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint folder and its state, or None when the run has none yet.

        Every file of the checkpoint is read and checked first. When one is
        damaged and the checkpoint before it is whole, that one is used and one
        line (stderr and log.txt) says so; otherwise a CheckpointError names
        the damaged file. ``resuming`` also removes folders newer than
        ``latest`` (all of them when there is no ``latest`` yet): writes that an
        interrupt cut short. Only then: an export may run beside a live search
        that is writing one.
        """
        checkpoints = self.path / "checkpoints"
        pointer = checkpoints / "latest"
        if not pointer.is_file():  # stopped before the first checkpoint was whole
            if resuming:
                for unfinished in checkpoints.glob("ep-*"):
                    shutil.rmtree(unfinished)
            return None
        name = pointer.read_bytes().decode("utf-8", "replace").strip()
        if not _CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(f"{pointer} is damaged: it should name a checkpoint folder (ep-NNNNNN), but holds "
                                  f"{name[:40]!r}. Write the name of the newest whole folder of {checkpoints} into it.")
        pickled = [f for f in _PICKLED if (checkpoints / name / f).exists()]
        if pickled:
            raise CheckpointError(
                f"{checkpoints / name} was written by an older autoprune that stored the agent as pickles "
                f"({', '.join(pickled)}), which can run code when loaded: this run cannot be resumed or exported "
                "safely. Start a new search (another --out).")
        if resuming and (checkpoints / name).is_dir():  # (a pointer gone wrong says nothing about the others)
            for unfinished in (f for f in checkpoints.glob("ep-*") if f.name > name):
                shutil.rmtree(unfinished)
        earlier = sorted(f for f in checkpoints.glob("ep-*") if _CHECKPOINT_NAME.fullmatch(f.name) and f.name < name)
        damage = None
        for folder in [checkpoints / name, *earlier[-1:]]:
            try:
                state = self._read_checkpoint(folder)
            except CheckpointError as e:
                damage = damage or e
                continue
            if damage is not None:
                line = f"checkpoint {name} is damaged, using {folder.name} instead: {damage}"
                print(line, file=sys.stderr)
                self.log(line)
            return folder, state
        raise CheckpointError(f"{damage} No earlier whole checkpoint can replace it: restore the file from a copy of "
                              "the run, or start a new search (another --out).")

    @staticmethod
    def _read_checkpoint(folder: Path) -> dict[str, Any]:
        """The state of the checkpoint in ``folder``, after reading and checking all its files."""
        if not folder.is_dir():
            raise CheckpointError(f"Checkpoint folder {folder} is missing.")
        read_agent(folder)
        file = folder / "state.yaml"
        state = read_yaml(file, "Checkpoint state")
        with reading(file, "Checkpoint state"):
            if not isinstance(state, dict) or state.pop("format", None) != _STATE_FORMAT:
                raise ValueError(f"not a whole checkpoint state of format {_STATE_FORMAT}")
            if not isinstance(state["env"], dict):
                raise TypeError("'env' must be a mapping")
            if type(state["episodes"]) is not int or state["episodes"] < 0:
                raise ValueError(f"episodes must be a count, not {state['episodes']!r}")
            state["candidates"] = {float(t): [[float(r), [int(c) for c in counts]] for r, counts in pool]
                                   for t, pool in state["candidates"].items()}
        return state
