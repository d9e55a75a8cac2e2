"""Image-folder datasets: ``root/train/<class>/<image>`` with ``root/test/...`` or ``root/val/...``
(ImageNet's layout once its validation images are sorted into class folders), any format Pillow reads.

Samples are ordered by file name (numbers compared as numbers), then class.
A folder exported with each image's original index as its name, like the
shared CIFAR-10 copy, thus keeps the official order; and the classes come
interleaved, so the first ``limit`` samples of a split are not all one class.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ._cache import SourceArrays
from ._sources import open_rgb

SPLITS = ("train", "test")

# Extensions of the formats Pillow can open (not those it can only write).
_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

# Images per worker task: large enough that the per-task overhead vanishes,
# small enough that the progress bar moves.
_CHUNK = 512


@dataclass(frozen=True)
class FolderIndex:
    """The listing of an image folder: enough to fingerprint it without reading a pixel."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int, int]]]  # split -> (path relative to root, size, mtime_ns)
    test_dir: str = "test"  # the folder of the test split: test/ or val/

    @property
    def entries(self) -> list[tuple[str, int, int]]:
        return [e for split in SPLITS for e in self.files[split]]


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} is missing: an image-folder dataset needs both train/<class>/ and "
            f"test/<class>/ (or val/<class>/) under {split_dir.parent}."
        )
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def test_dir_of(root: Path) -> str:
    """``test`` when ``root/test`` exists, else ``val`` when ``root/val`` does (ImageNet), else ``test``."""
    return "val" if not (root / "test").is_dir() and (root / "val").is_dir() else "test"


def scan_image_folder(root: str | os.PathLike[str]) -> FolderIndex:
    """List ``root/{train,test or val}/<class>/*`` and check that both splits have the same classes."""
    root = Path(root)
    test_dir = test_dir_of(root)
    train_classes, test_classes = _class_dirs(root / "train"), _class_dirs(root / test_dir)
    if not train_classes:
        raise DataError(f"{root / 'train'} holds no class folders; expected train/<class>/<image> files.")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"The class folders of {root / 'train'} and {root / test_dir} differ: only in train: "
            f"{only_train or 'none'}; only in {test_dir}: {only_test or 'none'}. Both splits need the "
            "same class folders (an empty folder is not enough); add or remove folders to match."
        )
    files: dict[str, list[tuple[str, int, int]]] = {}
    for split, folder in zip(SPLITS, ("train", test_dir)):
        entries = []
        for cls in train_classes:
            found = 0
            with os.scandir(root / folder / cls) as it:
                for e in it:
                    if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in _EXTENSIONS:
                        continue
                    if e.is_file():
                        st = e.stat()
                        entries.append((f"{folder}/{cls}/{e.name}", st.st_size, st.st_mtime_ns))
                        found += 1
            if not found:
                raise DataError(
                    f"{root / folder / cls} holds no images (files with a Pillow-readable extension "
                    "such as .png or .jpg). Add its images or delete the class folder in both splits."
                )
        files[split] = sorted(entries)
    return FolderIndex(root=root, classes=train_classes, files=files, test_dir=test_dir)


def _without(paths: list[str], labels: np.ndarray, skip: frozenset[str]) -> tuple[list[str], np.ndarray]:
    keep = np.array([p not in skip for p in paths], dtype=bool)
    return [p for p, k in zip(paths, keep) if k], labels[keep]


def _natural_key(name: str) -> list[str | int]:
    # re.split with a group puts text at even and digit runs at odd positions,
    # so keys of any two names compare str with str and int with int.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def ordered(index: FolderIndex, split: str) -> tuple[list[str], np.ndarray]:
    """The paths of ``split`` in sample order and their labels."""
    return _ordered(index, split)


def _ordered(index: FolderIndex, split: str) -> tuple[list[str], np.ndarray]:
    label_of = {cls: i for i, cls in enumerate(index.classes)}
    samples = []
    for rel, _, _ in index.files[split]:
        _, cls, fname = rel.split("/", 2)
        samples.append((_natural_key(fname), label_of[cls], fname, rel))
    samples.sort()
    paths = [str(index.root / s[3]) for s in samples]
    return paths, np.array([s[1] for s in samples], dtype=np.int64)


