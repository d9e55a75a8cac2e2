"""Network Slimming (Liu et al. 2017): an L1 penalty on BatchNorm scales, then one global threshold on |gamma|.

1. Sparsity training: from the pretrained weights, SGD on the cross-entropy
   plus ``lambda * sum |gamma|`` (``lambda`` 1e-4, the paper's CIFAR value).
   The L1 term drives the scales of unimportant channels towards 0, which is
   what makes one threshold meaningful across layers.
2. One threshold ``t`` on the ``bn-gamma`` scores (a channel's |gamma|, summed
   over the group's BatchNorms when several write it): a channel is kept iff
   its score is at least ``t``. The paper fixes a percentile of channels; here
   the percentile is the knob mapped to the MACs target: ``t`` is the lowest
   threshold whose pruned model meets the target, found by bisection over the
   sorted scores on the cost model.
3. Fine-tuning is the usual ``autoprune finetune`` of the policy, from the
   sparsity-trained weights the search saves beside it.

Where this differs from the paper, and why:

- It starts from the pretrained weights and trains ``epochs`` (1 by default,
  a CPU budget of about 15 minutes for resnet56 on 2 cores) instead of 160
  epochs from scratch; on a GPU set ``epochs`` to 20-40. Short training
  shrinks gamma less, so the threshold is closer to plain bn-gamma pruning.
- Only the BatchNorms of the space's searchable groups are penalised: the
  others are never pruned, and shrinking them would only cost accuracy.
- The threshold is on raw |gamma| (the paper's), unlike the ``global``
  method, which divides each group's scores by their mean.
- With ``bounded: true`` (default) the space's keep-ratio bounds clip each
  group's count, as they do for every agent, so comparisons share one space;
  the groups lifted to the lower bound are listed in the policy's provenance.
  ``bounded: false`` is the paper's pure threshold: a group whose every
  channel falls below it is refused, naming the group.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError, BudgetError
from ..pruning import Metric, PrunableSpace, channel_scores, check_target, flops_metric
from ._method import Context, Outcome
from ._settings import check, is_number, settings_from
from ._training import TrainSettings, train_resumable

__all__ = ["CHECKPOINT", "SlimmingSettings", "bn_penalty", "run", "sparsity_train", "threshold_counts"]

CHECKPOINT = "sparsity.pt"


@dataclass(frozen=True)
class SlimmingSettings(TrainSettings):
    """The preset's ``hyperparameters``, besides the training's (YAML key ``lambda`` is :attr:`penalty`).

    Attributes:
        penalty: lambda, the weight of the L1 term on BatchNorm scales.
        bounded: clip each group's count to the space's bounds (see the module docstring).

    ``epochs`` 0: threshold the pretrained scales, no training.
    """

    penalty: float = 1e-4
    bounded: bool = True

    min_epochs: ClassVar[int] = 0
    aliases: ClassVar[dict[str, str]] = {"lambda": "penalty"}  # read by settings_from

    def __post_init__(self) -> None:
        super().__post_init__()
        check(is_number(self.penalty) and self.penalty >= 0, "lambda must be a number of at least 0",
              **{"lambda": self.penalty})


def _penalised(model: nn.Module, space: PrunableSpace) -> list[tuple[str, torch.Tensor]]:
    """(BatchNorm name, its channels that belong to a searchable group) for every such BatchNorm."""
    channels: dict[str, set[int]] = {}
    for group in space.searchable:
        found = False
        for m in group.producers():
            if isinstance(model.get_submodule(m.module), nn.modules.batchnorm._BatchNorm):
                channels.setdefault(m.module, set()).update(int(i) for i in m.index)
                found = True
        if not found:
            raise AutopruneError(f"Network Slimming needs a BatchNorm after every pruned group, but group "
                                 f"{group.name!r} of {space.arch} has none; use another agent (e.g. global-l1).")
    return [(name, torch.tensor(sorted(idx), dtype=torch.long)) for name, idx in channels.items()]


def bn_penalty(model: nn.Module, space: PrunableSpace, penalty: float) -> Callable[[nn.Module], torch.Tensor]:
    """``penalty * sum |gamma|`` over the BatchNorm channels of the searchable groups, as a function of the model.

    Its gradient is the paper's subgradient ``penalty * sign(gamma)``.
    """
    targets = _penalised(model, space)

    def l1(net: nn.Module) -> torch.Tensor:
        total = None
        for name, idx in targets:
            w = net.get_submodule(name).weight
            term = w[idx.to(w.device)].abs().sum()
            total = term if total is None else total + term
        return penalty * total

    return l1


def sparsity_train(context: Context, settings: SlimmingSettings) -> nn.Module:
    """A copy of ``context.model`` trained with the L1 term; resumes from ``work_dir/sparsity.pt``.

    The checkpoint is rewritten atomically after every epoch; one written with other settings is refused.
    """
    model = copy.deepcopy(context.model)
    if settings.epochs == 0:
        return model
    training = train_resumable(context, model, settings, "slimming", file=CHECKPOINT,
                               regularizer=bn_penalty(model, context.space, settings.penalty))
    return training.trainer.model.eval()


def _limits(space: PrunableSpace, bounded: bool) -> tuple[np.ndarray, np.ndarray]:
    """The fewest and most channels each group may keep: the space's bounds, or 0 and all."""
    n = len(space.searchable)
    if not bounded:
        return np.zeros(n, dtype=np.int64), space.channels
    lo, hi = space.spec.bounds
    return space.counts(np.full(n, lo)), space.counts(np.full(n, hi))


