"""DCP, dynamic channel propagation (Shi et al., ICPR 2020; seed 000): pruning during training.

Every searchable group keeps a utility per channel, an exponential moving
average of a first-order Taylor score updated every iteration; only the
channels of highest utility take part in the forward pass and receive
gradients (the others are masked to zero), and the kept set is recomputed as
the utilities move, so a channel can leave it and come back. When training
ends the channels outside the set are removed physically.

The seed gives the idea; the details it leaves open, as chosen here:

- *Where.* Masks and scores act where the group's channels are read, at the
  input of each consumer (:mod:`._masks`): masking there is exactly the
  pruned model for every kind of group, residual widths included.
- *Score.* ``|sum over the batch, positions and consumers of a * dL/dx|``,
  ``a`` the unmasked input of a consumer and ``x`` what it reads (the masked
  input): the first-order change of the loss if the channel were removed,
  for a kept channel, or restored, for a masked one. So masked channels keep
  being scored and can return; their weights, frozen by the mask, are the
  weights they return with.
- *Utility.* ``u <- decay * u + (1 - decay) * score`` every iteration, from 0.
  The decay is constant (the seed's ``-decay`` is an initial value; its
  schedule is not given).
- *Budget.* The seed's knob, a global pruning rate ``pr`` of channels, is
  replaced by the MACs target: the kept set is the global ranking of the
  utilities, each group's divided by their mean (Taylor scores differ in
  scale between layers; :func:`~autoprune.pruning.global_counts`),
  cut at the largest set within the target through the space's cost model
  and its bounds, then topped up in the last group
  (:func:`._masks.counts_to_target`); within a group the channels of highest
  utility are kept. The outcome's ``info`` gives the equivalent ``pr``.
- *Warm-up and refresh.* The first ``warmup`` iterations train the whole
  network while the utilities settle; then the set is recomputed every
  ``interval`` iterations.
- *Mixed precision.* On CUDA the gradients the hooks see carry the loss
  scale; it is divided out, and an iteration whose gradients overflowed (the
  scaler skips its step) leaves the utilities as they were.
- *The answer.* The set in force at the end of training (the network that was
  actually trained) with the trained weights: cutting them out is exactly the
  masked network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..pruning import Metric, PrunableSpace, check_target
from ..training import Trainer
from ._masks import GroupMasks, counts_to_target
from ._method import Context, Outcome
from ._settings import check, settings_from
from ._training import TrainSettings, train_resumable

__all__ = ["DCPSettings", "Propagation", "run"]


@dataclass(frozen=True)
class DCPSettings(TrainSettings):
    """DCP's hyperparameters (the preset's ``hyperparameters``), besides the training's.

    Attributes:
        decay: of the utilities' moving average, in [0, 1).
        warmup: iterations before the first masking (at least 1: the utilities need a score).
        interval: iterations between recomputations of the kept set.
    """

    decay: float = 0.9
    warmup: int = 20
    interval: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.decay < 1, "decay must lie in [0, 1)", decay=self.decay)
        check(isinstance(self.warmup, int) and self.warmup >= 1, "warmup must be an integer of at least 1",
              warmup=self.warmup)
        check(isinstance(self.interval, int) and self.interval >= 1, "interval must be an integer of at least 1",
              interval=self.interval)


class Propagation:
    """DCP's utilities and kept set on ``model``, whose searchable groups (of ``space``) it masks.

    A forward pass in training mode first folds the previous iteration's
    Taylor scores into the utilities (:meth:`update`) and, when due,
    recomputes the kept set (:meth:`select`). The hooks stay until :meth:`remove`.
    """

    def __init__(self, model: nn.Module, space: PrunableSpace, target: float, *, decay: float = 0.9,
                 warmup: int = 20, interval: int = 10, metric: Metric | None = None) -> None:
        self.space, self.target, self.metric = space, target, metric
        self.decay, self.warmup, self.interval = decay, warmup, interval
        self.masks = GroupMasks(model, space.searchable, capture=True)
        device = next(model.parameters()).device
        self.utility = {g.name: torch.zeros(g.channels, device=device) for g in space.searchable}
        self.iteration = 0  # utility updates so far
        self.counts: np.ndarray | None = None  # the kept set's counts; None while every channel is on
        self.changes = 0  # channels that re-entered the set after the first selection
        self.loss_scale: Callable[[], float | torch.Tensor] = lambda: 1.0  # the AMP scaler's, once training starts
        self._scale: float | torch.Tensor = 1.0  # the loss scale of the backward pass whose scores are pending
        self._handle = model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module: nn.Module, _args: tuple) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        self.update()
        due = self.counts is None or (self.iteration - self.warmup) % self.interval == 0
        if self.iteration >= self.warmup and due:
            self.select()
        self._scale = self.loss_scale()

    def update(self) -> bool:
        """Fold the scores of the last backward pass into the utilities; False if there were none to fold.

        Scores that are not finite (an overflowed AMP step, which the scaler
        skips) leave the utilities as they were; no device synchronisation.
        """
        scores = self.masks.take()
        if scores is None:
            return False
        finite = torch.stack([torch.isfinite(s).all() for s in scores.values()]).all()
        for name, s in scores.items():
            u = self.utility[name]
            u.copy_(torch.where(finite, self.decay * u + (1 - self.decay) * s.abs() / self._scale, u))
        self.iteration += 1
        return True

    def select(self) -> None:
        """Recompute the kept set from the utilities: the best that fit the MACs target."""
        scores = {n: u.double().cpu().numpy() for n, u in self.utility.items()}
        counts = counts_to_target(self.space, self.target, scores, normalise=True, metric=self.metric)
        for name, idx in self.space.select(counts, scores).items():
            mask = torch.zeros_like(self.masks.values[name])
            mask[torch.as_tensor(idx, device=mask.device)] = 1.0
            if self.counts is not None:
                self.changes += int(((mask > 0) & (self.masks.values[name] == 0)).sum())
            self.masks.values[name] = mask
        self.counts = counts

    def kept(self) -> dict[str, np.ndarray]:
        """The kept channels of every searchable group (all of them during the warm-up)."""
        return {n: np.flatnonzero(m.cpu().numpy() > 0) for n, m in self.masks.values.items()}

    def remove(self) -> None:
        self.masks.remove()
        self._handle.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"utility": {n: u.cpu() for n, u in self.utility.items()},
                "masks": {n: m.cpu() for n, m in self.masks.values.items()},
                "iteration": self.iteration, "changes": self.changes,
                "counts": None if self.counts is None else torch.as_tensor(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, u in state["utility"].items():
            self.utility[name] = u.to(self.utility[name].device)
        for name, m in state["masks"].items():
            self.masks.values[name] = m.to(self.masks.values[name].device)
        self.iteration, self.changes = int(state["iteration"]), int(state["changes"])
        self.counts = None if state["counts"] is None else state["counts"].numpy().astype(np.int64)


def run(context: Context) -> Outcome:
    """Train with dynamic channel propagation; answer with the kept set and the trained weights."""
    settings = settings_from(DCPSettings, context.hyperparameters, "dcp")
    check_target(context.space, context.target, context.metric)
    model = copy.deepcopy(context.model).to(context.device)
    prop = Propagation(model, context.space, context.target, decay=settings.decay, warmup=settings.warmup,
                       interval=settings.interval, metric=context.metric)

    def attach(trainer: Trainer) -> None:
        def loss_scale() -> float | torch.Tensor:  # a copy of the scaler's scale tensor: no synchronisation
            scale = getattr(trainer.scaler, "_scale", None)
            if trainer.scaler.is_enabled() and scale is not None:
                return scale.detach().clone()
            return trainer.scaler.get_scale()  # before the first step: the initial scale; off (CPU): 1.0

        prop.loss_scale = loss_scale

    try:
        history = train_resumable(context, model, settings, "dcp", state=prop, end_epoch=prop.update,
                                  attach=attach).history
    finally:
        prop.remove()
    if prop.counts is None:  # training ended within the warm-up
        prop.select()
    kept = prop.kept()
    total = int(context.space.channels.sum())
    info = {
        "method": "dcp",
        "knob": "the seed's global channel pruning rate pr is replaced by the MACs target: the kept set is the "
                "global top of the mean-normalised utilities that fits the target (cost model), recomputed every "
                "interval iterations after the warm-up",
        "pr": 1.0 - float(sum(len(k) for k in kept.values())) / total,
        "iterations": prop.iteration,
        "set_changes": prop.changes,
        "training": asdict(settings),
        "history": history,
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return Outcome(counts=np.asarray(prop.counts, dtype=np.int64), kept=kept, weights=weights, info=info)
