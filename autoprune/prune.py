"""One-shot pruning to a budget: the `autoprune prune` command as a library call."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .errors import unknown_name
from .policy import Policy, make_policy
from .pruning import METHODS, check_target, counts_for_target, parse_target, space_for

__all__ = ["prune"]


def prune(
    model: nn.Module,
    arch: str,
    target: str | float,
    *,
    method: str = "uniform",
    criterion: str = "l1",
    space: str | os.PathLike[str] | None = None,
    dataset: str = "cifar10",
    checkpoint: str | None = None,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
) -> tuple[Policy, nn.Module]:
    """Prune ``model`` to ``target`` of its MACs (a fraction, or a count like "60M").

    ``uniform`` keeps one ratio everywhere; ``global`` thresholds all channels
    on ``criterion``. Channels within each group are chosen by ``criterion``.
    Returns the policy and the physically pruned copy (``model`` is untouched).
    """
    if method not in METHODS:
        raise unknown_name("method", method, METHODS)
    sp = space_for(model, arch, space)
    fraction = parse_target(target, sp.base.macs)
    check_target(sp, fraction)
    scores = sp.scores(criterion, batches=batches, seed=seed)
    counts = counts_for_target(sp, fraction, method, scores)
    kept = sp.select(counts, scores)
    ratios = np.array(counts) / np.array([g.channels for g in sp.searchable])
    num_classes = model.get_submodule(sp.info.classifier).out_features
    policy = make_policy(sp, ratios, kept, dataset=dataset, num_classes=num_classes, checkpoint=checkpoint,
                         criterion=criterion, target={"metric": "macs", "fraction": fraction},
                         provenance={"agent": method, "seed": seed})
    return policy, sp.apply(kept)