def threshold_counts(space: PrunableSpace, fraction: float, scores: dict[str, np.ndarray], *,
                     bounded: bool = True, metric: Metric | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """One threshold on the raw ``scores`` of all searchable groups, the lowest that meets ``fraction`` of
    ``metric`` (None: the MACs).

    Channels are ranked by score over all groups; keeping the ``i`` best (each group's count
    rounded up to the space's step, and clipped to its bounds when ``bounded``) costs MACs that
    grow with ``i``, so the largest ``i`` within budget is found by bisection. Returns the counts,
    the threshold (the lowest kept score) and each group's count under the threshold alone.
    Without bounds, a group that keeps no channel is refused, naming it.
    """
    metric = flops_metric(space) if metric is None else metric
    check_target(space, fraction, metric)
    groups = space.searchable
    n = len(groups)
    step = space.steps
    floor, ceil = _limits(space, bounded)
    flat = np.concatenate([np.asarray(scores[g.name], dtype=np.float64) for g in groups])
    order = np.argsort(-flat, kind="stable")  # ties: earlier groups, then lower channels, as top_k
    ranking = np.repeat(np.arange(n), space.channels)[order]

    def raw(i: int) -> np.ndarray:
        return np.bincount(ranking[:i], minlength=n)

    def counts_at(i: int) -> np.ndarray:
        return np.clip(np.ceil(raw(i) / step) * step, floor, ceil).astype(np.int64)

    budget = fraction * metric.base
    i = max(bisect.bisect_right(range(len(order) + 1), budget, key=lambda k: metric(counts_at(k))) - 1, 0)
    threshold = float(flat[order[i - 1]]) if i > 0 else float("inf")
    counts = counts_at(i)
    if not bounded and (counts == 0).any():
        j = int(np.flatnonzero(counts == 0)[0])
        raise BudgetError(
            f"Network Slimming's threshold |gamma| >= {threshold:.4g}, the lowest that meets {fraction:g} of the {metric.unit}, "
            f"removes every channel of group {groups[j].name!r} (its largest score is {scores[groups[j].name].max():.4g}). "
            "Keep the space's bounds (bounded: true), lower lambda or the epochs, raise the target, or exclude the "
            "group from the space.")
    return counts, threshold, raw(i)


def run(context: Context) -> Outcome:
    """Sparsity-train, then threshold |gamma| to the MACs target; the trained weights come with the counts."""
    settings = settings_from(SlimmingSettings, context.hyperparameters, "slimming")
    if context.criterion != "bn-gamma":
        raise AutopruneError(f"Network Slimming ranks channels by |gamma| (criterion bn-gamma), but the preset says "
                             f"criterion {context.criterion!r}; set criterion: bn-gamma.")
    space = context.space
    with torch.no_grad():
        before = float(bn_penalty(context.model, space, 1.0)(context.model))
    trained = sparsity_train(context, settings)
    scores = channel_scores(trained, space.searchable, "bn-gamma")
    counts, threshold, raw = threshold_counts(space, context.target, scores, bounded=settings.bounded,
                                              metric=context.metric)
    with torch.no_grad():
        after = float(bn_penalty(trained, space, 1.0)(trained))
    floor, ceil = _limits(space, settings.bounded)
    weights = None
    if settings.epochs > 0:
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in trained.state_dict().items()}
    info = {"knob": "one threshold on |gamma| over all groups (the paper's pruned percentile), the lowest whose "
                    "MACs meet the target",
            "threshold": threshold, "lambda": settings.penalty, "epochs": settings.epochs,
            "sum_abs_gamma": {"before": before, "after": after},
            # groups the space's bounds kept off the threshold's count (bounded: true)
            "floored": [g.name for g, r, f in zip(space.searchable, raw, floor) if r < f],
            "capped": [g.name for g, r, c in zip(space.searchable, raw, ceil) if r > c]}
    return Outcome(counts=counts, kept=space.select(counts, scores), weights=weights, info=info)
