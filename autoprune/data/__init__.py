"""Datasets: CIFAR pickles or image folders of any size, cached in memory or streamed, split, and batched.

Typical use::

    ds = load_dataset("~/data", "cifar10")        # or an ImageNet-style folder (train/ and val/)
    splits = make_splits(len(ds.train_labels))
    train = make_loader(ds, "train", splits.train, batch_size=128, mean=MEAN, std=STD, device="cuda",
                        shuffle=True, augment=True, input_size=32)

``make_loader`` answers with a :class:`DeviceLoader` (uint8 data in memory,
batched on the device) or a :class:`StreamLoader` (worker processes decode and
transform, :class:`Transforms`), behind one interface.
"""

from __future__ import annotations

from ._batches import make_loader
from ._cifar_pickle import RestrictedUnpickler, load_cifar_pickle
from ._dataset import Dataset, Splits, load_dataset, make_splits, register_dataset
from ._loader import DeviceLoader
from ._stream import StreamLoader
from ._transforms import Transforms

__all__ = [
    "Dataset",
    "DeviceLoader",
    "RestrictedUnpickler",
    "Splits",
    "StreamLoader",
    "Transforms",
    "load_cifar_pickle",
    "load_dataset",
    "make_loader",
    "make_splits",
    "register_dataset",
]
