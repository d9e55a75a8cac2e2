"""Channel Pruning (He, Zhang and Sun, ICCV 2017): LASSO channel selection, least-squares reconstruction.

Layer by layer, in forward order over the searchable groups of the space:

1. Sample feature maps on a few training batches: each consumer conv of the
   group is sampled at ``points`` random output positions per image (He et
   al.: 10), over ``images`` training images. The input patches ``X`` come
   from the model pruned so far, the outputs ``Y`` to reconstruct from the
   original model, so each layer also makes up for the error the layers
   before it left (He et al., "whole model pruning").
2. Choose the channels to keep by LASSO: ``beta`` minimises
   ``||Y - sum_i beta_i X_i W_i^T||^2 / S + alpha ||beta||_1``; He et al.
   raise ``alpha`` until only the count of non-zero coefficients is left.
   Here the exact LASSO path (LARS) is walked down from the top until the
   count is reached, which gives that set without a search over ``alpha``.
3. Refit the consumers' weights on the kept channels by least squares (``Y``
   on the kept part of ``X``), and write them into the model pruned so far.

The shared machinery (sampling, the path, the refit) lives in
:class:`autoprune.pruning.Reconstruction`, which also serves the channel
criterion ``reconstruction`` that any policy can use.

Groups and residual blocks. A group's channels are one conv's outputs and
its consumers' inputs, so "choosing the input channels of the consumer" and
"pruning the producer's filters" are the same cut. In a residual block the
inner space ('inner' for the CIFAR ResNets) holds exactly what He et al.
prune there: the channel between the block's first and second conv; the
LASSO selects the second conv's inputs and the first conv loses the
matching filters. The channel-selection layer of seed 001 exists to thin the
*block input* of the first conv without touching the residual stream; that
cut is not a group here (the stream's channels are one coupled group), so it
is not offered, and residual groups are refused with the reason.

Knob. He et al.'s native knob is a kept-channel count per layer (a fixed
ratio per layer for their ResNet and Xception results). The MACs target is
mapped to the largest uniform keep ratio within it
(:func:`autoprune.pruning.uniform_counts`), and the last group then takes
the largest count that still fits, as the search environment does, so the
answer ends within one channel of that group below the target.

Hyperparameters (``context.hyperparameters``): ``images`` (training images
sampled, default 500), ``points`` (output positions sampled per image, 10),
``batch_size`` (images per forward pass, 100). The returned ``weights`` hold
the refit consumer weights, zero on the channels not kept.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from ..pruning import Metric, PrunableSpace, Reconstruction, consumers, flops_metric, sample_features, uniform_counts
from ._method import Context, Outcome, train_loader
from ._settings import check, is_int, settings_from

__all__ = ["LassoSettings", "run"]


@dataclass(frozen=True)
class LassoSettings:
    """The preset's ``hyperparameters`` (see the module docstring); each an integer of at least 1."""

    images: int = 500
    points: int = 10
    batch_size: int = 100

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            check(is_int(value) and value >= 1, f"{f.name} must be an integer of at least 1", **{f.name: value})


def _counts(space: PrunableSpace, target: float, metric: Metric | None) -> np.ndarray:
    """The largest uniform keep ratio within ``target`` of ``metric`` (None: MACs), then the last group filled up to it."""
    metric = flops_metric(space) if metric is None else metric
    counts = uniform_counts(space, target, metric)
    budget = target * metric.base
    for option in space.count_options(len(counts) - 1)[::-1]:
        trial = np.append(counts[:-1], option)
        if metric(trial) <= budget:
            return trial.astype(np.int64)
    return counts


def _batches(context: Context, settings: LassoSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Enough augmented training batches (never the holdout) for ``images`` images, drawn from the seed."""
    available = len(context.evaluator.splits.train)
    size = min(settings.batch_size, settings.images, available)
    count = min(math.ceil(settings.images / size), available // size)
    return list(itertools.islice(iter(train_loader(context, size, seed=context.seed)), count))


def run(context: Context) -> Outcome:
    """Prune each searchable group by LASSO channel selection and refit its consumers by least squares."""
    settings = settings_from(LassoSettings, context.hyperparameters, "lasso")
    space, original = context.space, context.model
    for group in space.searchable:
        consumers(original, group)  # refuse what reconstruction cannot handle before any work
    counts = _counts(space, context.target, context.metric)
    batches = _batches(context, settings)
    sampling = {"points": settings.points, "seed": context.seed}

    modules = [m.module for g in space.searchable for m in consumers(original, g)]
    targets: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    for features in sample_features(original, modules, batches, inputs=False, **sampling):
        for name, (_, y) in features.items():
            targets[name].append(y)

    work = copy.deepcopy(original).eval()
    kept, layers = {}, {}
    for group, n in tqdm(list(zip(space.searchable, counts)), desc="lasso", leave=False, disable=not context.progress):
        problem = Reconstruction(work, group, refit=True)
        names = [m.module for m in problem.consumers]
        for i, features in enumerate(sample_features(work, names, batches, **sampling)):
            for name in names:
                problem.add(name, features[name][0], targets[name][i])
        keep = problem.select(int(n))
        refit = problem.refit(keep)
        layers[group.name] = {"samples": problem.samples, "error_dropped": round(problem.error(keep), 6),
                              "error_refit": round(problem.error(keep, refit), 6)}
        with torch.no_grad():
            for name, weight in refit.items():
                work.get_submodule(name).weight.copy_(weight)
        kept[group.name] = keep

    info = {
        "knob": "kept channels per layer (He et al. 2017); the MACs target maps to the largest uniform keep ratio "
                "within it, the last group filling the rest",
        "images": sum(len(x) for x, _ in batches), "points_per_image": settings.points,
        # per group: samples, and the relative squared error of its consumers' outputs with the dropped
        # channels simply removed, then after the least-squares refit
        "layers": layers,
    }
    weights = {k: v.detach().clone() for k, v in work.state_dict().items()}
    return Outcome(counts=counts, kept=kept, weights=weights, info=info)
