"""Helpers of the mask methods' tests (DCP, SCP, DExp): a tiny Context, the target's tolerance, an interrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import zoo_space


def tiny_context(work_dir: Path, arch: str = "resnet20", target: float = 0.5, *, images: int = 48,
                 space: str | None = None, seed: int = 0, **hyperparameters):
    """A Context on ``images`` training images of 4 classes (class c < 3 brightens colour c), 8 held out."""
    from autoprune.baselines import Context
    from autoprune.data import Dataset, make_splits
    from autoprune.evaluate import Evaluator
    from autoprune.models import get_model_info

    model, prunable = zoo_space(arch, space)
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 4
        x = torch.randint(0, 100, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
        for c in range(3):
            x[labels == c, c] += 100
        return x, labels

    (xtr, ytr), (xte, yte) = split(images + 8), split(8)
    data = Dataset(name="colours", classes=[f"c{k}" for k in range(4)], train_images=xtr, train_labels=ytr,
                   test_images=xte, test_labels=yte, source="memory")
    info = get_model_info(arch)
    evaluator = Evaluator(data, make_splits(len(ytr), holdout=8, seed=0), mean=info.mean, std=info.std, device="cpu")
    return Context(model=model, space=prunable, evaluator=evaluator, target=target,
                   hyperparameters={"batch_size": 8, **hyperparameters}, work_dir=Path(work_dir), seed=seed,
                   progress=False)


def within_target(space, counts: np.ndarray, target: float) -> None:
    """The environment's tolerance: at or below the target, and one more channel of the last group would not fit."""
    n = len(space.searchable)
    floor, ceil = space.counts(np.full(n, space.spec.bounds[0])), space.counts(np.full(n, space.spec.bounds[1]))
    assert np.all(counts >= floor) and np.all(counts <= ceil)
    budget = target * space.base.macs
    assert space.macs(counts) <= budget
    if counts[-1] < ceil[-1]:
        more = counts.copy()
        more[-1] += 1
        assert space.macs(more) > budget


def interrupt_in_second_epoch(run, context) -> None:
    """``run(context)``, stopped as by Ctrl-C when its second training epoch starts (the first is checkpointed)."""
    from autoprune.training import Trainer

    calls = []
    train_epoch = Trainer.train_epoch

    def stop_in_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", stop_in_second)
        with pytest.raises(KeyboardInterrupt):
            run(context)
