"""Physical pruning as library calls: ``prune`` to a budget (the `autoprune prune` command), ``apply`` a policy."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import unknown_name
from ..models import ModelSpec
from ..policy import Policy, policy_for
from ._budget import ALLOCATIONS, check_target, counts_for_target, parse_target
from ._metric import MetricLike, make_metric
from ._space import space_for

__all__ = ["apply", "prune"]


def prune(
    model: nn.Module,
    arch: ModelSpec | str,
    target: str | float,
    *,
    method: str = "uniform",
    criterion: str = "l1",
    space: str | os.PathLike[str] | None = None,
    dataset: str = "cifar10",
    checkpoint: str | None = None,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
    metric: MetricLike = "flops",
    round_to: int | None = None,
) -> tuple[Policy, nn.Module]:
    """Prune ``model`` to ``target`` of a budget ``metric``: its MACs by default (a fraction, or a count like
    "60M"), "params" (a fraction or "1.2M"), or a metric made from the space (a latency model: a fraction, or
    "4.5ms"; see :func:`make_metric`).

    ``uniform`` keeps one ratio everywhere; ``global`` thresholds all channels
    on ``criterion``. Channels within each group are chosen by ``criterion``.
    ``arch`` is the model's spec (a :class:`~autoprune.models.ModelSpec` or a zoo name). ``round_to`` makes
    every group keep a multiple of that many channels (see :class:`PrunableSpace`).
    Returns the policy and the physically pruned copy (``model`` is untouched).
    """
    if method not in ALLOCATIONS:
        raise unknown_name("method", method, ALLOCATIONS)
    sp = space_for(model, arch, space, round_to=round_to)
    budget = make_metric(sp, metric)
    fraction = parse_target(target, budget.base, budget.name)
    check_target(sp, fraction, budget)
    scores = sp.scores(criterion, batches=batches, seed=seed)
    kept = sp.select(counts_for_target(sp, fraction, method, scores, budget), scores)
    policy = policy_for(sp, kept, target=fraction, dataset=dataset, checkpoint=checkpoint, criterion=criterion,
                        provenance={"agent": method, "seed": seed}, metric=budget)
    return policy, sp.apply(kept)


def apply(model: nn.Module, policy: Policy) -> nn.Module:
    """A new, physically smaller model: ``model`` pruned as ``policy`` says (``model`` is untouched).

    The dependency structure of ``model`` is traced on first use and cached
    with it, so applying many policies to the same model costs no tracing.
    """
    space = space_for(model, policy.model_spec, policy.space)
    policy.validate(space)
    return space.apply(policy.channels)
