"""Training: fine-tune a pruned model, or train an architecture from scratch (Scratch-E/B), with optional KD.

Typical use::

    from autoprune.training import make_config, train

    config = make_config("finetune", "data/cifar10", policy="runs/x/policy.json", preset="cpu")
    result = train(config, "runs/x-ft")
    result.metrics["test_top1"]

Several policies at once, one Ray Tune trial each: :func:`finetune_on_ray`.
"""

from ._config import Distillation, TrainConfig, make_config
from ._loop import EpochStats, Trainer, kd_loss
from ._ray import finetune_on_ray, finetune_trial, read_experiment, resume_experiment
from ._recipe import MODES, PRESETS, SCHEDULES, Recipe, load_recipe, scratch_epochs
from ._run import METRIC_FIELDS, EpochEnd, TrainResult, resume_config, train

__all__ = [
    "METRIC_FIELDS",
    "MODES",
    "PRESETS",
    "SCHEDULES",
    "Distillation",
    "EpochEnd",
    "EpochStats",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "finetune_on_ray",
    "finetune_trial",
    "kd_loss",
    "load_recipe",
    "make_config",
    "read_experiment",
    "resume_config",
    "resume_experiment",
    "scratch_epochs",
    "train",
]
