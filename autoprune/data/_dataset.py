"""The dataset (in memory, or streamed from its files), its loading from any supported layout, and the
train/holdout split."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .._resources import cache_root
from ..errors import DataError, unknown_name
from ._cache import (
    SourceArrays,
    default_cache_dir,
    fingerprint,
    load_cached,
    save_cached,
    stat_entries,
    to_payload,
)
from ._cifar_pickle import (
    archive_filename,
    cifar_files,
    fetch_cifar,
    find_cifar,
    load_cifar_pickle,
    where_to_put,
)
from ._image_folder import decode_image_folder, ordered, scan_image_folder, test_dir_of
from ._sources import FileImages, ImageSource, TorchImages
from ._survey import choose_loader, default_cache_limit, parse_bytes, survey_files

_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

_LAYOUTS = """Expected one of these layouts in the data directory:
  - CIFAR-10 pickles: cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta (or those files directly in it)
  - CIFAR-100 pickles: cifar-100-python/ with train, test, meta (or those files directly in it)
  - the official archive cifar-10-python.tar.gz or cifar-100-python.tar.gz (extracted on first use)
  - image folders: train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>), the same class
    folders in both"""

_LOADERS = ("auto", "memory", "stream")


@dataclass(eq=False, repr=False)
class Dataset:
    """A dataset's two splits: uint8 NCHW tensors in memory (training never decodes), or image sources
    (:mod:`._sources`: files, a user's ``torch.utils.data.Dataset``) that loaders stream and transform.

    ``why`` says why the data is in memory or streamed; ``sizes`` holds, for a streamed folder, each
    sample's (width, height) per split, read from the headers.
    """

    name: str  # "cifar10", "cifar100", or the image folder's name
    classes: list[str]
    train_images: torch.Tensor | ImageSource  # uint8 [N, C, H, W], CPU, contiguous; or a source
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor | ImageSource
    test_labels: torch.Tensor
    source: str  # the folder it was read from
    why: str = ""
    sizes: dict[str, np.ndarray] | None = None
    skip_bad: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if isinstance(images, torch.Tensor) or not hasattr(images, "read"):
                if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
                    got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
                    raise DataError(f"{split}_images must be a uint8 [N, C, H, W] tensor, but got {got}.")
            if labels.dtype != torch.int64 or labels.shape != (len(images),):
                raise DataError(
                    f"{split}_labels must be int64 with one label per image ({len(images)}), "
                    f"but got {labels.dtype} {list(labels.shape)}."
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise DataError(
                    f"{split}_labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes, "
                    f"but range over [{labels.min()}, {labels.max()}]."
                )
        if self.in_memory and self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"train and test images differ in shape: {list(self.train_images.shape[1:])} vs "
                f"{list(self.test_images.shape[1:])}."
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        """Both splits are uint8 tensors (the cache); otherwise they are streamed from their source."""
        return isinstance(self.train_images, torch.Tensor) and isinstance(self.test_images, torch.Tensor)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` when every image has it, else None."""
        if self.in_memory:
            return tuple(self.train_images.shape[2:])  # type: ignore[return-value]
        if self.sizes is not None:
            every = np.concatenate([self.sizes["train"], self.sizes["test"]])
            if len(every) and (every == every[0]).all():
                return int(every[0, 1]), int(every[0, 0])
        return None

    @classmethod
    def from_torch(cls, train: Any, test: Any, *, classes: list[str] | None = None, name: str = "custom") -> Dataset:
        """A user's ``torch.utils.data.Dataset`` pair as a streamed dataset.

        Each item is ``(image, label)``: the image a Pillow image, a uint8 ``[C, H, W]`` tensor or a float
        one in [0, 1], untransformed (autoprune resizes, crops, augments and normalises for the model).
        Labels are read from ``.targets`` when the dataset has it (torchvision's convention), else from
        every item once; ``classes`` default to the dataset's ``.classes``, else to ``"0" .. "K-1"``.
        """
        labels = [_labels_of(ds, what) for ds, what in ((train, "train"), (test, "test"))]
        if classes is None:
            classes = list(getattr(train, "classes", None) or [])
            if not classes:
                top = max(int(t.max()) if t.numel() else -1 for t in labels)
                classes = [str(i) for i in range(top + 1)]
        return cls(name=name, classes=[str(c) for c in classes], train_images=TorchImages(train),
                   train_labels=labels[0], test_images=TorchImages(test), test_labels=labels[1],
                   source=f"<{type(train).__name__}>", why="a user's torch Dataset: streamed")

    def __repr__(self) -> str:  # the default would print the tensors
        if self.in_memory:
            c, h, w = self.train_images.shape[1:]
            image = f"{c}x{h}x{w}"
        else:
            size = self.image_size
            image = f"3x{size[0]}x{size[1]}, streamed" if size else "mixed sizes, streamed"
        return (
            f"Dataset(name={self.name!r}, classes={self.num_classes}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, image={image}, source={self.source!r})"
        )


def _labels_of(dataset: Any, what: str) -> torch.Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in tqdm(range(len(dataset)), desc=f"reading {what} labels", unit="item",
                                                     disable=len(dataset) < 5000)]
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64).flatten()
    if len(labels) != len(dataset):
        raise DataError(f"The {what} dataset has {len(dataset)} items but {len(labels)} targets.")
    return labels


