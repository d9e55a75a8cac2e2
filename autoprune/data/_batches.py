"""One entry point for every consumer's batches: the cached :class:`DeviceLoader` or the :class:`StreamLoader`.

The evaluator, the fine-tune and the training baselines ask for a split (and
indices into it) and the model's input size; which loader answers is decided
here, the same way for all of them:

- uint8 data in memory whose images are no larger than the input (CIFAR, and
  the tests' tiny images) is batched on the device as it is, exactly as before;
- anything else (files, a user's Dataset, cached images larger than the input)
  is streamed through the field's transforms (:class:`Transforms`) by workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ._loader import DeviceLoader
from ._sources import TensorImages
from ._stream import StreamLoader
from ._transforms import Transforms

if TYPE_CHECKING:
    from ._dataset import Dataset

__all__ = ["Loader", "make_loader"]

Loader = DeviceLoader | StreamLoader


def make_loader(dataset: Dataset, split: str, indices: torch.Tensor | None = None, *, batch_size: int,
                mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                shuffle: bool = False, augment: bool = False, drop_last: bool = False, seed: int = 0,
                channels_last: bool = False, input_size: int | None = None, transforms: Transforms | None = None,
                workers: int | None = None) -> Loader:
    """Batches of ``dataset``'s ``split`` ("train" or "test"), restricted to ``indices`` when given.

    ``input_size`` is the model's (square) input size; it picks the default
    :class:`Transforms` when the data is streamed. ``transforms`` overrides them.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', but got {split=}.")
    images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
    if indices is not None:
        labels = labels[indices]
    common = dict(batch_size=batch_size, mean=mean, std=std, device=device, shuffle=shuffle, augment=augment,
                  drop_last=drop_last, seed=seed, channels_last=channels_last)
    small = isinstance(images, torch.Tensor) and (input_size is None or max(images.shape[2:]) <= input_size)
    if small and (transforms is None or (transforms.train == "pad-crop" and
                                         tuple(images.shape[2:]) == (transforms.crop, transforms.crop))):
        return DeviceLoader(images if indices is None else images[indices], labels, **common)
    source = TensorImages(images) if isinstance(images, torch.Tensor) else images
    if indices is not None:
        source = source.subset(indices)
    if transforms is None:
        if input_size is None:
            raise DataError(f"{dataset.name} is streamed (its images are resized and cropped for the model), so its "
                            "loader needs the model's input size: pass input_size (e.g. 224).")
        transforms = Transforms.for_input(input_size, dataset.image_size)
    if dataset.sizes is not None and transforms.train != "pad-crop":
        sizes = dataset.sizes[split] if indices is None else dataset.sizes[split][np.asarray(indices)]
        _check_not_too_small(sizes, transforms.crop, dataset, split)
    return StreamLoader(source, labels, transforms=transforms, workers=workers, skip_bad=dataset.skip_bad, **common)


def _check_not_too_small(sizes: np.ndarray, crop: int, dataset: Dataset, split: str) -> None:
    """Refuse data whose typical image is under half the crop: upscaling it that far would judge a blur."""
    if not len(sizes):
        return
    short = sizes.min(axis=1)
    median = int(np.median(short))
    if median * 2 < crop:
        w, h = sizes[int(np.argmin(short))]
        raise DataError(
            f"The {split} images of {dataset.name} are too small for the model's {crop}x{crop} input: their median "
            f"shorter side is {median} px (the smallest is {w}x{h}), under half the crop, so they would be upscaled "
            f"more than 2x. Use a model for inputs of about {median} px (--input-size), or larger images.")
