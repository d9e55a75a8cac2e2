"""Reward proxies: how a freshly pruned model is made ready to be judged, before its holdout accuracy is the reward.

A search ranks thousands of policies by a cheap stand-in for what matters, the
accuracy after fine-tuning. Each proxy here is one way to bridge pruning and
judging, registered by name (``--reward-proxy``), all of them run by the
:class:`~autoprune.evaluate.Evaluator` where it used to recalibrate BN, so every
agent (RL, Optuna, handcrafted) and the final pick judge alike:

``bn``
    Adaptive BN: running statistics re-estimated on the evaluator's
    recalibration images (the default; about 2 s on a ResNet-56 on 2 CPU cores).
``reconstruct``
    Channel Pruning's step (He, Zhang and Sun 2017; AMC uses it too): group by
    group in forward order, each consumer of the pruned channels gets its
    weights refit by least squares so that, from the kept input channels of the
    partly pruned model, it reproduces the unpruned model's output; then BN is
    recalibrated. Sampling and refit are those of ``lasso``
    (:class:`autoprune.pruning.Reconstruction`); the channels are the policy's.
    Residual groups (channels that also flow through identity shortcuts) are
    cut without a refit: no consumer's output accounts for them.
``finetune-K``
    ``K`` SGD steps of the pruned model on augmented training batches (batch 64,
    lr 0.01 cosine to 0 over the ``K`` steps, Nesterov momentum 0.9, weight
    decay 1e-4: the fine-tune recipe of the ``cpu`` training preset, shortened, in its
    precision "auto": bfloat16 autocast on a CPU with native bfloat16), then BN
    recalibration. ``K`` is written into the name, e.g. ``finetune-200``.
``distill-K``
    The same steps, the loss distilled from the unpruned model (Hinton et al.;
    temperature 4, weight 0.9, the defaults of ``autoprune finetune --kd``).

Every proxy works on a copy: the space's model is never modified. Each is
deterministic: the training batches, crops and flips come from a generator
seeded by the proxy's seed, the global RNG is restored afterwards, and
reconstruction samples fixed positions. The environment caches evaluations by
policy whatever the proxy. Which proxy predicts the fine-tuned ranking best,
and at what cost, is measured by ``scripts/bench_fidelity.py``.
"""

from __future__ import annotations

import copy
import difflib
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .data import DeviceLoader, StreamLoader, make_loader
from .errors import AutopruneError, DataError, UnknownNameError
from .pruning import Reconstruction, consumers, sample_features
from .training import Recipe, Trainer

if TYPE_CHECKING:
    from .evaluate import Evaluator
    from .pruning import PrunableSpace

__all__ = ["PROXIES", "Proxy", "BNProxy", "FinetuneProxy", "ReconstructProxy", "get_proxy"]

Kept = Mapping[str, Sequence[int] | np.ndarray]

PROXIES = ("bn", "reconstruct", "finetune-K", "distill-K")  # the forms --reward-proxy takes
_STEPS_EXAMPLE = 200


