"""The files of a training run (the layout is in :mod:`._run`), written so that an interrupt loses nothing."""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from .._io import read_yaml, reading, write_bytes
from ..errors import AutopruneError
from ..policy import Policy
from ._config import TrainConfig

__all__ = ["METRIC_FIELDS", "RunDir", "resume_config"]

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "holdout_top1", "holdout_top5", "images_per_s", "seconds"]


def resume_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The configuration of the training run in ``run_dir``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AutopruneError(f"{run_dir} is not a training run (no config.yaml).")
    hint = "Restore it from a copy of the run."
    data = read_yaml(path, "Training configuration", hint=hint)
    with reading(path, "Training configuration", hint=hint):
        return TrainConfig.from_dict(data)


class RunDir:
    """The files of one run: create (refusing to overwrite another run), log, metrics rows, the checkpoint path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = path / "checkpoints" / "last.pt"
        self.metrics_csv = path / "metrics.csv"

    @staticmethod
    def refuse(path: Path, overwrite: bool) -> None:
        """Refuse to start a run in a folder that holds one, unless told to replace it."""
        if (path / "config.yaml").exists() and not overwrite:
            raise AutopruneError(f"{path} already holds a run; resume it with --resume {path}, "
                                 "or choose another --out (or pass --overwrite).")

    @classmethod
    def create(cls, path: Path, config: TrainConfig, policy: Policy | None, overwrite: bool) -> RunDir:
        cls.refuse(path, overwrite)
        if overwrite and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        if policy is not None:
            policy.save(path / "policy.json")
        text = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
        write_bytes(path / "config.yaml", lambda f: f.write(text))
        with open(run.metrics_csv, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)
        return run

    def log(self, message: str) -> None:
        with open(self.path / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def append(self, row: dict[str, Any]) -> None:
        with open(self.metrics_csv, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow({k: _fmt(row.get(k)) for k in METRIC_FIELDS})

    def rows(self) -> list[dict[str, str]]:
        with open(self.metrics_csv, newline="") as f:
            return list(csv.DictReader(f))

    def truncate(self, epochs: int) -> None:
        """Drop rows after ``epochs`` (those written after the checkpoint being resumed)."""
        rows = [r for r in self.rows() if int(r["epoch"]) <= epochs]
        with open(self.metrics_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
