"""What a training run depends on: :class:`TrainConfig` (the run's config.yaml) and how it is built."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._device import resolve_device
from ..errors import AutopruneError, unknown_name
from ..models import ModelSpec, replay_spec
from ..policy import Policy
from ._recipe import MODES, Recipe, load_recipe, scratch_epochs

__all__ = ["Distillation", "TrainConfig", "make_config"]


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a frozen teacher (Hinton et al. 2015).

    Attributes:
        teacher: a checkpoint of the policy's architecture, "pretrained", or a pruned model file;
            None: the unpruned model the policy was cut from (its arch and ``TrainConfig.checkpoint``).
        temperature: softmax temperature of both networks' outputs in the soft term.
        weight: of the soft term; the cross-entropy gets ``1 - weight``. T=4 and 0.9 are the
            defaults of the CRD/RepDistiller CIFAR benchmarks.
    """

    teacher: str | None = None
    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise AutopruneError(f"The KD temperature must be positive, but got temperature={self.temperature}.")
        if not 0 <= self.weight <= 1:
            raise AutopruneError(f"The KD weight must lie in [0, 1], but got weight={self.weight}.")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as its config.yaml, which ``--resume`` replays.

    Attributes:
        mode: "finetune" (the policy's pruned model from the checkpoint's weights) or "scratch"
            (random initialisation: the policy's architecture, or ``arch`` unpruned without a policy).
        data_dir: the dataset folder.
        recipe: optimiser and schedule (epochs already scaled for Scratch-B).
        arch: the architecture; taken from the policy when there is one.
        policy: path of the policy.json (absolute), or None to train ``arch`` unpruned.
        checkpoint: the weights the policy was cut from ("pretrained" or a path): fine-tuning
            starts from them, and they are the default KD teacher.
        scratch: "E" or "B" (Liu et al.'s budgets) for a policy trained from scratch.
        base_epochs: the unscaled epochs Scratch-B was derived from.
        preset: the preset the recipe came from.
        kd: distillation settings, or None.
        dataset, holdout, seed, device: as for the evaluator; ``seed`` also fixes the
            initialisation and every epoch's data order.
        split_seed: the seed of the holdout split alone (None: ``seed``). Fixed while ``seed`` varies, runs
            differ only in their training randomness and are judged on the same held-out images: what
            measures a fine-tune's own seed-to-seed noise.
        eval_batch_size: batch size of the holdout and test evaluations.
        cache_limit, skip_bad_images, data_workers, resize: how the data is loaded (``autoprune data``).
        model: the model spec as a mapping (None: the zoo model ``arch``); ``--resume`` rebuilds it, for a
            user's factory by importing the factory the original command named.
    """

    mode: str
    data_dir: str
    recipe: Recipe
    arch: str | None = None
    policy: str | None = None
    checkpoint: str = "pretrained"
    scratch: str | None = None
    base_epochs: int | None = None
    preset: str = "cpu"
    kd: Distillation | None = None
    dataset: str = "cifar10"
    holdout: int = 5000
    seed: int = 0
    split_seed: int | None = None
    device: str = "auto"
    eval_batch_size: int = 500
    cache_limit: str | None = None  # data: see autoprune.data.load_dataset; None: a quarter of the memory
    skip_bad_images: bool = False
    data_workers: int | None = None  # decoding processes of streamed data; None: the CPUs, at most 8
    resize: int | None = None  # evaluation resize of streamed data; None: input size / 0.875
    model: dict[str, Any] | None = None

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.model, "The run's model") if self.model else ModelSpec(str(self.arch))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise unknown_name("training mode", self.mode, MODES)
        if isinstance(self.recipe, dict):
            self.recipe = Recipe(**self.recipe)
        if isinstance(self.kd, dict):
            self.kd = Distillation(**self.kd)
        if self.mode == "finetune" and self.policy is None:
            raise AutopruneError("Fine-tuning needs a policy (--policy policy.json); to train from random "
                                 "initialisation use `autoprune train`.")
        if self.mode == "finetune" and self.scratch is not None:
            raise AutopruneError(f"scratch={self.scratch!r} is for training from scratch (`autoprune train`), "
                                 "not for fine-tuning.")
        if self.policy is None and self.scratch is not None:
            raise AutopruneError(f"--scratch {self.scratch} needs --policy: it says how long to train a pruned "
                                 "architecture from scratch.")
        if self.mode == "scratch" and self.policy is not None and self.scratch not in ("E", "B"):
            raise unknown_name("scratch mode", str(self.scratch), ["E", "B"])
        if self.arch is None:
            raise AutopruneError("--arch or --model is required (see `autoprune models`).")
        self.model_spec  # an unknown zoo name or a malformed spec fails here
        if self.policy is None and self.kd is not None and self.kd.teacher is None:
            raise AutopruneError("Distillation while training an unpruned model needs a teacher: pass --kd-teacher.")
        for name, low in (("holdout", 1), ("eval_batch_size", 1)):  # the holdout judges every epoch
            if getattr(self, name) < low:
                raise AutopruneError(f"{name} must be at least {low}, but got {name}={getattr(self, name)}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) - known:
            raise AutopruneError(f"Not a training config (unknown keys {sorted(set(data) - known)}).")
        return cls(**data)


def _absolute(path: str | os.PathLike[str] | None) -> str | None:
    if path is None or str(path) == "pretrained":
        return None if path is None else "pretrained"
    return str(Path(path).expanduser().resolve())


def make_config(mode: str, data_dir: str | os.PathLike[str], *, policy: str | os.PathLike[str] | None = None,
                arch: str | None = None, checkpoint: str | os.PathLike[str] = "pretrained", scratch: str | None = None,
                preset: str = "auto", device: str = "auto", kd: Distillation | None = None,
                recipe: dict[str, Any] | None = None, model: ModelSpec | dict[str, Any] | None = None, **settings: Any) -> TrainConfig:
    """Build a :class:`TrainConfig`: resolve the preset for the device, scale Scratch-B's epochs, absolute paths.

    ``preset="auto"`` picks ``cifar`` when ``device`` resolves to CUDA here, else
    ``cpu``; a caller that trains elsewhere (a Ray trial) resolves it first.

    ``recipe`` overrides preset values (None values are ignored); ``settings``
    are the remaining :class:`TrainConfig` fields (dataset, holdout, seed, ...). ``model`` is the spec the
    user gave (``--model``): a policy of a user's model needs it (see :func:`~autoprune.models.replay_spec`).
    With ``scratch="B"`` the (preset or given) epochs are the base model's and
    are scaled by :func:`scratch_epochs`.
    """
    if isinstance(model, dict):  # as a sweep's cell carries it
        model = ModelSpec.from_dict(model)
    loaded = Policy.load(policy) if policy is not None else None
    if loaded is not None and arch is not None and arch != loaded.arch:
        raise AutopruneError(f"--arch {arch} contradicts the policy, which is for {loaded.arch}; drop --arch.")
    if loaded is not None:
        spec = replay_spec(loaded.model_spec, model, what=f"Policy {policy}")
    else:
        spec = model if model is not None else ModelSpec(arch) if arch else None
    recorded = None if spec is None or (spec.is_zoo and spec.identity() == ModelSpec(spec.source).identity()) \
        else spec.to_dict()
    if mode == "scratch" and loaded is not None and scratch is None:
        scratch = "E"
    device_type = resolve_device(device).type if str(preset) == "auto" else "cpu"  # only "auto" depends on it
    name, resolved = load_recipe(preset, mode, device_type=device_type, **(recipe or {}))
    base_epochs = None
    if scratch is not None and loaded is not None:
        base_epochs = resolved.epochs
        resolved = Recipe(**{**resolved.to_dict(), "epochs": scratch_epochs(base_epochs, scratch, loaded.base_macs,
                                                                            loaded.macs)})
    if kd is not None and kd.teacher is not None:
        kd = Distillation(_absolute(kd.teacher), kd.temperature, kd.weight)
    return TrainConfig(mode=mode, data_dir=str(_absolute(data_dir)), recipe=resolved,
                       arch=spec.source if spec is not None else None, policy=_absolute(policy), model=recorded,
                       checkpoint=str(_absolute(checkpoint)), scratch=scratch, base_epochs=base_epochs, preset=name,
                       kd=kd, device=device, **settings)