class Proxy:
    """Makes the model a policy keeps ready to judge (on the evaluator's device, eval mode).

    Subclasses override :meth:`judge`; ``needs_training_data`` makes the evaluator refuse it,
    when built, unless its training split (outside the holdout) holds at least ``min_images``.
    ``changes_weights``: whether it does more than recalibrate BN statistics (then a judged model
    cannot be rebuilt from the cut weights and its BN buffers alone).
    """

    name = "bn"
    needs_training_data = False
    changes_weights = False
    min_images = 1

    def judge(self, evaluator: Evaluator, space: PrunableSpace, kept: Kept, *,
              timings: dict[str, float] | None = None) -> nn.Module:
        """The pruned model of ``space`` keeping ``kept``, ready for ``evaluator.holdout``; ``space.model`` untouched."""
        return evaluator.recalibrated(space, kept, timings=timings)

    def check(self, evaluator: Evaluator) -> None:
        """Raise :class:`DataError` when the evaluator lacks the training images this proxy needs."""
        if not self.needs_training_data:
            return
        n = len(evaluator.splits.train)
        if n < self.min_images:
            have = "none are given" if n == 0 else f"the training split holds only {n}"
            raise DataError(f"Reward proxy {self.name!r} needs at least {self.min_images} training images outside the "
                            f"holdout, but {have}. Give a dataset with training images (and a smaller --holdout), "
                            "or use --reward-proxy bn.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class BNProxy(Proxy):
    """Adaptive BN only: today's judge (see the module docstring)."""


def _add(timings: dict[str, float] | None, key: str, seconds: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + seconds


class FinetuneProxy(Proxy):
    """``steps`` SGD steps on training batches (distilled from the unpruned model with ``kd``), then adaptive BN.

    Args:
        steps: SGD steps; at least 1.
        kd: distil from the unpruned model (the space's) instead of plain cross-entropy.
        batch_size, lr: of the steps (at most the training split's size is used as the batch).
        seed: of the batches' order, crops and flips.
    """

    needs_training_data = True
    changes_weights = True

    def __init__(self, steps: int, *, kd: bool = False, batch_size: int = 64, lr: float = 0.01, seed: int = 0) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise AutopruneError(f"The proxy's SGD steps must be an integer of at least 1, but got steps={steps!r}; "
                                 f"write e.g. {'distill' if kd else 'finetune'}-{_STEPS_EXAMPLE}.")
        self.steps, self.kd, self.batch_size, self.lr, self.seed = steps, kd, batch_size, lr, seed
        self.recipe = Recipe(epochs=1, lr=lr, batch_size=batch_size)  # checks lr and batch_size
        self.name = f"{'distill' if kd else 'finetune'}-{steps}"

    def _loader(self, evaluator: Evaluator) -> DeviceLoader | StreamLoader:
        """Exactly ``steps`` augmented batches of the training split, drawn from the seed (none from the holdout)."""
        pick = evaluator.splits.train
        size = min(self.batch_size, len(pick))
        order = torch.randperm(len(pick), generator=torch.Generator().manual_seed(self.seed))
        # enough images for ``steps`` batches, repeating the split when it is smaller
        idx = pick[order.repeat(-(-self.steps * size // len(pick)))[: self.steps * size]]
        return make_loader(evaluator.dataset, "train", idx, batch_size=size, mean=evaluator.mean, std=evaluator.std,
                           device=evaluator.device, shuffle=True, augment=True, drop_last=True, seed=self.seed,
                           channels_last=True, input_size=evaluator.input_size,
                           transforms=evaluator.transforms, workers=evaluator.workers)

    def judge(self, evaluator: Evaluator, space: PrunableSpace, kept: Kept, *,
              timings: dict[str, float] | None = None) -> nn.Module:
        start = time.perf_counter()
        model = space.apply(kept)
        _add(timings, "apply", time.perf_counter() - start)
        start = time.perf_counter()
        loader = self._loader(evaluator)
        teacher = copy.deepcopy(space.model) if self.kd else None  # the Trainer moves it: never the caller's
        with torch.random.fork_rng(devices=[evaluator.device] if evaluator.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            trainer = Trainer(model, self.recipe, loader, evaluator.device, teacher=teacher)
            trainer.train_epoch(progress=False)
        _add(timings, "finetune", time.perf_counter() - start)
        start = time.perf_counter()
        model = evaluator.ready(evaluator.prepare(trainer.model))
        _add(timings, "recalibrate", time.perf_counter() - start)
        return model


class ReconstructProxy(Proxy):
    """Least-squares refit of each pruned group's consumers on the kept channels, then adaptive BN.

    Args:
        images: training images whose feature maps are sampled (the first of the split, unaugmented).
        points: output positions sampled per image and consumer (He et al.: 10).
        batch_size: images per forward pass.
        seed: of the sampled positions.
    """

    name = "reconstruct"
    needs_training_data = True
    changes_weights = True

    def __init__(self, *, images: int = 500, points: int = 10, batch_size: int = 100, seed: int = 0) -> None:
        for key, value in (("images", images), ("points", points), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AutopruneError(f"{key} must be an integer of at least 1, but got {key}={value!r}.")
        self.images, self.points, self.batch_size, self.seed = images, points, batch_size, seed
        self._targets: dict[int, tuple[PrunableSpace, list, dict[str, list[torch.Tensor]]]] = {}

    def _problem(self, evaluator: Evaluator, space: PrunableSpace) -> tuple[list, dict[str, list[torch.Tensor]]]:
        """The batches and the unpruned model's sampled outputs of every consumer: the same for every policy."""
        cached = self._targets.get(id(space))
        if cached is not None and cached[0] is space:
            return cached[1], cached[2]
        pick = evaluator.splits.train[: self.images]
        loader = make_loader(evaluator.dataset, "train", pick, batch_size=min(self.batch_size, len(pick)),
                             mean=evaluator.mean, std=evaluator.std, device=evaluator.device,
                             input_size=evaluator.input_size, transforms=evaluator.transforms, workers=evaluator.workers)
        batches = list(loader)
        original = evaluator.prepare(copy.deepcopy(space.model))
        modules = [m.module for g in self._groups(space) for m in consumers(original, g)]
        targets: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        for features in sample_features(original, modules, batches, points=self.points, seed=self.seed, inputs=False):
            for name, (_, y) in features.items():
                targets[name].append(y)
        self._targets = {id(space): (space, batches, targets)}
        return batches, targets

    @staticmethod
    def _groups(space: PrunableSpace) -> list:
        """The searchable groups whose consumers a reconstruction can refit (not residual stages)."""
        found = []
        for g in space.searchable:
            try:
                consumers(space.model, g)
            except AutopruneError:
                continue
            found.append(g)
        return found

    def judge(self, evaluator: Evaluator, space: PrunableSpace, kept: Kept, *,
              timings: dict[str, float] | None = None) -> nn.Module:
        start = time.perf_counter()
        batches, targets = self._problem(evaluator, space)
        work = evaluator.prepare(copy.deepcopy(space.model))
        for group in self._groups(space):
            problem = Reconstruction(work, group, refit=True)
            names = [m.module for m in problem.consumers]
            for i, features in enumerate(sample_features(work, names, batches, points=self.points, seed=self.seed)):
                for name in names:
                    problem.add(name, features[name][0], targets[name][i])
            with torch.no_grad():
                for name, weight in problem.refit(np.asarray(kept[group.name])).items():
                    work.get_submodule(name).weight.copy_(weight)
        _add(timings, "reconstruct", time.perf_counter() - start)
        start = time.perf_counter()
        model = evaluator.prepare(space.apply(kept, model=work))
        _add(timings, "apply", time.perf_counter() - start)
        start = time.perf_counter()
        model = evaluator.ready(model)
        _add(timings, "recalibrate", time.perf_counter() - start)
        return model


_FORM = re.compile(r"^(?P<base>[a-z]+)(?:-(?P<steps>-?\d+))?$")


def get_proxy(name: str, *, seed: int = 0) -> Proxy:
    """The proxy called ``name`` (one of :data:`PROXIES`, e.g. ``finetune-200``), seeded by ``seed``.

    Raises :class:`UnknownNameError` with a "did you mean" for a misspelt name, and
    :class:`AutopruneError` for a step count that is missing, not a whole number or below 1.
    """
    text = str(name).strip()
    match = _FORM.match(text)
    base, steps = (match["base"], match["steps"]) if match else (text, None)
    if base in ("finetune", "distill"):
        if steps is None:
            raise AutopruneError(f"Reward proxy {text!r} needs its number of SGD steps in the name: "
                                 f"{base}-{_STEPS_EXAMPLE} (k of the order of 100 to 300).")
        return FinetuneProxy(int(steps), kd=base == "distill", seed=seed)
    if base in ("bn", "reconstruct"):
        if steps is not None:
            raise AutopruneError(f"Reward proxy {base!r} takes no step count, but got {text!r}; "
                                 f"write {base}, or finetune-{steps} for SGD steps.")
        return BNProxy() if base == "bn" else ReconstructProxy(seed=seed)
    k = steps if steps is not None and steps.lstrip("-").isdigit() else str(_STEPS_EXAMPLE)
    known = ["bn", "reconstruct", f"finetune-{k}", f"distill-{k}"]
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return _raise_unknown(text, hint)


def _raise_unknown(text: str, hint: str) -> Proxy:
    raise UnknownNameError(f"Unknown reward proxy {text!r}.{hint} Known: {', '.join(PROXIES)} (K: SGD steps, "
                           f"e.g. finetune-{_STEPS_EXAMPLE}).")
