"""The training loop: SGD, a per-batch lr schedule, mixed precision, optional distillation, exact resume.

Everything a resumed run needs to continue bit for bit is in
:meth:`Trainer.state_dict`: the weights, the optimiser (momentum buffers), the
schedule, the AMP loss scaler, the global RNG states and the number of epochs
done. The data order needs no state: epoch ``e`` always draws its order, crops
and flips from a generator seeded with ``seed + e`` (:class:`DeviceLoader`; a streamed sample's
random-resized-crop from ``(seed, e, index)``, :class:`StreamLoader`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import _rng
from .._device import autocast_dtype
from ..data import DeviceLoader, StreamLoader
from ._recipe import Recipe

__all__ = ["EpochStats", "Trainer", "kd_loss"]


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch did: mean loss, top-1 on the (augmented) training batches, speed."""

    epoch: int  # 1-based: the epoch just finished
    loss: float
    accuracy: float
    lr: float  # at the end of the epoch
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float,
            weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al.'s distillation loss: ``(1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)``.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard one's
    as ``T`` grows. Computed in float32 whatever the autocast dtype.
    """
    student, teacher = student.float(), teacher.float()
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return (1 - weight) * hard + weight * soft


class Trainer:
    """Trains ``model`` on ``loader`` with ``recipe``; optionally distils from ``teacher``.

    The model (and teacher) run channels-last: on a CPU too, where a pruned CIFAR ResNet's training step is
    faster so (scripts/bench_train.py). They run under the autocast of ``recipe.precision``
    (:func:`~autoprune._device.autocast_dtype`): float16 with a gradient scaler on CUDA, bfloat16 on a CPU
    with native bfloat16 (no scaler: bfloat16 has float32's range), float32 elsewhere.

    Args:
        model: the network to train (moved to ``device``).
        recipe: optimiser and schedule settings; the schedule spans ``recipe.epochs``.
        loader: training batches, shuffled and augmented; its epoch is set before every epoch.
        device: where to train.
        teacher: a frozen network whose softened outputs the student also fits (None: no KD).
        kd_temperature, kd_weight: see :func:`kd_loss`.
        regularizer: a term added to every batch's loss, computed from the model (the
            pruning methods that train: Network Slimming's L1 on BN scales, SCP's FLOPs term).
    """

    def __init__(self, model: nn.Module, recipe: Recipe, loader: DeviceLoader | StreamLoader, device: torch.device, *,
                 teacher: nn.Module | None = None, kd_temperature: float = 4.0, kd_weight: float = 0.9,
                 regularizer: Callable[[nn.Module], torch.Tensor] | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.model = model.to(device, memory_format=torch.channels_last)
        self.teacher = teacher.to(device, memory_format=torch.channels_last).eval() if teacher is not None else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.recipe, self.loader = recipe, loader
        self.kd_temperature, self.kd_weight = kd_temperature, kd_weight
        self.regularizer = regularizer
        self.optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                         nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        steps = recipe.epochs * len(loader)
        if recipe.schedule == "cosine":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, steps))
        else:
            milestones = [round(m * steps) for m in recipe.milestones]
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=recipe.gamma)
        self.amp_dtype = autocast_dtype(device, recipe.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch = 0  # epochs done

    def _autocast(self):
        return nullcontext() if self.amp_dtype is None else torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
        with torch.no_grad():
            target = self.teacher(x)
        return kd_loss(logits, target, y, temperature=self.kd_temperature, weight=self.kd_weight,
                       label_smoothing=self.recipe.label_smoothing)

    def train_epoch(self, progress: bool = True, file: Any = None) -> EpochStats:
        """One pass over ``loader``; the running loss is summed on the device (no per-batch sync)."""
        self.loader.load_state_dict({"epoch": self.epoch, "seed": self.loader.seed})
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        images = 0
        start = time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", unit="batch", leave=False,
                   disable=not progress, file=file)
        for x, y in bar:
            with self._autocast():
                logits = self.model(x)
                loss = self._loss(logits, x, y)
                if self.regularizer is not None:
                    loss = loss + self.regularizer(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            images += len(y)
        bar.close()
        self.epoch += 1
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        return EpochStats(self.epoch, loss_sum.item() / max(images, 1), correct.item() / max(images, 1),
                          self.optimizer.param_groups[0]["lr"], images, seconds)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": _rng.capture()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; afterwards the run goes on as if never interrupted."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when written where the scaler is off (not float16)
            self.scaler.load_state_dict(state["scaler"])
        _rng.restore(state["rng"])
        self.epoch = int(state["epoch"])
