"""A decoded dataset cached as one uncompressed ``.pt`` file, keyed by its source's fingerprint.

Decoding 60,000 images takes a minute; loading the same pixels back from one
uncompressed tensor file takes a fraction of a second. The key is a hash of
the source files' relative paths, sizes and modification times: computing it
reads no pixels, yet any added, removed, replaced or edited file changes it,
so a stale cache is never used. ``.pt`` rather than ``.npz`` because numpy
checks a CRC over every byte of an ``.npz`` member, which alone costs about a
second for CIFAR-sized data. The file is memory-mapped (copy-on-write), so
loading costs milliseconds and the pixels are read from the page cache on
first use; it is only ever replaced by an atomic rename, never rewritten in
place, so a mapping stays valid.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .._io import save_torch
from .._resources import cache_root

# Bump when the cached layout changes, so that files written by an older
# version are ignored instead of misread.
_FORMAT = 1

_IMAGE_KEYS = ("train_images", "test_images")
_LABEL_KEYS = ("train_labels", "test_labels")


class SourceArrays(NamedTuple):
    """What a source loader returns: class names, uint8 NHWC images and int64 labels."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def default_cache_dir() -> Path:
    """``data/`` under the cache root (``$AUTOPRUNE_CACHE``, default ``~/.cache/autoprune``)."""
    return cache_root() / "data"


def stat_entries(root: Path, relpaths: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of each file: the cheap stand-in for its content."""
    entries = []
    for rel in relpaths:
        st = (root / rel).stat()
        entries.append((rel, st.st_size, st.st_mtime_ns))
    return entries


def fingerprint(tag: str, entries: Iterable[tuple[str, int, int]]) -> str:
    """Hash a source's kind (``tag``) and its files' ``(path, size, mtime_ns)``.

    Absolute paths are left out on purpose: moving a dataset folder keeps its
    cache valid, while two different copies differ in their mtimes.
    """
    h = hashlib.sha256(f"autoprune-data-cache/{_FORMAT}/{tag}\n".encode())
    h.update(json.dumps(sorted(entries)).encode())
    return h.hexdigest()


def to_payload(arrays: SourceArrays) -> dict[str, Any]:
    """The cached form of ``arrays``: NCHW contiguous uint8 tensors, so loading needs no copy."""
    payload: dict[str, Any] = {"format": _FORMAT, "classes": list(arrays.classes)}
    for images_key, labels_key in zip(_IMAGE_KEYS, _LABEL_KEYS):
        nchw = np.ascontiguousarray(getattr(arrays, images_key).transpose(0, 3, 1, 2))
        payload[images_key] = torch.from_numpy(nchw)
        payload[labels_key] = torch.from_numpy(np.asarray(getattr(arrays, labels_key), dtype=np.int64))
    return payload


def load_cached(path: Path) -> dict[str, Any] | None:
    """The cached payload at ``path``; ``None`` when absent.

    A file that cannot be read or does not hold a valid payload is deleted
    (with a warning), so the caller rebuilds it instead of failing forever.
    """
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        _check_payload(payload)
    except Exception as e:  # any failure to read a cache file means: rebuild it
        warnings.warn(f"Deleting the corrupt data cache {path} ({e}); rebuilding it.", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return payload


def save_cached(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically; a cache that cannot be written only costs a rebuild later."""
    try:
        save_torch(path, payload)
    except OSError as e:
        warnings.warn(
            f"Could not write the data cache {path} ({e}); the dataset will be decoded again "
            "next time. Set AUTOPRUNE_CACHE or pass cache_dir to use a writable folder.",
            stacklevel=3,
        )


def _check_payload(payload: Any) -> None:
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"not a format-{_FORMAT} autoprune data cache")
    classes = payload["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("'classes' is not a list of str")
    for images_key, labels_key in zip(_IMAGE_KEYS, _LABEL_KEYS):
        images, labels = payload[images_key], payload[labels_key]
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"{images_key!r} is not a uint8 4-D tensor")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"{labels_key!r} is not int64 with one label per image")
