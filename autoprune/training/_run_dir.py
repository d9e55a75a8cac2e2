"""The files of a training run (the layout is in :mod:`._run`), written so that an interrupt loses nothing."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from typing import Any

from .._device import resolve_device
from .._io import reading
from .._run_dir import RunDir
from ..policy import Policy
from ._config import TrainConfig

__all__ = ["METRIC_FIELDS", "TrainingRunDir", "resume_config"]

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "holdout_top1", "holdout_top5", "images_per_s", "seconds"]


def resume_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The configuration of the training run in ``run_dir``.

    A run written before ``Recipe.precision`` existed trained in float32 on a CPU (float16 autocast on CUDA,
    which "auto" still is): it resumes so, not under the bfloat16 autocast "auto" now means on some CPUs.
    """
    run = TrainingRunDir.open(run_dir, writing=False)
    data = run.read_config()  # a mapping, or a clear error
    recipe = data.get("recipe")
    if isinstance(recipe, dict) and "precision" not in recipe:
        recipe["precision"] = "auto" if resolve_device(data.get("device")).type == "cuda" else "float32"
    with reading(run.path / "config.yaml", "Training configuration", hint="Restore it from a copy of the run."):
        return TrainConfig.from_dict(data)


def kind_of(config: TrainConfig) -> str:
    """The run kind (the command) of a training config: finetune, or train (from scratch)."""
    return "finetune" if config.mode == "finetune" else "train"


class TrainingRunDir(RunDir):
    """The files of one training run (finetune or train): log, metrics rows, the checkpoint path.

    Claimed, replaced and resumed as :class:`autoprune._run_dir.RunDir` says.
    """

    KINDS = ("finetune", "train")

    def __init__(self, path: str | os.PathLike[str], kind: str | None = None) -> None:
        super().__init__(path, kind)
        self.last = self.path / "checkpoints" / "last.pt"
        self.metrics_csv = self.path / "metrics.csv"

    @classmethod
    def start(cls, path: str | os.PathLike[str], config: TrainConfig, policy: Policy | None, *, overwrite: bool = False,
              cli_options: Mapping[str, Any] | None = None) -> TrainingRunDir:
        """Create the run of ``config`` (:meth:`create`) with its policy copy and the metrics header."""
        run = cls.create(path, kind=kind_of(config), overwrite=overwrite, cli_options=cli_options)
        if policy is not None:
            policy.save(run.path / "policy.json")
        with open(run.metrics_csv, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)
        run.write_config(config.to_dict())  # last: a run with a config.yaml has all its files
        return run

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
