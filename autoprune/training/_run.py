"""A training run and its directory.

    RUN/autoprune-run.json    the marker of a run of autoprune (see autoprune._run_dir)
    RUN/config.yaml           the resolved TrainConfig (what --resume replays)
    RUN/policy.json           the policy trained (a copy; updated with the final accuracies)
    RUN/log.txt               human-readable progress
    RUN/metrics.csv           one row per epoch (epoch 0: the starting holdout accuracy)
    RUN/tb/                   TensorBoard events
    RUN/checkpoints/last.pt   weights, optimiser, schedule, scaler, RNG, epoch: rewritten atomically every epoch
    RUN/model.pt              the final model: save_pruned (load_pruned loads it), or a plain state dict
                              for an unpruned model (load_model(arch, RUN/model.pt) loads it)
    RUN/result.json           final holdout and test accuracy, cost, time

The test split is evaluated once, after the last epoch; every epoch is judged
on the holdout split of the training set, which training never sees.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._device import resolve_device
from .._io import json_bytes, load_torch, reading, save_torch
from ..checkpoints import PRUNED_FORMAT, load_model, load_pruned, pruned_state
from ..data import Transforms, load_dataset, make_loader, make_splits
from ..errors import AutopruneError, CheckpointError
from ..evaluate import Evaluator
from ..models import ModelSpec, create
from ..policy import Policy
from ..pruning import apply, space_for
from ._config import TrainConfig
from ._loop import Trainer
from ._run_dir import METRIC_FIELDS, TrainingRunDir, kind_of, resume_config

__all__ = ["METRIC_FIELDS", "EpochEnd", "TrainResult", "resume_config", "train"]


@dataclass(frozen=True)
class EpochEnd:
    """Passed to ``on_epoch_end`` after each epoch's checkpoint is on disk.

    ``metrics`` holds the epoch's row of metrics.csv (and the test accuracy
    when ``final``); ``checkpoints`` is the folder holding ``last.pt``.
    """

    epoch: int
    metrics: dict[str, float]
    checkpoints: Path
    final: bool


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]  # result.json
    model_path: Path


def _load_teacher(spec: str, arch: ModelSpec, num_classes: int) -> nn.Module:
    """A checkpoint of ``arch`` or "pretrained", or a pruned model file (a zoo arch, or ``arch``) written by autoprune."""
    if spec != "pretrained" and Path(spec).is_file():
        try:
            obj = load_torch(spec, "KD teacher")
        except CheckpointError:  # load_model below says why
            obj = None
        if isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT:
            teacher, policy = load_pruned(spec, model=None if policy_is_zoo(spec) else arch)
            if policy.num_classes != num_classes:
                raise CheckpointError(f"KD teacher {spec} has {policy.num_classes} classes, the student {num_classes}.")
            return teacher
    return load_model(arch, spec, num_classes=num_classes if arch.is_zoo else None)[0]


def policy_is_zoo(path: str) -> bool:
    """Whether the pruned model file at ``path`` was cut from a zoo model (rebuilt without the user's spec)."""
    obj = load_torch(path, "KD teacher")
    return Policy.from_dict(obj["policy"], source=path).model_spec.is_zoo


def _refuse_kernel_sparse(policy: Policy, source: str | None, mode: str) -> None:
    """Refuse a policy whose MACs count zeroed kernels (DExp's): training here could not hold them at zero.

    Such a policy states ``macs`` below its channels' own cost, which it records
    as ``provenance["channel_macs"]``; the pruned model trained here is dense,
    so the kernels would grow back and the stated MACs would no longer hold.
    """
    if not policy.kernel_sparse:
        return
    channel_macs = policy.provenance["channel_macs"]
    method = policy.provenance.get("method", "its method")
    raise AutopruneError(
        f"Policy {source} states {policy.macs} MACs by zeroing kernels ({method}), below the {channel_macs} its "
        f"channels cost. Training it here ({mode}) trains the pruned channels densely: the zeroed kernels would grow "
        f"back silently and the stated MACs would not hold. {method} fine-tunes with its masks held inside the "
        "method: raise `epochs` in its preset's hyperparameters (e.g. agents/dexp.yaml) and search again; the weights it "
        "saves beside the policy (weights-<target>.pt) are then the fine-tuned, masked model.")


def _build(config: TrainConfig, policy: Policy | None, num_classes: int) -> tuple[nn.Module, nn.Module | None]:
    """The student (pruned from the checkpoint, or randomly initialised) and the KD teacher, if any."""
    arch = config.model_spec
    zoo_classes = (lambda n: n) if arch.is_zoo else (lambda n: None)  # a factory's classes are its own
    torch.manual_seed(config.seed)
    base = None
    if policy is None:
        model = create(arch, num_classes=zoo_classes(num_classes))
    elif config.mode == "finetune":
        base, sha = load_model(arch, config.checkpoint, num_classes=zoo_classes(policy.num_classes))
        policy.validate(space_for(base, arch, policy.space), checkpoint=sha)
        model = apply(base, policy)
    else:
        # The pruned architecture, initialised by slicing a fresh seeded draw of the base model's
        # initialiser: which channels are kept is irrelevant for random weights, and every pruned
        # conv feeds a BatchNorm, which makes the forward pass blind to the smaller fan-in's scale.
        model = apply(create(arch, num_classes=zoo_classes(policy.num_classes)), policy)
    teacher = None
    if config.kd is not None:
        if config.kd.teacher is None and base is not None:
            teacher = base  # apply() left it untouched: the unpruned model the policy was cut from
        else:
            teacher = _load_teacher(config.kd.teacher or config.checkpoint, arch, num_classes)
    return model.train(), teacher


def train(config: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
          state: dict[str, Any] | None = None, progress: bool = True,
          on_epoch_end: Callable[[EpochEnd], None] | None = None) -> TrainResult:
    """Train as ``config`` says into the run directory ``out``, or continue it (``resume``).

    ``state`` resumes from an explicit checkpoint (a Ray Tune trial's) instead
    of ``out/checkpoints/last.pt``. A run that is already complete is not
    trained again: its result is returned. Ctrl-C between epochs leaves the
    last epoch's checkpoint; ``resume`` then ends with the same weights as an
    uninterrupted run. ``out`` is claimed before any work
    (:class:`~autoprune._run_dir.RunDir`), and a run that fails before its
    first epoch is on disk removes what it wrote. ``progress`` is recorded, so
    a resume from the command line keeps ``--no-progress``.
    """
    out = Path(out)
    resuming = resume or state is not None
    if resuming:
        run = TrainingRunDir.open(out)
        policy = Policy.load(out / "policy.json") if config.policy is not None else None
    else:
        TrainingRunDir.check(out, kind=kind_of(config), overwrite=overwrite)
        policy = Policy.load(config.policy) if config.policy is not None else None
    if policy is not None:
        _refuse_kernel_sparse(policy, config.policy, config.mode)
    device = resolve_device(config.device)
    data = load_dataset(config.data_dir, name=config.dataset, cache_limit=config.cache_limit,
                        skip_bad_images=config.skip_bad_images)
    if policy is not None and policy.num_classes != data.num_classes:
        raise AutopruneError(f"The policy's model has {policy.num_classes} outputs but {data.name} has "
                             f"{data.num_classes} classes.")
    model, teacher = _build(config, policy, data.num_classes)  # a policy for another checkpoint fails here
    if resuming:
        for stale in run.last.parent.glob(".*.tmp"):  # a write cut short by a kill
            stale.unlink()
        if state is None and run.last.is_file():
            state = load_torch(run.last, "Training checkpoint", hint=_RESTART)
    splits = make_splits(len(data.train_labels), holdout=config.holdout,
                         seed=config.seed if config.split_seed is None else config.split_seed)
    info = config.model_spec.defaults()  # its normalisation
    size = info.input_size[-1]
    transforms = Transforms.for_input(size, data.image_size, resize=config.resize) if config.resize else None
    evaluator = Evaluator(data, splits, mean=info.mean, std=info.std, device=device, batch_size=config.eval_batch_size,
                          input_size=size, transforms=transforms, workers=config.data_workers)
    recipe = config.recipe
    loader = make_loader(data, "train", splits.train, batch_size=recipe.batch_size, mean=info.mean, std=info.std,
                         device=device, shuffle=True, augment=True, drop_last=len(splits.train) > recipe.batch_size,
                         seed=config.seed, channels_last=True, input_size=size,
                         transforms=transforms, workers=config.data_workers)
    trainer = Trainer(model, recipe, loader, device, teacher=teacher,
                      kd_temperature=config.kd.temperature if config.kd else 4.0,
                      kd_weight=config.kd.weight if config.kd else 0.9)
    if not resuming:
        run = TrainingRunDir.start(out, config, policy, overwrite=overwrite, cli_options={"progress": progress})
    with run.cleanup_unless_started():
        return _Session(config, run, trainer, evaluator, policy, state, resuming, progress, on_epoch_end).run()


_RESTART = "Delete it to train this run again from the start, or restore it from a copy of the run."

_TAGS = {"train_loss": "train/loss", "train_top1": "train/top1", "lr": "train/lr", "holdout_top1": "holdout/top1",
         "holdout_top5": "holdout/top5", "images_per_s": "speed/images_per_s"}  # metrics.csv column -> TensorBoard


class _Session:
    """The epoch loop of one run: evaluation, metrics, checkpoints, the final model."""

    def __init__(self, config: TrainConfig, run: TrainingRunDir, trainer: Trainer, evaluator: Evaluator,
                 policy: Policy | None, state: dict[str, Any] | None, resuming: bool, progress: bool,
                 on_epoch_end: Callable[[EpochEnd], None] | None) -> None:
        self.config, self.dir, self.trainer, self.evaluator, self.policy = config, run, trainer, evaluator, policy
        self.state, self.resuming, self.progress, self.on_epoch_end = state, resuming, progress, on_epoch_end

    def run(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        run, trainer, epochs = self.dir, self.trainer, self.config.recipe.epochs
        if self.state is not None:
            with reading(run.last, "Training checkpoint", hint=_RESTART):
                trainer.load_state_dict(self.state)
            run.truncate(trainer.epoch)
            run.log(f"resumed after epoch {trainer.epoch} (pid {os.getpid()} on {socket.gethostname()})")
        else:
            if self.resuming:  # stopped before the first checkpoint: start over
                run.truncate(-1)
            run.log(f"started {self.config.mode} of {self.config.arch} for {epochs} epochs on {trainer.device} "
                    f"(pid {os.getpid()} on {socket.gethostname()})")
        purge = trainer.epoch + 1 if self.state is not None else 0 if self.resuming else None
        writer = SummaryWriter(str(run.path / "tb"), purge_step=purge)
        try:
            if self.state is None:
                hold = self.evaluator.holdout(trainer.model)
                run.append({"epoch": 0, "holdout_top1": hold.top1, "holdout_top5": hold.top5})
                writer.add_scalar("holdout/top1", hold.top1, 0)
                run.log(f"epoch 0: holdout top-1 {hold.top1:.4f}")
            bar = tqdm(total=epochs, initial=trainer.epoch, desc=self.config.mode, unit="epoch", disable=not self.progress)
            while trainer.epoch < epochs:
                metrics = self._epoch(writer)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", holdout=f"{metrics['holdout_top1']:.4f}")
                if trainer.epoch < epochs and self.on_epoch_end is not None:
                    self.on_epoch_end(EpochEnd(trainer.epoch, metrics, run.last.parent, final=False))
            bar.close()
            result = self._finish(writer)
        except KeyboardInterrupt:
            run.log(f"interrupted after epoch {trainer.epoch}; continue with --resume {run.path}")
            raise
        finally:
            writer.close()
        if self.on_epoch_end is not None:
            self.on_epoch_end(EpochEnd(epochs, {**result.metrics}, run.last.parent, final=True))
        return result

    def _epoch(self, writer: Any) -> dict[str, Any]:
        trainer, run = self.trainer, self.dir
        stats = trainer.train_epoch(progress=self.progress)
        hold = self.evaluator.holdout(trainer.model)
        metrics = {"epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.loss, "train_top1": stats.accuracy,
                   "holdout_top1": hold.top1, "holdout_top5": hold.top5, "images_per_s": stats.images_per_s,
                   "seconds": stats.seconds}
        run.append(metrics)  # before the checkpoint: a resume drops rows newer than its checkpoint
        save_torch(run.last, trainer.state_dict())  # atomic: Ctrl-C leaves the previous epoch's
        run.mark_started()
        for key, tag in _TAGS.items():
            writer.add_scalar(tag, metrics[key], stats.epoch)
        run.log(f"epoch {stats.epoch}: loss {stats.loss:.4f}, train top-1 {stats.accuracy:.4f}, holdout top-1 "
                f"{hold.top1:.4f}, {stats.images_per_s:.0f} images/s")
        return metrics

    def _finish(self, writer: Any) -> TrainResult:
        run, model = self.dir, self.trainer.model
        result_file, model_file = run.path / "result.json", run.path / "model.pt"
        if result_file.is_file() and model_file.is_file():
            return TrainResult(run.path, json.loads(result_file.read_text()), model_file)
        rows = run.rows()
        final = rows[-1]
        test = self.evaluator.test(model, progress="test" if self.progress else None)  # the only test evaluation
        writer.add_scalar("test/top1", test.top1, self.trainer.epoch)
        metrics: dict[str, Any] = {
            "epoch": self.trainer.epoch, "holdout_top1": float(final["holdout_top1"]),
            "holdout_top5": float(final["holdout_top5"]), "test_top1": test.top1, "test_top5": test.top5,
            "start_holdout_top1": float(rows[0]["holdout_top1"]) if rows[0]["epoch"] == "0" else None,
            "train_seconds": sum(float(r["seconds"]) for r in rows if r["seconds"]),
        }
        model = model.to("cpu", memory_format=torch.contiguous_format).eval()
        if self.policy is not None:
            policy = Policy.from_dict(self.policy.to_dict())
            policy.provenance = {**policy.provenance, "trained": {
                "mode": self.config.mode, "scratch": self.config.scratch, "epochs": self.trainer.epoch,
                "run": str(run.path), "before": dict(policy.accuracy)}}
            policy.accuracy = {"holdout": metrics["holdout_top1"], "test": test.top1}
            metrics.update(macs=policy.macs, params=policy.params, macs_fraction=policy.macs_fraction)
            outputs = {"model.pt": lambda f: torch.save(pruned_state(model, policy), f),
                       "policy.json": lambda f: f.write(json_bytes(policy.to_dict()))}
        else:
            outputs = {"model.pt": lambda f: torch.save({"state_dict": model.state_dict(), "arch": self.config.arch}, f)}
        result = json_bytes(metrics)
        run.write_outputs({**outputs, "result.json": lambda f: f.write(result)})  # all or none; result.json says done
        run.log(f"done: holdout top-1 {metrics['holdout_top1']:.4f}, test top-1 {test.top1:.4f}; wrote {model_file}")
        return TrainResult(run.path, metrics, model_file)
