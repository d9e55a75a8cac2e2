"""The one resumable training loop of the methods that train (Network Slimming, DCP, SCP, DExp).

``WORK_DIR/<file>`` holds the :class:`~autoprune.training.Trainer`'s state
(weights, optimiser, schedule, RNG), the method's own state (utilities, noise
generator), every epoch's stats and the fingerprint of the run: method,
architecture, space, target, seed, settings, and whatever else the method
names (DExp: the digest of the masks it holds). It is rewritten atomically
after every epoch. A rerun in the same directory continues after the last
finished epoch and, since the data order of epoch ``e`` depends only on the
seed and ``e``, ends with the weights of an uninterrupted run; a finished run
is not trained again. A checkpoint of another fingerprint is refused, never
mixed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .._io import load_torch, save_torch
from ..errors import AutopruneError
from ..training import Recipe, Trainer
from ._method import Context, train_loader
from ._settings import check, is_int, is_number

__all__ = ["MethodState", "TrainSettings", "Training", "train_resumable"]


@dataclass(frozen=True)
class TrainSettings:
    """The training every method that trains runs: SGD (Nesterov) with a cosine schedule over ``epochs``.

    Each such method's settings extend it with the method's own knobs. The
    defaults are a CPU budget (one epoch from the pretrained weights, at the
    fine-tuning learning rate); a GPU preset raises ``epochs``.
    ``min_epochs`` is 0 for a method whose training may be skipped.
    """

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 1e-4
    momentum: float = 0.9

    min_epochs: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check(is_int(self.epochs) and self.epochs >= self.min_epochs,
              f"epochs must be an integer of at least {self.min_epochs}", epochs=self.epochs)
        for name in ("lr", "weight_decay", "momentum"):
            check(is_number(getattr(self, name)), f"{name} must be a number", **{name: getattr(self, name)})
        self.recipe(epochs=max(self.epochs, 1))  # the recipe checks the rest and says which is wrong

    def recipe(self, *, epochs: int | None = None) -> Recipe:
        return Recipe(epochs=self.epochs if epochs is None else epochs, lr=self.lr, batch_size=self.batch_size,
                      weight_decay=self.weight_decay, momentum=self.momentum, nesterov=self.momentum > 0,
                      schedule="cosine")

    def training(self) -> TrainSettings:
        """The training fields alone, for a method whose other knobs leave the training as it is."""
        return TrainSettings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                             weight_decay=self.weight_decay, momentum=self.momentum)


class MethodState(Protocol):
    """What a method keeps across epochs besides the trainer's state."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Training:
    """What :func:`train_resumable` did: the trainer, every epoch's stats, and the epochs read from the checkpoint."""

    trainer: Trainer
    history: list[dict[str, Any]]
    resumed: int


def train_resumable(context: Context, model: nn.Module, settings: TrainSettings, method: str, *,
                    file: str | None = None, identity: Mapping[str, Any] | None = None,
                    state: MethodState | None = None, regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
                    attach: Callable[[Trainer], None] | None = None,
                    end_epoch: Callable[[], None] | None = None) -> Training:
    """Train ``model`` (hooked by the method) for ``settings.epochs`` (at least 1), checkpointing after every epoch.

    ``file`` names the checkpoint in ``context.work_dir`` (default ``<method>.pt``);
    ``identity`` adds to its fingerprint; ``state`` is saved and restored with
    the trainer's; ``regularizer`` is added to every batch's loss; ``attach``
    gets the trainer once it is built, before a checkpoint is read into it
    (hooks on its model and optimiser stay through the read); ``end_epoch``
    runs after each epoch, before the checkpoint.
    """
    recipe = settings.recipe()
    trainer = Trainer(model, recipe, train_loader(context, recipe.batch_size), context.device, regularizer=regularizer)
    if attach is not None:
        attach(trainer)
    path = context.work_dir / (file or f"{method}.pt")
    fingerprint = {"method": method, "arch": context.space.arch, "space": context.space.name,
                   "target": float(context.target), "seed": int(context.seed), "settings": asdict(settings),
                   **(identity or {})}
    history: list[dict[str, Any]] = []
    if path.exists():
        saved = load_torch(path, f"The {method} checkpoint", hint="Delete it to start over.")
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            found = saved.get("fingerprint") if isinstance(saved, dict) else None
            raise AutopruneError(f"{path} was written with other settings ({found}, now {fingerprint}); delete it to "
                                 "train again, or resume with the settings of that run.")
        trainer.load_state_dict(saved["trainer"])
        if state is not None:
            state.load_state_dict(saved["method"])
        history = list(saved["history"])
    resumed = trainer.epoch
    while trainer.epoch < recipe.epochs:
        stats = trainer.train_epoch(progress=context.progress)
        if end_epoch is not None:
            end_epoch()
        history.append(asdict(stats))
        save_torch(path, {"fingerprint": fingerprint, "trainer": trainer.state_dict(),
                          "method": state.state_dict() if state is not None else {}, "history": history})
    return Training(trainer, history, resumed)
