"""DExp (seed 003): kernel-level pruning from the distribution of kernel sums, then a fine-tune with the masks held.

For each conv, in forward (definition) order and from ``start_conv`` on,
``round(rate x f x c)`` of its ``f x c`` kernels (``k x k`` weight slices) are
masked: set to zero, and held at zero while fine-tuning. The modules:

- :mod:`._compress_rate`: the rate of each conv, from the seed's
  compress-rate list or one uniform rate mapped to the MACs target;
- :mod:`._kernels`: which kernels (the most populated bins of the layer's
  kernel sums, way A "bn-priority" or B "full-layer"), and holding them at zero;
- :mod:`._kernel_macs`: the honest MAC count (kernel sparsity is not channel
  removal: zeroed kernels leave the count, nothing more) and the channels no
  consumer reads any more, the only ones the Outcome removes.

Files in ``context.work_dir`` (written atomically; a run resumes)
    ``dexp_masks.pt``: ``torch.save`` of ``{conv name: bool tensor (f, c)}``,
    True = kept; ``resume_mask: PATH`` loads such a file (shapes checked)
    instead of computing the masks. ``dexp_finetune.pt``: the fine-tune's
    checkpoint (:func:`~._training.train_resumable`), whose fingerprint holds
    the training settings and a digest of the masks: a rerun with the same
    masks (computed again, or read back with ``resume_mask``) and settings
    continues from it; one with other masks or settings is refused.

Hyperparameters (the preset's ``hyperparameters``)
    way ("bn-priority" | "full-layer"), buckets (13), temperature (1.0),
    start_conv (1: the stem is not pruned), compress_rate (None: from the
    target), resume_mask (None), and the fine-tune: epochs (2; 0: none), lr
    (0.01), batch_size (128), weight_decay (1e-4), momentum (0.9, Nesterov).

``autoprune finetune`` refuses DExp's policies: it would train the channels
densely and the zeroed kernels would grow back. Fine-tune here (``epochs``).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._io import load_torch, save_torch
from ..errors import AutopruneError, CheckpointError, unknown_name
from ..training import Trainer
from ._compress_rate import conv_rates, mask_count, parse_compress_rate, uniform_rate
from ._kernel_macs import (
    Layers,
    alive_channels,
    find_layers,
    honest_macs,
    without_dead_producers,
)
from ._kernels import WAYS, apply_masks, compute_masks, hold_masks
from ._method import Context, Outcome
from ._settings import check, is_int, is_number, settings_from
from ._training import TrainSettings, train_resumable

__all__ = ["CHECKPOINT_FILE", "MASKS_FILE", "DExpSettings", "finetune", "load_masks", "masks_digest", "run",
           "save_masks"]

MASKS_FILE = "dexp_masks.pt"
CHECKPOINT_FILE = "dexp_finetune.pt"


@dataclass(frozen=True)
class DExpSettings(TrainSettings):
    """DExp's knobs besides the fine-tune's, read from the preset's ``hyperparameters`` (see the module docstring)."""

    way: str = "bn-priority"
    buckets: int = 13
    temperature: float = 1.0
    start_conv: int = 1
    compress_rate: str | list[float] | None = None
    resume_mask: str | None = None
    epochs: int = 2

    min_epochs: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.way not in WAYS:
            raise unknown_name("DExp way", str(self.way), WAYS)
        for name, low in (("buckets", 2), ("start_conv", 0)):
            value = getattr(self, name)
            check(is_int(value) and value >= low, f"{name} must be an integer of at least {low}", **{name: value})
        check(is_number(self.temperature), "temperature must be a number", temperature=self.temperature)
        check(self.temperature > 0, "temperature must be positive", temperature=self.temperature)
        check(self.resume_mask is None or isinstance(self.resume_mask, (str, Path)),
              "resume_mask must be the path of a mask file", resume_mask=self.resume_mask)


# -- mask files ----------------------------------------------------------------------

def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor]) -> None:
    """``torch.save`` of ``{conv name: bool (f, c)}``, atomically."""
    save_torch(path, {name: m.detach().cpu().bool() for name, m in masks.items()})


