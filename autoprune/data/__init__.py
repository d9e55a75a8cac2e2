"""Datasets as uint8 tensors: CIFAR pickles or image folders, cached, split, and batched on the device.

Typical use::

    ds = load_dataset("~/data", "cifar10")
    splits = make_splits(len(ds.train_images))
    train = DeviceLoader(ds.train_images[splits.train], ds.train_labels[splits.train],
                         batch_size=128, mean=MEAN, std=STD, device="cuda",
                         shuffle=True, augment=True)
"""

from __future__ import annotations

from ._cifar_pickle import RestrictedUnpickler, load_cifar_pickle
from ._dataset import Dataset, Splits, load_dataset, make_splits
from ._loader import DeviceLoader

__all__ = [
    "Dataset",
    "DeviceLoader",
    "RestrictedUnpickler",
    "Splits",
    "load_cifar_pickle",
    "load_dataset",
    "make_splits",
]
