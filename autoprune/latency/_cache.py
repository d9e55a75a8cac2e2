"""Latency tables on disk: JSON files named by a hash of their key, the key kept inside and checked on load.

The key is everything a latency depends on besides the weights: the model's structure and its space
(module tree, input size, searchable groups and the counts they can take), the device (its kind and
name: the CPU model string or the GPU's), the runtime and its version, torch's version, and every
setting (batch, threads, dtype, repeats, ...), plus the table's grid and the clock (a test's fake timer
never shares a file with real timings). The file name holds a hash of the key, so two settings never
meet in one file; the key inside guards against a file copied or renamed from elsewhere. A file whose key
differs, or that cannot be read, is rebuilt, with a warning that says which and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .._io import write_json
from .._resources import cache_root
from ..errors import AutopruneError
from ..pruning import PrunableSpace

__all__ = ["FORMAT", "default_cache_dir", "structure_hash", "cache_path", "base_key", "load_entry", "save_entry"]

T = TypeVar("T")

FORMAT = 2  # 2: tables of the fastest call (1: of the median)


def default_cache_dir() -> Path:
    """``latency/`` under autoprune's cache root (``$AUTOPRUNE_CACHE``, default ``~/.cache/autoprune``)."""
    return cache_root() / "latency"


def structure_hash(space: PrunableSpace) -> str:
    """What the model computes and what the space may change, without the weights: the module tree (its repr
    names every layer's shape), the input size, and each searchable group with the counts it can take."""
    groups = [[g.name, int(g.channels), space.count_options(j).tolist()] for j, g in enumerate(space.searchable)]
    text = json.dumps([repr(space.model), list(space.info.input_size), space.name, groups])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike[str] | None, key: dict[str, Any]) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    arch = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key.get("arch", "model")))[:40]
    return folder / f"{arch}-{digest}.json"


def base_key(space: PrunableSpace, settings: dict[str, Any], device: str, runtime: str, version: str) -> dict[str, Any]:
    return {"format": FORMAT, "arch": space.arch, "space": space.name, "structure": structure_hash(space),
            "device_name": device, "runtime_version": f"{runtime} {version}", "torch": torch.__version__, **settings}


def load_entry(path: Path, key: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> T | None:
    """``parse`` of the stored entry at ``path`` when its key is ``key``; None (with a warning saying why) when
    the file is absent, unreadable, made for another key, or ``parse`` rejects it (ValueError, KeyError,
    TypeError, IndexError)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        stored = data["key"]
        if not isinstance(stored, dict):
            raise TypeError("its key is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"The latency table {path} is corrupt ({type(e).__name__}: {e}); rebuilding it.", stacklevel=3)
        return None
    if stored != key:
        differs = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        said = ", ".join(f"{k}: {stored.get(k)!r} there, {key.get(k)!r} here" for k in differs[:4])
        warnings.warn(f"The latency table {path} was built for another setting ({said}); rebuilding it.", stacklevel=3)
        return None
    try:
        return parse(data)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        warnings.warn(f"The latency table {path} is corrupt ({type(e).__name__}: {e}); rebuilding it.", stacklevel=3)
        return None


def save_entry(path: Path, entry: dict[str, Any]) -> None:
    """Write atomically; a table that cannot be written only costs a rebuild next time (a warning says so)."""
    try:
        write_json(path, entry)
    except (OSError, AutopruneError) as e:  # a cache that cannot be written is only a warning
        warnings.warn(f"Could not write the latency table {path} ({e}); it will be measured again next time. "
                      f"Set AUTOPRUNE_CACHE or pass cache_dir to use a writable folder.", stacklevel=3)