def load_masks(path: str | Path, layers: Layers) -> dict[str, torch.Tensor]:
    """Masks written by :func:`save_masks`, checked against ``layers`` (names and ``(f, c)`` shapes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"DExp: the mask file {path} (resume_mask) does not exist.")
    obj = load_torch(path, "DExp: the mask file")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in obj.values()):
        raise CheckpointError(f"DExp: {path} must hold a dict of bool tensors (conv name -> (filters, channels)).")
    convs = {c.name: c for c in layers.convs}
    for name, mask in obj.items():
        if name not in convs:
            raise CheckpointError(f"DExp: {path} has a mask for {name!r}, which is not a conv of this model; its convs: "
                                  f"{', '.join(convs)}.")
        want = (convs[name].filters, convs[name].channels)
        if tuple(mask.shape) != want:
            raise CheckpointError(f"DExp: {path}: the mask of {name} has shape {tuple(mask.shape)}, but the conv has "
                                  f"{want[0]} filters x {want[1]} input channels; the masks belong to another model.")
        if not mask.any():
            raise CheckpointError(f"DExp: {path}: the mask of {name} masks every kernel, removing the layer.")
    return dict(obj)


def masks_digest(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the masks (names and bits): ties a fine-tune checkpoint to the masks it held."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode() + b"\0" + str(tuple(masks[name].shape)).encode())
        h.update(masks[name].cpu().numpy().astype(np.uint8).tobytes())
    return h.hexdigest()


# -- the fine-tune and the Outcome ----------------------------------------------------------

def finetune(model: nn.Module, masks: Mapping[str, torch.Tensor], context: Context,
             settings: DExpSettings) -> dict[str, Any]:
    """Fine-tune ``model`` in place with ``masks`` held; checkpointed in ``context.work_dir`` after every epoch.

    The checkpoint's fingerprint holds the training settings and the digest
    of the masks (see the module docstring). Returns what the fine-tune did.
    """
    training = replace(settings.training(), batch_size=min(settings.batch_size, len(context.evaluator.splits.train)))
    handles: list[Any] = []

    def attach(trainer: Trainer) -> None:
        apply_masks(trainer.model, masks)
        handles.extend(hold_masks(trainer.model, trainer.optimizer, masks))

    torch.manual_seed(context.seed)
    start = time.perf_counter()
    try:
        done = train_resumable(context, model, training, "dexp", file=CHECKPOINT_FILE,
                               identity={"masks": masks_digest(masks)}, attach=attach)
    finally:
        for h in handles:
            h.remove()
    info = {**training.recipe().to_dict(), "resumed_after_epoch": done.resumed,
            "seconds": round(time.perf_counter() - start, 3)}
    if done.history:
        info.update(train_loss=done.history[-1]["loss"], train_top1=done.history[-1]["accuracy"])
    return info


def run(context: Context) -> Outcome:
    """DExp on ``context``: masks from the kernel-sum distribution, a fine-tune with them held, honest MACs."""
    settings = settings_from(DExpSettings, context.hyperparameters, "dexp")
    context.require_macs("DExp (its zeroed kernels are counted in MACs)")
    space, work_dir = context.space, Path(context.work_dir)
    model = context.model
    example = torch.zeros(1, *space.info.input_size, device=next(model.parameters()).device)
    layers = find_layers(model, example)
    base = honest_macs(layers, {})
    if base != space.base.macs:
        raise AutopruneError(f"DExp: {space.arch} has layers the cost model counts differently ({base} MACs here, "
                             f"{space.base.macs} there); DExp cannot report comparable MACs for it.")
    if settings.start_conv >= len(layers.convs):
        raise AutopruneError(f"DExp: start_conv must be below the number of convs ({len(layers.convs)}), but got "
                             f"start_conv={settings.start_conv}.")
    info: dict[str, Any] = {"method": "dexp", **{k: str(v) if isinstance(v, Path) else v
                                                  for k, v in asdict(settings).items() if k != "compress_rate"}}
    if settings.compress_rate is not None:
        rates = conv_rates(parse_compress_rate(settings.compress_rate), layers, space.arch)
        info["knob"] = "compress_rate: one rate per conv, as given (the MACs target is not used)"
    else:
        rate = uniform_rate(layers, settings.start_conv, context.target, base)
        rates = np.array([0.0] * settings.start_conv + [rate] * (len(layers.convs) - settings.start_conv))
        info["knob"] = ("compress_rate: one uniform rate for every conv from start_conv on, the smallest whose honest "
                        "MAC count meets the target (bisection)")
        info["uniform_rate"] = rate
    rates[: settings.start_conv] = 0.0
    counts = [mask_count(r, conv) for r, conv in zip(rates, layers.convs)]
    info["compress_rate"] = [float(r) for r in rates]
    if settings.resume_mask is not None:
        masks = load_masks(settings.resume_mask, layers)
    else:
        masks = compute_masks(model, layers, counts, way=settings.way, buckets=settings.buckets,
                              temperature=settings.temperature)
    save_masks(work_dir / MASKS_FILE, masks)

    pruned = copy.deepcopy(model)  # the context's model is never modified
    apply_masks(pruned, masks)
    if settings.epochs > 0:
        info["finetune"] = finetune(pruned, masks, context, settings)
    weights = {k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()}

    kept = alive_channels(space, masks)
    macs = honest_macs(layers, without_dead_producers(space, masks, kept))
    masked = sum(int((~m).sum()) for m in masks.values())
    info.update(
        masks_file=str(work_dir / MASKS_FILE),
        masked_kernels=masked,
        total_kernels=sum(c.kernels for c in layers.convs),
        macs_fraction=macs / base,
        meets_target=macs <= context.target * base,
        removed_channels={g: int(space.searchable[i].channels - len(kept[g])) for i, g in enumerate(kept)
                          if len(kept[g]) < space.searchable[i].channels},
        macs_note=("kernel sparsity, not channel removal: masked kernels leave the MAC count (kept kernels x k x k x "
                   "output H x W per conv), nothing more; only channels no consumer reads are removed. The masked "
                   "model runs no faster on dense hardware."),
    )
    counts_out = np.array([len(kept[g.name]) for g in space.searchable], dtype=np.int64)
    return Outcome(counts=counts_out, kept=kept, weights=weights, macs=macs, info=info)