def _decode(path: str, size: tuple[int, int] | None, reference: str) -> np.ndarray:
    """One image as RGB uint8 HWC; ``size`` (Pillow's (width, height)) is enforced when given."""
    rgb = open_rgb(path)
    if size is not None and rgb.size != size:
        raise DataError(
            f"{path} is {rgb.size[0]}x{rgb.size[1]} but {reference} is {size[0]}x{size[1]}: all "
            "images of a dataset must have the same size. Resize them beforehand."
        )
    return np.asarray(rgb)


def _decode_chunk(paths: list[str], size: tuple[int, int], reference: str, skip_bad: bool = False) -> np.ndarray:
    """The images of ``paths``; with ``skip_bad`` an unreadable one is left all zero (the caller drops it)."""
    out = np.zeros((len(paths), size[1], size[0], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = _decode(path, size, reference)
        except DataError:
            if not skip_bad or not _unreadable(path):
                raise
    return out


def _unreadable(path: str) -> bool:
    try:
        open_rgb(path)
    except DataError:
        return True
    return False


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once and never re-imports the caller's script
    # (spawn would, and fails in scripts without a __main__ guard); where it is
    # not the safe default (macOS, Windows) keep the platform's own method.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _decode_all(paths: list[str], desc: str, skip_bad: bool = False) -> np.ndarray:
    """Decode ``paths`` into one NHWC array, in worker processes (Pillow holds the GIL)."""
    first = _decode(paths[0], None, paths[0])
    size = (first.shape[1], first.shape[0])
    out = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
    starts = range(0, len(paths), _CHUNK)
    workers = min(os.cpu_count() or 1, len(starts))
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        if workers <= 1:
            for s in starts:
                block = _decode_chunk(paths[s : s + _CHUNK], size, paths[0], skip_bad)
                out[s : s + len(block)] = block
                bar.update(len(block))
            return out
        pool = ProcessPoolExecutor(workers, mp_context=_pool_context())
        try:
            futures = {pool.submit(_decode_chunk, paths[s : s + _CHUNK], size, paths[0], skip_bad): s for s in starts}
            for future in as_completed(futures):
                block = future.result()
                out[futures[future] : futures[future] + len(block)] = block
                bar.update(len(block))
        except BrokenProcessPool as e:
            raise DataError(
                f"An image-decoding worker died ({e}), probably out of memory. Free memory and retry."
            ) from e
        finally:
            pool.shutdown(cancel_futures=True)
    return out


def decode_image_folder(index: FolderIndex, skip: frozenset[str] = frozenset(), skip_bad: bool = False) -> SourceArrays:
    """Decode every image of ``index`` to RGB uint8 NHWC; all must have the first one's size.

    ``skip`` names paths left out (unreadable headers found by the survey); with
    ``skip_bad`` an image that fails to decode is left out too, with a warning.
    """
    train_paths, train_labels = _ordered(index, "train")
    test_paths, test_labels = _ordered(index, "test")
    if skip:
        train_paths, train_labels = _without(train_paths, train_labels, skip)
        test_paths, test_labels = _without(test_paths, test_labels, skip)
    paths = train_paths + test_paths
    images = _decode_all(paths, desc=f"Decoding {index.root}", skip_bad=skip_bad)
    if skip_bad:  # the images that failed are all zero: only those can be unreadable
        blank = np.flatnonzero(~images.reshape(len(images), -1).any(axis=1))
        bad = {int(i) for i in blank if _unreadable(paths[i])}
        if bad:
            names = [paths[i] for i in sorted(bad)]
            warnings.warn(f"Skipped {len(bad)} unreadable image(s) (--skip-bad-images): {', '.join(names[:5])}"
                          + (" ..." if len(names) > 5 else ""), stacklevel=3)
            keep = np.array([i not in bad for i in range(len(images))])
            n = len(train_paths)
            train_labels, test_labels = train_labels[keep[:n]], test_labels[keep[n:]]
            train_paths = [p for p, k in zip(train_paths, keep[:n]) if k]
            images = images[keep]
    return SourceArrays(
        classes=list(index.classes),
        train_images=images[: len(train_paths)],
        train_labels=train_labels,
        test_images=images[len(train_paths) :],
        test_labels=test_labels,
    )
