"""Atomic file writes: an interrupted write never replaces a good file with half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a temporary file and atomically move it to ``path``."""
    with atomic_open(path) as f:
        write(f)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    write_bytes(path, lambda f: f.write(data))


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically (the object must hold only tensors and plain containers)."""
    write_bytes(path, lambda f: torch.save(obj, f))
