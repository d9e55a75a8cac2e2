"""What a set of kernel masks leaves of a model: its convs, their honest MAC count, the channels still read.

MACs are counted honestly: kernel sparsity is not channel removal
    Per conv, ``kept kernels x k x k x output H x W`` (depthwise convs: one
    kernel per channel); linear layers in full; the same layers and basis as
    :class:`autoprune.pruning.CostModel` (equal to its count when nothing is masked). Zeroed
    kernels leave the count, nothing more: a masked model runs no faster on
    dense hardware, and the count is what sparse kernels could save.

Channels (DExp's Outcome counts)
    A channel of a group is removed only when that is exact: no consumer of
    the group (no "in" member; a Linear or an unmasked conv always reads)
    has a kept kernel on it, so nothing reads it. Its producers' filters then
    leave the MAC count too (:func:`without_dead_producers`). A filter whose
    own kernels are all masked is *not* removed: its BN still emits a
    constant (its shift) that the consumers read, so removing it would change
    the function. In practice almost every group stays whole.

Masks are ``{conv name: bool tensor (filters, inputs per filter)}``, True = kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError
from ..pruning import PrunableSpace

__all__ = ["ConvInfo", "Layers", "alive_channels", "find_layers", "honest_macs", "without_dead_producers"]


@dataclass(frozen=True)
class ConvInfo:
    """One conv: its kernel grid ``(f, c)`` (weight.shape[:2]), ``k x k``, output ``H x W``, and the BN after it."""

    name: str
    filters: int
    channels: int  # inputs per filter (in_channels / groups)
    kk: int
    hw: int
    bn: str | None

    @property
    def kernels(self) -> int:
        return self.filters * self.channels


@dataclass(frozen=True)
class Layers:
    """The convs of a model in forward order and the MACs of its linear layers (counted whole)."""

    convs: tuple[ConvInfo, ...]
    linear_macs: int

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.convs]


def find_layers(model: nn.Module, example: torch.Tensor) -> Layers:
    """Trace ``model`` once on ``example``: every conv's output size and the BatchNorm that reads its output."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # keeps every conv output alive, so no id() is reused during the pass
    shapes: dict[str, tuple[int, ...]] = {}
    follows: dict[str, str] = {}
    hooks = []

    def conv_hook(name: str):
        def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            produced[id(out)] = name
            alive.append(out)
            shapes[name] = tuple(out.shape[1:])
        return hook

    def bn_hook(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            src = produced.get(id(args[0]))
            if src is not None:
                follows.setdefault(src, name)
        return hook

    def linear_hook(name: str):
        def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            shapes[name] = tuple(out.shape[1:])
        return hook

    hooks += [m.register_forward_hook(conv_hook(n)) for n, m in convs]
    hooks += [m.register_forward_pre_hook(bn_hook(n)) for n, m in bns]
    hooks += [m.register_forward_hook(linear_hook(n)) for n, m in linears]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = [n for n, _ in convs + linears if n not in shapes]
    if missing:
        raise AutopruneError(f"DExp: the layers {missing} are never run by the model's forward pass; "
                             "DExp needs every conv on the forward path.")
    infos = tuple(ConvInfo(name=n, filters=m.weight.shape[0], channels=m.weight.shape[1],
                           kk=m.kernel_size[0] * m.kernel_size[1], hw=int(np.prod(shapes[n][1:])), bn=follows.get(n))
                  for n, m in convs)
    return Layers(infos, sum(m.in_features * m.out_features for _, m in linears))


def honest_macs(layers: Layers, masks: Mapping[str, torch.Tensor]) -> int:
    """MACs with the masked kernels removed, nothing more: per conv, kept kernels x k x k x output H x W.

    Linear layers count whole (``in x out``), as in :class:`autoprune.pruning.CostModel`;
    a conv absent from ``masks`` keeps every kernel.
    """
    total = layers.linear_macs
    for conv in layers.convs:
        kept = int(masks[conv.name].sum()) if conv.name in masks else conv.kernels
        total += kept * conv.kk * conv.hw
    return total


def alive_channels(space: PrunableSpace, masks: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Kept channel indices per searchable group: those some consumer still reads (see the module docstring)."""
    kept = {}
    for group in space.searchable:
        readers = [m for m in group.members if m.side == "in"]
        read = np.zeros(group.channels, dtype=bool) if readers else np.ones(group.channels, dtype=bool)
        for m in readers:
            module = space.model.get_submodule(m.module)
            if isinstance(module, nn.Conv2d) and module.groups == 1 and m.module in masks:
                used = masks[m.module].any(0).numpy()  # per input channel: does any filter keep its kernel?
                np.logical_or.at(read, m.root, used[m.index])
            else:
                read[m.root] = True
        kept[group.name] = np.flatnonzero(read) if read.any() else np.arange(group.channels)
    return kept


def without_dead_producers(space: PrunableSpace, masks: Mapping[str, torch.Tensor],
                           kept: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The masks with the filters of removed channels masked too (for the MAC count only)."""
    out = dict(masks)
    for group in space.searchable:
        dead = np.ones(group.channels, dtype=bool)
        dead[kept[group.name]] = False
        if not dead.any():
            continue
        for m in group.producers():
            module = space.model.get_submodule(m.module)
            if not isinstance(module, nn.Conv2d):
                continue
            mask = out.get(m.module, torch.ones(module.weight.shape[:2], dtype=torch.bool)).clone()
            mask[torch.from_numpy(m.index[dead[m.root]])] = False
            out[m.module] = mask
    return out
