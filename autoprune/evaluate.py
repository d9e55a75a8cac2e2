"""The evaluator: one protocol to judge every pruned model the same way.

Pruning shifts the statistics each BatchNorm sees, so a freshly pruned model
is judged after *adaptive BN*: running statistics re-estimated on a few
training batches (a cumulative average, in train mode, without gradients).
Accuracy is then measured on the holdout split (a fixed part of the training
set never used for fine-tuning) inside searches, and on the test split once,
at the end.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from ._device import resolve_device
from ._side_by_side import default_workers, side_by_side
from .data import Dataset, Splits, Transforms, load_dataset, make_loader, make_splits
from .errors import AutopruneError

if TYPE_CHECKING:
    import numpy as np

    from .models import ModelSpec
    from .proxies import Proxy
    from .pruning import PrunableSpace

__all__ = ["Accuracy", "evaluate", "recalibrate_bn", "check_classes", "default_batch_size", "batch_norms",
           "Evaluator"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Accuracy:
    """Top-1/top-5 accuracy as fractions in [0, 1], over ``samples`` images."""

    top1: float
    top5: float
    samples: int


def _autocast(device: torch.device):  # noqa: ANN202
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, progress: str | None = None, workers: int = 1) -> Accuracy:
    """Top-1/top-5 of ``model`` (in eval mode) over ``batches``; counts are accumulated on the device.

    ``workers`` > 1 scores the batches side by side on CPU threads (:mod:`autoprune._side_by_side`).
    """
    model.eval()
    counts = [[0, 0, 0] for _ in range(max(workers, 1))]  # per worker: top-1 and top-5 hits, samples

    def score(w: int, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        with _autocast(x.device):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        c = counts[w]
        c[0], c[1], c[2] = c[0] + hit[:, 0].sum(), c[1] + hit.any(dim=1).sum(), c[2] + y.shape[0]

    side_by_side(tqdm(batches, desc=progress, leave=False, disable=progress is None), score, workers)
    samples = sum(c[2] for c in counts)
    if samples == 0:
        return Accuracy(0.0, 0.0, 0)
    return Accuracy(sum(int(c[0]) for c in counts) / samples, sum(int(c[1]) for c in counts) / samples, samples)


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """``model``'s BatchNorm layers, in module order: what adaptive BN re-estimates."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, *, workers: int = 1) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (adaptive BN).

    Statistics are reset and accumulated as a cumulative average (momentum
    None), so the result does not depend on the old values or on the order of
    batches. Only BN layers switch to train mode. Returns the batches used.
    ``workers`` > 1 runs the batches side by side on CPU threads, each through its own copy of the model
    (train-mode BN writes its statistics; the copies share the parameters, which it only reads, so a large
    model is not held once per worker); the copies' averages are then combined, weighted by their batches.
    """
    bns = batch_norms(model)
    saved = [(m.momentum, m.training) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    shared = {id(p): p for p in model.parameters()}  # deepcopy's memo: these are reused, not copied
    replicas = [model] + [copy.deepcopy(model, dict(shared)) for _ in range(workers - 1)]
    used = [0] * len(replicas)

    def forward(w: int, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x = batch[0]
        with _autocast(x.device):
            replicas[w](x)
        used[w] += 1

    try:
        side_by_side(batches, forward, len(replicas))
        if len(replicas) > 1 and sum(used) > 0:
            _combine(bns, [batch_norms(r) for r in replicas], used)
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.eval()
    return sum(used)


def _combine(bns: list[nn.Module], copies: list[list[nn.Module]], used: list[int]) -> None:
    """Set ``bns`` to the batch-weighted mean of the copies' cumulative averages: the average over all batches."""
    total = sum(used)
    for i, bn in enumerate(bns):
        if bn.running_mean is None:  # track_running_stats=False: nothing kept
            continue
        mean = sum(c[i].running_mean * (n / total) for c, n in zip(copies, used) if n)
        var = sum(c[i].running_var * (n / total) for c, n in zip(copies, used) if n)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(total)


def default_batch_size(device: torch.device) -> int:
    """The evaluation batch: 100 on a CPU, where a pruned resnet56's activations then stay in cache (its
    evaluation side by side 1.06x faster than at 500), 500 on an accelerator."""
    return 100 if device.type == "cpu" else 500


def check_classes(model: nn.Module, classifier: str | None, dataset: Dataset) -> None:
    """Refuse a model whose classifier (a module name) is not as wide as the dataset's class count, saying both."""
    if not classifier:
        return
    outputs = getattr(model.get_submodule(classifier), "out_features", None)
    if outputs is not None and outputs != dataset.num_classes:
        raise AutopruneError(
            f"The model has {outputs} outputs but {dataset.name} has {dataset.num_classes} classes "
            f"({dataset.source}). Use a checkpoint trained on these {dataset.num_classes} classes, or data with "
            f"{outputs} class folders.")


