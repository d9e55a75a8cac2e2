"""Training recipes (optimiser and schedule settings), the presets, and the Scratch-E/B epoch rule.

Two presets ship, one recipe per mode each ("finetune": from the pruned
pretrained weights; "scratch": from random initialisation):

``cifar`` reproduces the literature on a GPU.
    Fine-tune: SGD with Nesterov momentum 0.9, lr 0.01 annealed to 0 by a
    cosine over 100 epochs, batch 128, weight decay 1e-4. 1e-4 rather than
    5e-4 because it is the decay the registered CIFAR ResNets were trained
    with (He et al. 2016, the akamaster checkpoints): fine-tuning with a
    stronger decay first spends epochs shrinking the weights towards another
    equilibrium. Pass ``--weight-decay 5e-4`` for VGG-style checkpoints trained
    with it. lr 0.01 (a tenth of the from-scratch rate) and 100 epochs are the
    AMC / "Rethinking the value of network pruning" fine-tuning budget for CIFAR.
    Scratch: lr 0.1, 160 epochs, divided by 10 at 50 % and 75 % (He et al.;
    Liu et al. 2019 use the same for Scratch-E/B), batch 128, decay 1e-4.
``cpu`` is a short budget for a CPU: the same optimiser, 2 epochs of
    fine-tuning (lr 0.01, cosine) or 3 epochs from scratch (lr 0.1, cosine),
    enough to see the pruned model recover most of its accuracy on CIFAR.

A preset may also be a YAML file with ``finetune:`` and/or ``scratch:``
mappings of :class:`Recipe` fields; unknown keys are refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .._device import PRECISIONS
from ..errors import AutopruneError, unknown_name

__all__ = ["MODES", "PRESETS", "SCHEDULES", "Recipe", "load_recipe", "scratch_epochs"]

MODES = ("finetune", "scratch")
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class Recipe:
    """How to train: SGD settings and the learning-rate schedule.

    Attributes:
        epochs: passes over the training split (the holdout is never trained on).
        lr: initial learning rate.
        batch_size: training batch size.
        weight_decay: L2 penalty, applied to every parameter (the CIFAR ResNet recipe).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (needs momentum > 0).
        schedule: "cosine" (to 0, stepped every batch) or "step" (times ``gamma`` at each milestone).
        milestones: for "step", fractions of the training at which the lr drops.
        gamma: the drop factor of "step".
        label_smoothing: of the cross-entropy target, in [0, 1).
        precision: "auto" (float16 autocast on CUDA, bfloat16 on a CPU with native bfloat16, else float32:
            see :func:`~autoprune._device.autocast_dtype`) or "float32" (no autocast: how every CPU trained before
            the option existed, and what reproduces the figures measured so).
    """

    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be an integer of at least 1", epochs=self.epochs)
        _check(self.lr > 0, "lr must be positive", lr=self.lr)
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be an integer of at least 1",
               batch_size=self.batch_size)
        _check(self.weight_decay >= 0, "weight_decay must be at least 0", weight_decay=self.weight_decay)
        _check(0 <= self.momentum < 1, "momentum must lie in [0, 1)", momentum=self.momentum)
        _check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0", momentum=self.momentum)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        _check(all(0 < m < 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
               "milestones must be increasing fractions in (0, 1)", milestones=list(self.milestones))
        _check(0 < self.gamma <= 1, "gamma must lie in (0, 1]", gamma=self.gamma)
        _check(0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)", label_smoothing=self.label_smoothing)
        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def _check(ok: bool, rule: str, **value: object) -> None:
    if not ok:
        (name, v), = value.items()
        raise AutopruneError(f"{rule}, but got {name}={v!r}.")


PRESETS: dict[str, dict[str, Recipe]] = {
    "cifar": {"finetune": Recipe(epochs=100, lr=0.01, schedule="cosine"),
              "scratch": Recipe(epochs=160, lr=0.1, schedule="step", milestones=(0.5, 0.75))},
    "cpu": {"finetune": Recipe(epochs=2, lr=0.01, schedule="cosine"),
            "scratch": Recipe(epochs=3, lr=0.1, schedule="cosine")},
}


def load_recipe(preset: str | os.PathLike[str], mode: str, *, device_type: str = "cpu",
                **overrides: Any) -> tuple[str, Recipe]:
    """The recipe of ``preset`` for ``mode``, with ``overrides`` (None values ignored) applied.

    ``preset`` is "auto" (``cifar`` when ``device_type`` is "cuda", else ``cpu``),
    a preset name, or a YAML file. Returns the preset's resolved name and the recipe.
    """
    if mode not in MODES:
        raise unknown_name("training mode", mode, MODES)
    text = str(preset)
    if text == "auto":
        text = "cifar" if device_type == "cuda" else "cpu"
    if text.endswith((".yaml", ".yml")):
        recipes = _read_yaml(Path(text))
    elif text in PRESETS:
        recipes = PRESETS[text]
    else:
        raise unknown_name("training preset", text, [*PRESETS, "auto"])
    if mode not in recipes:
        raise AutopruneError(f"Training preset {text} has no {mode!r} recipe; add a {mode}: section.")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(Recipe)})
    if unknown:
        raise AutopruneError(f"Unknown recipe settings {unknown}; known: {[f.name for f in fields(Recipe)]}.")
    return text, replace(recipes[mode], **given)


def _read_yaml(path: Path) -> dict[str, Recipe]:
    if not path.is_file():
        raise AutopruneError(f"Training preset file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise AutopruneError(f"Training preset {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not data or set(data) - set(MODES):
        raise AutopruneError(f"Training preset {path} must be a mapping with keys among {list(MODES)}.")
    known = {f.name for f in fields(Recipe)}
    recipes = {}
    for mode, settings in data.items():
        if not isinstance(settings, dict) or set(settings) - known:
            bad = sorted(set(settings) - known) if isinstance(settings, dict) else settings
            raise AutopruneError(f"Training preset {path}, {mode}: unknown settings {bad}; known: {sorted(known)}.")
        if "epochs" not in settings or "lr" not in settings:
            raise AutopruneError(f"Training preset {path}, {mode}: epochs and lr are required.")
        recipes[mode] = Recipe(**settings)
    return recipes


def scratch_epochs(epochs: int, scratch: str, base_macs: int, pruned_macs: int) -> int:
    """Epochs to train a pruned architecture from scratch, after Liu et al. 2019 (Rethinking...).

    Scratch-E ("E") trains as many epochs as the base model (``epochs``).
    Scratch-B ("B") gives the pruned model the base model's compute budget:
    ``epochs * base_macs / pruned_macs``, capped at twice ``epochs`` (the
    paper's cap, beyond which longer training stops paying), rounded to the
    nearest epoch.
    """
    if scratch not in ("E", "B"):
        raise unknown_name("scratch mode", scratch, ["E", "B"])
    if pruned_macs <= 0 or base_macs <= 0:
        raise AutopruneError(f"MACs must be positive, but got base_macs={base_macs}, pruned_macs={pruned_macs}.")
    if scratch == "E":
        return epochs
    return max(1, round(epochs * min(base_macs / pruned_macs, 2.0)))
