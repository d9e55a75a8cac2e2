"""Batches decoded from disk (or any image source) by worker processes, for data that does not fit in memory.

:class:`StreamLoader` has :class:`~._loader.DeviceLoader`'s interface and
guarantees: the order of epoch ``e`` is ``randperm`` of a generator seeded
with ``seed + e``; a sample's random-resized-crop and flip come from a
generator seeded with ``(seed, e, index)``, so the batches do not depend on
how many workers decode them or which one does; after ``load_state_dict`` a
resumed run sees exactly the batches the interrupted one would have. For
pad-and-crop data (already at the input size) the crop offsets and flips are
drawn exactly as ``DeviceLoader`` draws them and applied to the batch on the
device, so streamed and cached CIFAR give identical batches.

Each worker decodes a whole batch into one uint8 tensor (4x less to move
between processes than float); the main process pins it (CUDA), copies it
without blocking and normalises it on the device.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from ._loader import SeededEpochs, _is_int, check_batching, crop_flip
from ._sources import ImageSource
from ._transforms import Transforms

__all__ = ["StreamLoader", "default_workers"]


def default_workers() -> int:
    """Decoding processes: the CPUs this process may use, at most 8 (beyond that the disk or the
    accelerator's copy is the limit, and each worker holds a prefetched batch)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class _Reader(torch.utils.data.Dataset):
    """What a worker runs: a batch key ``(epoch, indices)`` in, the transformed uint8 batch out.

    Decode failures are returned, not raised, so the main process can name the
    file in a plain :class:`DataError` (or skip it) instead of a worker traceback.
    """

    def __init__(self, source: ImageSource, transforms: Transforms, seed: int, augment: bool) -> None:
        self.source, self.transforms, self.augment = source, transforms, augment
        self.seed = seed % (1 << 63)  # SeedSequence takes non-negative entropy

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> dict[str, Any]:
        epoch, indices = key
        start = time.perf_counter()
        c = self.transforms.crop
        out = torch.empty((len(indices), 3, c, c), dtype=torch.uint8)
        keep = np.ones(len(indices), dtype=bool)
        errors: list[str] = []
        for k, i in enumerate(indices):
            try:
                image = self.source.read(int(i))
            except DataError as e:
                keep[k] = False
                errors.append(str(e))
                continue
            if self.augment:
                hwc = self.transforms.augment(image, np.random.default_rng((self.seed, epoch, int(i))))
            else:
                hwc = self.transforms.evaluate(image)
            np.copyto(out[k].permute(1, 2, 0).numpy(), hwc)  # one copy, into the batch (Pillow's array is read-only)
        if not keep.all():
            out = out[torch.from_numpy(keep)]
        return {"x": out, "keep": torch.from_numpy(keep), "errors": errors, "seconds": time.perf_counter() - start}


class _Keys(torch.utils.data.Sampler):
    def __init__(self, keys: list[tuple[int, np.ndarray]]) -> None:
        self.keys = keys

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class StreamLoader(SeededEpochs):
    """Batches of ``source`` transformed per sample by worker processes; :class:`DeviceLoader`'s interface.

    Args:
        source: the images (:mod:`._sources`: files, a tensor, a user's Dataset).
        labels: integer ``[N]`` tensor.
        transforms: resize, crop and augmentation (:class:`Transforms`).
        batch_size, mean, std, device, shuffle, augment, drop_last, seed, channels_last, limit:
            as for :class:`DeviceLoader`.
        workers: decoding processes (0: in this process; default :func:`default_workers`).
        skip_bad: skip images that fail to decode and count them (``skipped``) instead of failing.

    ``timings`` accumulates the seconds the caller waited for batches ("wait") and the seconds the
    workers spent decoding and transforming ("decode", summed over workers).
    """

    def __init__(
        self,
        source: ImageSource,
        labels: torch.Tensor,
        *,
        transforms: Transforms,
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
        workers: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        if workers is not None and (not _is_int(workers) or workers < 0):
            raise ValueError(f"workers must be None or an integer of at least 0, but got {workers=}.")
        self.device, self._mean, self._std = check_batching(
            batch_size=batch_size, limit=limit, seed=seed, labels=labels, images=len(source), mean=mean, std=std,
            channels=3, device=device)
        n = len(source) if limit is None else min(limit, len(source))
        self.source = source if n == len(source) else source.subset(range(n))
        self.labels = labels[:n].to(torch.int64).cpu()
        self.transforms = transforms
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.channels_last, self.skip_bad = seed, channels_last, skip_bad
        self.workers = default_workers() if workers is None else workers
        self.epoch = 0
        self.skipped: dict[str, str] = {}  # image name -> why it could not be decoded
        self.timings = {"wait": 0.0, "decode": 0.0}

    @property
    def pad_crop(self) -> bool:
        return self.augment and self.transforms.train == "pad-crop"

    @property
    def _crops(self) -> bool:  # offsets and flips only for pad-and-crop: a random-resized-crop draws in the workers
        return self.pad_crop

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        draws = self.epoch_draws(epoch)
        self.epoch += 1  # now, so that a partly consumed epoch is still an epoch
        return self._batches(epoch, *draws)

    def _loader(self, keys: list[tuple[int, np.ndarray]]) -> DataLoader:
        reader = _Reader(self.source, self.transforms, self.seed, self.augment and not self.pad_crop)
        workers = min(self.workers, len(keys))
        context = None
        if workers > 0 and sys.platform.startswith("linux"):
            context = "fork"  # starts at once and never re-imports the caller's script
        return DataLoader(reader, batch_size=None, sampler=_Keys(keys), num_workers=workers,
                          pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
                          multiprocessing_context=context)

    def _batches(self, epoch: int, order: torch.Tensor | None, offsets: torch.Tensor | None,
                 flips: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        positions = [(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)) for b in range(len(self))]
        index = np.arange(self.num_samples) if order is None else order.numpy()
        keys = [(epoch, index[start:stop]) for start, stop in positions]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if not keys:
            return
        batches = iter(self._loader(keys))
        for (start, stop), (_, idx) in zip(positions, keys):
            waited = time.perf_counter()
            batch = next(batches)
            self.timings["wait"] += time.perf_counter() - waited
            self.timings["decode"] += batch["seconds"]
            keep = batch["keep"]
            if batch["errors"]:
                self._bad(idx[~keep.numpy()], batch["errors"])
            y = self.labels[torch.from_numpy(idx)][keep].to(self.device, non_blocking=True)
            x = batch["x"].to(self.device, non_blocking=True)
            if len(y) == 0:
                continue
            if offsets is not None and flips is not None:
                x = crop_flip(x, offsets[start:stop][keep].to(self.device), flips[start:stop][keep].to(self.device))
            x = x.to(torch.float32, memory_format=memory_format).div_(255).sub_(self._mean).div_(self._std)
            yield x, y

    def _bad(self, indices: np.ndarray, errors: list[str]) -> None:
        if not self.skip_bad:
            raise DataError(errors[0])
        for i, error in zip(indices, errors):
            name = self.source.name(int(i)) if hasattr(self.source, "name") else str(i)
            if name not in self.skipped:
                warnings.warn(f"Skipped an unreadable image ({len(self.skipped) + 1} so far): {error}", stacklevel=4)
            self.skipped[name] = error