class Evaluator:
    """Holdout and test accuracy of models on one dataset, with optional adaptive BN.

    Args:
        dataset: the decoded dataset.
        splits: which training images are the holdout (never trained on).
        mean, std: the input normalisation the model expects.
        device: where the data lives and the models run.
        batch_size: evaluation batch size (default: :func:`default_batch_size`).
        recal_batches: training batches used to recalibrate BN (0: none).
        recal_batch_size: their size.
        seed: fixes which training images recalibrate BN, so every policy sees the same ones.
        reward_samples: the first this many holdout images score a search ("reward" part); the
            rest ("select" part) re-judge its best candidates, so the final pick is made on images
            the search never optimised (the winner's curse). None: no split. The reward part is
            itself split into its first quarter ("screen") and the rest ("rest"), so a
            multi-fidelity search can stop early on hopeless policies.
        input_size: the model's (square) input size: streamed data is resized and cropped to it
            (:func:`~autoprune.data.make_loader`); None feeds in-memory data as it is.
        transforms: overrides the default transforms for that input size.
        workers: decoding processes of streamed data (default: the CPUs, at most 8).
        proxy: how :meth:`judge` makes a pruned model ready (:mod:`autoprune.proxies`); None: adaptive BN.
            Checked here, so a proxy that needs training images the data lacks fails when built.
        batch_workers: batches recalibrated and scored side by side on CPU threads
            (:mod:`autoprune._side_by_side`); default: torch's intra-op threads (at most 8) on a CPU, 1 elsewhere.

    Every part is a fixed, seeded set of images under deterministic evaluation transforms, so every
    policy is judged on the same pixels, streamed or not.
    """

    def __init__(self, dataset: Dataset, splits: Splits, *, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", batch_size: int | None = None, recal_batches: int = 0,
                 recal_batch_size: int = 100, seed: int = 0, reward_samples: int | None = None,
                 input_size: int | None = None, transforms: Transforms | None = None,
                 workers: int | None = None, proxy: Proxy | None = None, batch_workers: int | None = None) -> None:
        self.device = torch.device(device)
        self.batch_workers = default_workers(self.device) if batch_workers is None else batch_workers
        batch_size = default_batch_size(self.device) if batch_size is None else batch_size
        self.mean, self.std = mean, std  # proxies that train build their own loaders of the training split
        self.dataset = dataset
        self.splits = splits  # training methods (the handcrafted baselines) train on splits.train
        self.input_size, self.transforms, self.workers = input_size, transforms, workers
        # channels-last on every device: on CUDA for tensor cores, and on CPU too, where oneDNN's
        # NHWC kernels made BN recalibration plus evaluation of a pruned resnet56 about 1.2x faster
        # with the same predictions (scripts/bench_engine.py, last row)
        common = dict(mean=mean, std=std, device=self.device, channels_last=True, input_size=input_size,
                      transforms=transforms, workers=workers)
        hold = splits.holdout
        if reward_samples is not None and not 0 < reward_samples < len(splits.holdout):
            raise AutopruneError(f"reward_samples must be in (0, {len(splits.holdout)}) (the holdout size), but got {reward_samples}.")
        self.holdout_loader = make_loader(dataset, "train", hold, batch_size=batch_size, **common)
        self.parts = {"all": self.holdout_loader}
        if reward_samples is not None:
            self.parts["reward"] = make_loader(dataset, "train", hold[:reward_samples], batch_size=batch_size, **common)
            self.parts["select"] = make_loader(dataset, "train", hold[reward_samples:], batch_size=batch_size, **common)
            quarter = max(reward_samples // 4, 1)  # multi-fidelity: "screen" then "rest" make up "reward"
            self.parts["screen"] = make_loader(dataset, "train", hold[:quarter], batch_size=batch_size, **common)
            self.parts["rest"] = make_loader(dataset, "train", hold[quarter:reward_samples], batch_size=batch_size,
                                             **common)
        self.test_loader = make_loader(dataset, "test", batch_size=batch_size, **common)
        self.recal_batches = recal_batches
        if recal_batches > 0:
            g = torch.Generator().manual_seed(seed)
            pick = splits.train[torch.randperm(len(splits.train), generator=g)[: recal_batches * recal_batch_size]]
            self.recal_loader = make_loader(dataset, "train", pick, batch_size=recal_batch_size, **common)
        self.proxy = proxy
        if proxy is not None:
            proxy.check(self)

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike[str] | None, arch: str | ModelSpec, *,
                      dataset: str = "cifar10", holdout: int = 5000, seed: int = 0, device: str | None = "auto",
                      cache_limit: int | str | None = None, skip_bad_images: bool = False,
                      resize: int | None = None, input_size: int | None = None, **protocol: object) -> Evaluator:
        """Load ``data_dir``, split off the seeded holdout, and judge models of ``arch`` (a zoo name or a
        :class:`~autoprune.models.ModelSpec`: its normalisation; images held in memory must have its input size).

        ``input_size`` defaults to ``arch``'s; ``resize`` overrides the evaluation resize of streamed data;
        ``cache_limit`` and ``skip_bad_images`` go to :func:`~autoprune.data.load_dataset`. ``protocol``
        takes the remaining constructor arguments (batch sizes, recalibration, reward part, workers).
        """
        from .models import ModelSpec

        info = (arch if isinstance(arch, ModelSpec) else ModelSpec(arch)).defaults()
        data = load_dataset(data_dir, name=dataset, cache_limit=cache_limit, skip_bad_images=skip_bad_images)
        want = tuple(info.input_size[1:]) if info.input_size else None
        if not info.is_zoo and data.in_memory and resize is None and want and data.image_size != want:
            shape = (3, *data.image_size)  # the zoo keeps its registered sizes; streamed data is cropped to size
            raise AutopruneError(f"The images of {data.source} are {','.join(map(str, shape))} (C,H,W), but "
                                 f"{info.source} takes {','.join(map(str, info.input_size))}: give --input-size "
                                 f"{','.join(map(str, shape))} if the model accepts it.")
        splits = make_splits(len(data.train_labels), holdout=holdout, seed=seed)
        size = input_size if input_size is not None else info.input_size[-1]
        transforms = Transforms.for_input(size, data.image_size, resize=resize) if resize is not None else None
        return cls(data, splits, mean=info.mean, std=info.std, device=resolve_device(device), seed=seed,
                   input_size=size, transforms=transforms, **protocol)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device, channels-last, in eval mode."""
        model = model.to(self.device, memory_format=torch.channels_last)
        return model.eval()

    def ready(self, model: nn.Module) -> nn.Module:
        """``model`` as it is judged: adaptive BN on the configured training batches (none when
        ``recal_batches`` is 0). Returns it, so callers read as one step from cut to judged."""
        if self.recal_batches > 0:
            recalibrate_bn(model, self.recal_loader, workers=self.batch_workers)
        return model

    def judge(self, space: PrunableSpace, channels: Mapping[str, Sequence[int] | np.ndarray], *,
              timings: dict[str, float] | None = None) -> nn.Module:
        """The model of ``space`` keeping ``channels`` per group, cut and made ready by the proxy: ready to judge.

        The one way every agent's candidate and every baseline reaches :meth:`holdout` and :meth:`test`,
        so all are judged alike. ``timings``, when given, gains the seconds spent cutting ("apply") and
        recalibrating ("recalibrate"), and the proxy's own work ("finetune", "reconstruct"): where a
        search's time goes.
        """
        if self.proxy is not None:
            return self.proxy.judge(self, space, channels, timings=timings)
        return self.recalibrated(space, channels, timings=timings)

    def recalibrated(self, space: PrunableSpace, channels: Mapping[str, Sequence[int] | np.ndarray], *,
                     timings: dict[str, float] | None = None) -> nn.Module:
        """The model of ``space`` keeping ``channels``, cut, prepared and recalibrated (the ``bn`` proxy)."""
        start = time.perf_counter()
        model = self.prepare(space.apply(channels))
        applied = time.perf_counter()
        model = self.ready(model)
        if timings is not None:
            timings["apply"] = timings.get("apply", 0.0) + applied - start
            timings["recalibrate"] = timings.get("recalibrate", 0.0) + time.perf_counter() - applied
        return model

    def holdout(self, model: nn.Module, part: str = "all", progress: str | None = None) -> Accuracy:
        """Accuracy on the holdout split, or on its "reward" / "select" part."""
        if part not in self.parts:
            raise AutopruneError(f"Holdout part {part!r} does not exist here; parts: {', '.join(self.parts)}.")
        return evaluate(model, self.parts[part], progress=progress, workers=self.batch_workers)

    def test(self, model: nn.Module, progress: str | None = None) -> Accuracy:
        return evaluate(model, self.test_loader, progress=progress, workers=self.batch_workers)
