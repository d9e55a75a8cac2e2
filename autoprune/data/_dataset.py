"""The in-memory dataset, its loading from any supported layout, and the train/holdout split."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .._resources import cache_root
from ..errors import DataError, unknown_name
from ._cache import SourceArrays, default_cache_dir, fingerprint, load_cached, save_cached, stat_entries, to_payload
from ._cifar_pickle import (
    archive_filename,
    cifar_files,
    fetch_cifar,
    find_cifar,
    load_cifar_pickle,
    where_to_put,
)
from ._image_folder import decode_image_folder, scan_image_folder

_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

_LAYOUTS = """Expected one of these layouts in the data directory:
  - CIFAR-10 pickles: cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta (or those files directly in it)
  - CIFAR-100 pickles: cifar-100-python/ with train, test, meta (or those files directly in it)
  - the official archive cifar-10-python.tar.gz or cifar-100-python.tar.gz (extracted on first use)
  - image folders: train/<class>/<image> and test/<class>/<image>, the same class folders in both"""


@dataclass(eq=False, repr=False)
class Dataset:
    """A whole dataset in memory: both splits as uint8 NCHW tensors, so training never decodes."""

    name: str  # "cifar10", "cifar100", or the image folder's name
    classes: list[str]
    train_images: torch.Tensor  # uint8 [N, C, H, W], CPU, contiguous
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # the folder it was read from

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DataError(f"{split}_images must be a uint8 [N, C, H, W] tensor, but got {images.dtype} {list(images.shape)}.")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{split}_labels must be int64 with one label per image ({len(images)}), "
                    f"but got {labels.dtype} {list(labels.shape)}."
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise DataError(
                    f"{split}_labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes, "
                    f"but range over [{labels.min()}, {labels.max()}]."
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"train and test images differ in shape: {list(self.train_images.shape[1:])} vs "
                f"{list(self.test_images.shape[1:])}."
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:  # the default would print the tensors
        c, h, w = self.train_images.shape[1:]
        return (
            f"Dataset(name={self.name!r}, classes={self.num_classes}, train={len(self.train_images)}, "
            f"test={len(self.test_images)}, image={c}x{h}x{w}, source={self.source!r})"
        )


def default_data_dir() -> Path:
    """Where ``load_dataset(None, download=True)`` keeps downloaded datasets."""
    return cache_root() / "datasets"


def load_dataset(
    data_dir: str | os.PathLike[str] | None,
    name: str = "cifar10",
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load a dataset from ``data_dir``, whatever its layout, through the decoded-array cache.

    ``name`` says which CIFAR pickles to look for (and to download, with
    ``download=True``) when ``data_dir`` holds several layouts or none; an
    image-folder dataset is found whatever ``name`` is and is named after its
    folder. ``data_dir=None`` means :func:`default_data_dir`. Decoded arrays
    are cached in ``cache_dir`` (default ``$AUTOPRUNE_CACHE`` or
    ``~/.cache/autoprune/data``) under a key that changes whenever a source
    file does, so only the first load decodes.
    """
    if name not in _NAMES:
        raise unknown_name("dataset", name, _NAMES)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    kind, folder = _locate(root, name, download=download, explicit=data_dir is not None)
    decode: Callable[[], SourceArrays]
    if kind == "pickle":
        label, tag = name, f"pickle:{name}"
        entries = stat_entries(folder, cifar_files(folder, name))
        decode = partial(load_cifar_pickle, folder, name)
    else:
        index = scan_image_folder(folder)
        label, tag = folder.resolve().name, "image-folder"
        entries = index.entries
        decode = partial(decode_image_folder, index)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = fingerprint(tag, entries)
    cache_file = cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-{key[:24]}.pt"
    payload = load_cached(cache_file)
    if payload is None:
        payload = to_payload(decode())
        save_cached(cache_file, payload)
    return Dataset(
        name=label,
        classes=payload["classes"],
        train_images=payload["train_images"],
        train_labels=payload["train_labels"],
        test_images=payload["test_images"],
        test_labels=payload["test_labels"],
        source=str(folder),
    )


def _locate(root: Path, name: str, *, download: bool, explicit: bool) -> tuple[str, Path]:
    """Which layout ``root`` holds: ``("pickle", folder)`` or ``("folder", root)``."""
    where = f"The data directory {root}" if explicit else f"No data_dir was given and the default {root}"
    if root.exists() and not root.is_dir():
        raise DataError(f"{where} is a file, not a directory. Pass the folder that holds the dataset.")
    if root.is_dir():
        folder = find_cifar(root, name)
        if folder is not None:
            return "pickle", folder
        if (root / "train").is_dir() or (root / "test").is_dir():
            return "folder", root
        for other in _NAMES.keys() - {name}:
            found = find_cifar(root, other)
            if found is not None:
                raise DataError(
                    f"{found} holds the {_NAMES[other]} pickles, but name={name!r} asks for "
                    f"{_NAMES[name]}. Pass name={other!r}, or a data directory holding {_NAMES[name]}."
                )
        if (root / archive_filename(name)).is_file():
            return "pickle", fetch_cifar(root, name)
    if download:
        return "pickle", fetch_cifar(root, name)
    if not root.exists():
        state = "does not exist"
    elif not any(root.iterdir()):
        state = "is empty"
    else:
        found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:10])
        state = f"holds no known dataset layout (found: {found})"
    raise DataError(f"{where} {state}. {_LAYOUTS}\nTo get {_NAMES[name]}: {where_to_put(root, name)}")


@dataclass(frozen=True, eq=False)
class Splits:
    """Indices into the training set: what fine-tuning may see, and the holdout it must not.

    Search rewards are measured on ``holdout``, so they estimate accuracy on
    unseen images without ever touching the test split.
    """

    train: torch.Tensor  # int64, sorted: training, fine-tuning and BN recalibration
    holdout: torch.Tensor  # int64, sorted: a fixed, seeded subset; never used for fine-tuning


def make_splits(num_train: int, holdout: int = 5000, seed: int = 0) -> Splits:
    """Split ``range(num_train)`` into a seeded random holdout of ``holdout`` indices and the rest.

    Uses its own ``torch.Generator``, so the split depends on ``seed`` only,
    never on what else consumed the global RNG.
    """
    for arg, value in (("num_train", num_train), ("holdout", holdout), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{arg} must be an int, but got {arg}={value!r}.")
    if num_train < 1:
        raise DataError(f"num_train must be at least 1, but got {num_train=}.")
    if not 0 <= holdout < num_train:
        raise DataError(
            f"holdout must lie in [0, num_train) = [0, {num_train}) so that some training images "
            f"remain, but got {holdout=}. Use a smaller holdout."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_train, generator=generator)
    return Splits(train=order[holdout:].sort().values, holdout=order[:holdout].sort().values)