_REGISTERED: dict[str, Callable[[], Dataset]] = {}


def register_dataset(name: str, factory: Callable[[], Dataset] | Dataset) -> None:
    """Make ``load_dataset(..., name)`` (and so a search's ``SearchConfig(dataset=name)``) return a
    dataset built in Python, e.g. ``Dataset.from_torch(train, test)``; ``factory`` is called on each load."""
    if name in _NAMES:
        raise DataError(f"{name!r} is a built-in dataset name; register yours under another name.")
    _REGISTERED[name] = factory if callable(factory) and not isinstance(factory, Dataset) else (lambda: factory)


def default_data_dir() -> Path:
    """Where ``load_dataset(None, download=True)`` keeps downloaded datasets."""
    return cache_root() / "datasets"


def load_dataset(
    data_dir: str | os.PathLike[str] | None,
    name: str = "cifar10",
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    skip_bad_images: bool = False,
    loader: str = "auto",
) -> Dataset:
    """Load a dataset from ``data_dir``, whatever its layout, through the decoded-array cache.

    ``name`` says which CIFAR pickles to look for (and to download, with
    ``download=True``) when ``data_dir`` holds several layouts or none; an
    image-folder dataset is found whatever ``name`` is and is named after its
    folder. ``data_dir=None`` means :func:`default_data_dir`. Decoded arrays
    are cached in ``cache_dir`` (default ``$AUTOPRUNE_CACHE`` or
    ``~/.cache/autoprune/data``) under a key that changes whenever a source
    file does, so only the first load decodes.

    An image folder is decoded into that cache when its images share one size and
    it fits ``cache_limit`` (bytes or "4G"; default a quarter of the machine's
    memory); otherwise it is streamed from its files (:class:`StreamLoader`).
    ``loader`` forces "memory" or "stream". ``skip_bad_images`` skips images that
    cannot be decoded, and counts them, instead of failing on the first.
    ``name`` may also be one given to :func:`register_dataset`.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name not in _NAMES:
        raise unknown_name("dataset", name, {**_NAMES, **_REGISTERED})
    if loader not in _LOADERS:
        raise DataError(f"loader must be one of {', '.join(_LOADERS)}, but got {loader=}.")
    limit = default_cache_limit() if cache_limit is None else parse_bytes(cache_limit)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    kind, folder = _locate(root, name, download=download, explicit=data_dir is not None)
    decode: Callable[[], SourceArrays]
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if kind == "pickle":
        label, tag = name, f"pickle:{name}"
        entries = stat_entries(folder, cifar_files(folder, name))
        decode = partial(load_cifar_pickle, folder, name)
    else:
        index = scan_image_folder(folder)
        label, tag = folder.resolve().name, "image-folder" + ("+skip-bad" if skip_bad_images else "")
        entries = index.entries
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-{fingerprint(tag, entries)[:24]}"
        cached = cache_dir / f"{stem}.pt"
        if loader == "stream" or not cached.is_file() or (loader == "auto" and cached.stat().st_size > limit):
            return _folder_dataset(index, label, cache_dir / f"{stem}.survey.npz", limit, loader, skip_bad_images,
                                   decode_to=cached)
        decode = partial(decode_image_folder, index)
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
        why="the decoded uint8 cache" if kind == "folder" else "CIFAR pickles: decoded whole, in memory",
    )


def _folder_dataset(index: Any, label: str, survey_file: Path, limit: int, loader: str, skip_bad: bool,
                    decode_to: Path) -> Dataset:
    """An image folder without a usable cache: surveyed, then decoded into the cache or streamed."""
    train_paths, train_labels = ordered(index, "train")
    test_paths, test_labels = ordered(index, "test")
    paths = train_paths + test_paths
    survey = survey_files(paths, survey_file, desc=f"Reading the image headers of {index.root}")
    bad = {paths[i] for i in survey.errors}
    if bad and not skip_bad:
        first = survey.errors[min(survey.errors)]
        more = f" ({len(bad) - 1} more unreadable image(s) found)" if len(bad) > 1 else ""
        raise DataError(f"{first}{more}. Replace or delete the file(s), or pass --skip-bad-images "
                        "(skip_bad_images=True) to skip unreadable images and count them.")
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable image(s) (--skip-bad-images): "
                      f"{', '.join(sorted(bad)[:5])}" + (" ..." if len(bad) > 5 else ""), stacklevel=3)
    choice, why = choose_loader(survey, limit, loader)
    if bad:
        why += f"; {len(bad)} unreadable image(s) skipped"
    if choice == "memory":
        decode = partial(decode_image_folder, index)
        if bad or skip_bad:
            decode = partial(decode, skip=frozenset(bad), skip_bad=skip_bad)
        payload = load_cached(decode_to)
        if payload is None:
            payload = to_payload(decode())
            save_cached(decode_to, payload)
        return Dataset(name=label, classes=payload["classes"], train_images=payload["train_images"],
                       train_labels=payload["train_labels"], test_images=payload["test_images"],
                       test_labels=payload["test_labels"], source=str(index.root), why=why)
    keep = survey.readable
    n = len(train_paths)
    sizes = {"train": survey.sizes[:n][keep[:n]], "test": survey.sizes[n:][keep[n:]]}
    train_images = FileImages([p for p, k in zip(train_paths, keep[:n]) if k])
    test_images = FileImages([p for p, k in zip(test_paths, keep[n:]) if k])
    return Dataset(name=label, classes=list(index.classes), train_images=train_images,
                   train_labels=torch.from_numpy(train_labels[keep[:n]]), test_images=test_images,
                   test_labels=torch.from_numpy(test_labels[keep[n:]]), source=str(index.root), why=why,
                   sizes=sizes, skip_bad=skip_bad, extra={"survey": survey, "test_dir": index.test_dir})


def _locate(root: Path, name: str, *, download: bool, explicit: bool) -> tuple[str, Path]:
    """Which layout ``root`` holds: ``("pickle", folder)`` or ``("folder", root)``."""
    where = f"The data directory {root}" if explicit else f"No data_dir was given and the default {root}"
    if root.exists() and not root.is_dir():
        raise DataError(f"{where} is a file, not a directory. Pass the folder that holds the dataset.")
    if root.is_dir():
        folder = find_cifar(root, name)
        if folder is not None:
            return "pickle", folder
        if (root / "train").is_dir() or (root / test_dir_of(root)).is_dir():
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
