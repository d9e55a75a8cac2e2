"""Batches straight from one uint8 tensor on the device, augmented a whole batch at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DataError

_PAD = 4  # random-crop padding, in pixels (the standard CIFAR augmentation)


class SeededEpochs:
    """What both loaders share: the batch count, the seeded draws of an epoch, and the state a resume needs.

    Subclasses set ``labels``, ``batch_size``, ``drop_last``, ``shuffle``, ``seed`` and ``epoch``; ``_crops``
    says whether an epoch draws pad-and-crop offsets and flips (a random-resized-crop draws per sample).
    """

    labels: torch.Tensor
    batch_size: int
    drop_last: bool
    shuffle: bool
    seed: int
    epoch: int

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    @property
    def _crops(self) -> bool:
        raise NotImplementedError

    def epoch_draws(self, epoch: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(order, offsets, flips)`` of ``epoch``, on the CPU; each is ``None`` when unused.

        ``order`` is a permutation (when shuffling); ``offsets`` is int64
        ``[N, 2]`` (row, column) in ``[0, 8]``; ``flips`` is bool ``[N]``.
        Drawn in that order from one generator seeded with ``seed + epoch``.
        """
        n = self.num_samples
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else None
        if not self._crops:
            return order, None, None
        offsets = torch.randint(0, 2 * _PAD + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
        return order, offsets, flips

    def state_dict(self) -> dict[str, Any]:
        """The epoch counter and seed: all a resumed run needs to draw the same batches."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("epoch", "seed"):
            if not _is_int(state.get(key)):
                raise ValueError(f"state[{key!r}] must be an integer, but got {state.get(key)!r}.")
        if state["epoch"] < 0:
            raise ValueError(f"state['epoch'] must be at least 0, but got {state['epoch']}.")
        self.epoch, self.seed = state["epoch"], state["seed"]


class DeviceLoader(SeededEpochs):
    """Keeps a split as one uint8 tensor on the device; normalises on the fly and augments whole
    batches (random crop with 4-px zero padding, horizontal flip) with tensor ops: no per-sample Python.

    A CIFAR split is 150 MB as uint8, so it fits on any accelerator; keeping it
    there removes the host-to-device copy and the worker processes of a
    ``DataLoader``, which dominate the step time of small CIFAR networks.

    All randomness of an epoch (the order, the crop offsets, the flips) is
    drawn on the CPU from a ``torch.Generator`` seeded with ``seed + epoch``,
    so a run is reproducible on any device and, after :meth:`load_state_dict`,
    a resumed run sees exactly the batches the interrupted one would have.
    The crop offset and flip of the sample at position ``k`` of an epoch are
    ``offsets[k]`` and ``flips[k]`` of :meth:`epoch_draws`.

    Args:
        images: uint8 ``[N, C, H, W]`` tensor (on any device).
        labels: integer ``[N]`` tensor.
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        mean, std: per-channel statistics in [0, 1] units; batches are ``(x / 255 - mean) / std``.
        device: where the data lives and batches are produced.
        shuffle: a new random order every epoch.
        augment: random crop (zero padding of 4 px) and horizontal flip.
        drop_last: drop the last incomplete batch.
        seed: base seed of the per-epoch generator.
        channels_last: return batches in ``torch.channels_last`` memory format.
        limit: use only the first ``limit`` samples (cheap evaluations); ``None`` uses all.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        limit: int | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be a uint8 tensor of shape [N, C, H, W], but got {got}.")
        self.device, self._mean, self._std = check_batching(
            batch_size=batch_size, limit=limit, seed=seed, labels=labels, images=len(images), mean=mean, std=std,
            channels=images.shape[1], device=device)
        n = len(images) if limit is None else min(limit, len(images))
        self.images = images[:n].to(self.device).contiguous()
        self.labels = labels[:n].to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0

    @property
    def _crops(self) -> bool:
        return self.augment

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Advance the epoch now, not when the generator finishes, so that a
        # partly consumed epoch (an early break) is still an epoch.
        order, offsets, flips = (t if t is None else t.to(self.device) for t in self.epoch_draws(self.epoch))
        self.epoch += 1
        return self._batches(order, offsets, flips)

    def _batches(
        self, order: torch.Tensor | None, offsets: torch.Tensor | None, flips: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                idx = order[start:stop]
                x, y = self.images[idx], self.labels[idx]
            if offsets is not None and flips is not None:
                x = crop_flip(x, offsets[start:stop], flips[start:stop])
            x = x.to(torch.float32, memory_format=memory_format).div_(255).sub_(self._mean).div_(self._std)
            yield x, y


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = _PAD) -> torch.Tensor:
    """Random-crop ``x`` ([B, C, H, W]) from its zero-padded copy and flip, in one gather.

    Sample ``i`` is the ``H x W`` window at ``(offsets[i, 0], offsets[i, 1])``
    of the image padded by ``pad`` zeros, mirrored left-right where
    ``flips[i]``: the flip only reverses the column indices it reads.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def check_batching(*, batch_size: int, limit: int | None, seed: int, labels: torch.Tensor, images: int,
                   mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, channels: int,
                   device: torch.device | str) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """What every loader checks of its arguments (``images`` is the image count); returns the device and the
    per-channel mean and std, shaped to broadcast over a batch on it."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, but got {batch_size=}.")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"limit must be None or an integer of at least 1, but got {limit=}.")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, but got {seed=}.")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataError(f"labels must be a 1-D integer tensor, but got {got}.")
    if images != len(labels):
        raise DataError(f"images and labels must have the same length, but got {images} images and {len(labels)} labels.")
    device = torch.device(device)
    mean, std = _channel_stat("mean", mean, channels, device), _channel_stat("std", std, channels, device)
    if (std <= 0).any():
        raise ValueError(f"std must be positive in every channel, but got std={std.flatten().tolist()}.")
    return device, mean, std


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _channel_stat(
    arg: str, value: Sequence[float] | torch.Tensor, channels: int, device: torch.device
) -> torch.Tensor:
    stat = torch.as_tensor(value, dtype=torch.float32).flatten()
    if stat.numel() != channels:
        raise ValueError(f"{arg} must have one value per channel ({channels}), but got {arg}={stat.tolist()}.")
    return stat.to(device).view(1, channels, 1, 1)
