"""Torch-Pruning support for the option-A shortcut (:class:`ChannelPadShortcut`).

The shortcut has no weights, but it maps input channel ``src[i]`` to output
channel ``dst[i]``. Its input and output channels belong to different groups
(the residual widths of two stages), so pruning one side only drops the
affected (src, dst) pairs and renumbers the survivors; nothing propagates
through it, exactly like a convolution's in/out channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_pruning.pruner.function import BasePruningFunc

from ..models import ChannelPadShortcut


def _renumber(index: torch.Tensor, removed: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mask of entries that survive, their new positions) after removing ``removed``."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[torch.as_tensor(list(removed), dtype=torch.long)] = False
    new_pos = torch.cumsum(keep.long(), 0) - 1
    index = index.cpu()
    alive = keep[index]
    return alive, new_pos[index[alive]]


class ChannelPadShortcutPruner(BasePruningFunc):
    """Prunes the in or out channels of a :class:`ChannelPadShortcut` (not coupled)."""

    TARGET_MODULES = ChannelPadShortcut

    def prune_out_channels(self, layer: ChannelPadShortcut, idxs: Sequence[int]) -> ChannelPadShortcut:
        alive, dst = _renumber(layer.dst, idxs, layer.out_channels)
        self._set(layer, layer.src.cpu()[alive], dst)
        layer.out_channels -= len(set(idxs))
        return layer

    def prune_in_channels(self, layer: ChannelPadShortcut, idxs: Sequence[int]) -> ChannelPadShortcut:
        alive, src = _renumber(layer.src, idxs, layer.in_channels)
        self._set(layer, src, layer.dst.cpu()[alive])
        layer.in_channels -= len(set(idxs))
        return layer

    @staticmethod
    def _set(layer: ChannelPadShortcut, src: torch.Tensor, dst: torch.Tensor) -> None:
        device = layer.src.device
        layer.src = src.to(device)
        layer.dst = dst.to(device)

    def get_out_channels(self, layer: ChannelPadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelPadShortcut) -> int:
        return layer.in_channels


CUSTOM_PRUNERS = {ChannelPadShortcut: ChannelPadShortcutPruner()}
"""Pruners of our own modules, handed to every Torch-Pruning DependencyGraph we build."""
