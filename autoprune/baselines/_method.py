"""What a handcrafted method is given and what it returns.

A method is one function ``run(context) -> Outcome``. It may train (Network
Slimming, DCP, SCP), reconstruct weights (Channel Pruning) or only rank
channels; whatever it does, it answers with channel counts per searchable
group of the context's space, so the search judges it exactly like an agent:
same space, cost model, evaluator, holdout and test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import DeviceLoader, StreamLoader, make_loader
from ..evaluate import Evaluator
from ..errors import BudgetError
from ..pruning import Metric, PrunableSpace, channel_scores, taylor_gradients

__all__ = ["Context", "Outcome", "criterion_scores", "train_loader"]


@dataclass
class Context:
    """Everything a method may use.

    Attributes:
        model: the unpruned model with its pretrained weights (on the CPU, or wherever the caller
            keeps it). Never modify it: work on ``copy.deepcopy(model)``, moved to ``device``.
        space: its prunable space (groups, bounds, cost model, criteria, ``apply``).
        evaluator: the data (``evaluator.dataset``; train on ``evaluator.splits.train`` only, never on
            the holdout or the test split) and the device (``evaluator.device``).
        target: the fraction of the budget metric to keep (MACs unless ``metric`` says otherwise).
        criterion: the preset's channel-selection criterion, for methods that rank channels.
        hyperparameters: the preset's ``hyperparameters`` mapping (the method's own knobs).
        work_dir: a directory of the run for the method's files (masks, training checkpoints), so
            an interrupted method can resume: ``<run>/method/t<target>``, one per target, kept
            across ``--resume``. It may not exist yet.
        seed: seeds every random choice of the method.
        progress: show progress bars.
        metric: the run's budget metric (:class:`~autoprune.pruning.Metric`; None: MACs); methods meet
            ``target`` of it through the budget helpers, which take it.
    """

    model: nn.Module
    space: PrunableSpace
    evaluator: Evaluator
    target: float
    criterion: str = "l1"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    work_dir: Path = Path(".")
    seed: int = 0
    progress: bool = True
    metric: Metric | None = None

    def require_macs(self, method: str) -> None:
        """Refuse a budget other than MACs for a method whose training or count is of MACs by design."""
        if self.metric is not None and self.metric.name != "flops":
            raise BudgetError(f"{method} trains or counts against MACs by design and cannot meet a "
                              f"{self.metric.name} budget; use --target-flops, or another agent (uniform, "
                              "global-l1, slimming, lasso, dcp, or a searching agent).")

    @property
    def device(self) -> torch.device:
        return self.evaluator.device


@dataclass
class Outcome:
    """A method's answer for one target.

    Attributes:
        counts: kept channels per searchable group of ``context.space``, in its order.
        kept: kept channel indices per searchable group name; None: the ``counts[j]`` best by the
            context's criterion, scored on ``weights``.
        weights: a state dict of the unpruned architecture (same keys and shapes as
            ``context.model``) that the kept channels are cut from, for methods that train or
            refit; None: the pretrained weights. The search saves it beside the policy, whose
            checkpoint hash then names it, so ``autoprune finetune --checkpoint`` starts from it.
        macs: the MACs to report when the method removes more than whole channels (DExp's zeroed
            kernels); None: the cost model's count of ``counts``. The policy then states these MACs and
            records the channels' own count as ``provenance["channel_macs"]``.
        info: what the method wants recorded in the policy's provenance: how its native knob
            was mapped to the MACs target, its training budget, thresholds.
    """

    counts: np.ndarray
    kept: dict[str, np.ndarray] | None = None
    weights: dict[str, torch.Tensor] | None = None
    macs: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def train_loader(context: Context, batch_size: int = 128, *, seed: int | None = None) -> DeviceLoader | StreamLoader:
    """Shuffled, augmented batches of the training split (never the holdout) on the context's device.

    The last incomplete batch is dropped (BatchNorm's statistics of a batch of 2 are noise) unless
    the split is smaller than one batch, as in the tests' tiny datasets.
    """
    evaluator, info = context.evaluator, context.space.info  # the model spec: its normalisation
    pick = evaluator.splits.train
    return make_loader(evaluator.dataset, "train", pick, batch_size=batch_size, mean=info.mean, std=info.std,
                       device=context.device, shuffle=True, augment=True, drop_last=len(pick) > batch_size,
                       seed=context.seed if seed is None else seed, channels_last=True,
                       input_size=evaluator.input_size, transforms=evaluator.transforms, workers=evaluator.workers)


def criterion_scores(context: Context, model: nn.Module | None = None, *, batches: int = 10) -> dict[str, np.ndarray]:
    """Per-channel scores of the context's criterion for every searchable group, on ``model``.

    ``model`` (default ``context.model``) must have the unpruned architecture (a trained copy).
    ``taylor`` accumulates gradients over the first ``batches`` training batches, so its scores
    come from the training split like every other statistic a method computes.
    """
    model = context.model if model is None else model
    grads = None
    if context.criterion == "taylor":
        model = copy.deepcopy(model).to(context.device)  # where the batches are; the caller's stays untouched
        loader = train_loader(context, batch_size=min(128, len(context.evaluator.splits.train)))
        grads = taylor_gradients(model, (b for b, _ in zip(loader, range(batches))))
    return channel_scores(model, context.space.searchable, context.criterion, seed=context.seed, grads=grads)
