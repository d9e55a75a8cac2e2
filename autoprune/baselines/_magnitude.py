"""Uniform and global magnitude pruning (Li et al. 2017; Molchanov et al. 2019) as methods.

The same rules as ``autoprune prune --method uniform|global``
(:func:`autoprune.pruning.uniform_counts`, :func:`~autoprune.pruning.global_counts`), so a table row named ``uniform`` or
``global-l1`` is exactly what ``prune`` would cut; nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pruning import global_counts, uniform_counts
from ._method import Context, Outcome, criterion_scores
from ._settings import check, is_int, settings_from

__all__ = ["MagnitudeSettings", "global_threshold", "uniform"]


@dataclass(frozen=True)
class MagnitudeSettings:
    """The preset's ``hyperparameters``: ``batches``, the training batches taylor's gradients are summed over."""

    batches: int = 10

    def __post_init__(self) -> None:
        check(is_int(self.batches) and self.batches >= 1, "batches must be an integer of at least 1",
              batches=self.batches)


def _scores(context: Context, method: str) -> dict[str, np.ndarray]:
    """The criterion's scores, after reading the preset's hyperparameters."""
    settings = settings_from(MagnitudeSettings, context.hyperparameters, method)
    return criterion_scores(context, batches=settings.batches)


def _outcome(context: Context, counts: np.ndarray, scores: dict[str, np.ndarray], knob: str) -> Outcome:
    return Outcome(counts=counts, kept=context.space.select(counts, scores),
                   info={"knob": knob, "criterion": context.criterion})


def uniform(context: Context) -> Outcome:
    """One keep ratio in every group: the largest that meets the target (bisection on the budget metric)."""
    counts = uniform_counts(context.space, context.target, context.metric)
    return _outcome(context, counts, _scores(context, "uniform"),
                    "one keep ratio for every group, the largest whose MACs meet the target")


def global_threshold(context: Context) -> Outcome:
    """One threshold on every group's criterion scores, each group's divided by their mean.

    The mean normalisation lets a layer of small weights compete with one of
    large weights; the threshold is the lowest that meets the MACs target.
    """
    scores = _scores(context, "global")
    counts = global_counts(context.space, context.target, scores, metric=context.metric)
    return _outcome(context, counts, scores,
                    "one threshold on mean-normalised scores of all groups, the lowest whose MACs meet the target")
