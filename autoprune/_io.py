"""File access: atomic writes, and reads that treat every file as data.

An interrupted write never replaces a good file with half a file. A read never
runs code: torch files are loaded with ``weights_only=True``, YAML with the
safe loader, arrays with ``allow_pickle=False``; a file that is damaged, or
holds something other than data, raises one :class:`CheckpointError` naming
it, never a traceback from deep inside torch, PyYAML or numpy.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import yaml

from .errors import AutopruneError, CheckpointError


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


def load_torch(path: str | os.PathLike[str], what: str, *, hint: str = "", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; a bad file raises :class:`CheckpointError` naming it.

    ``what`` names the file for the message ("Checkpoint", "Training checkpoint");
    ``hint`` is appended (what to do about it); ``kwargs`` go to ``torch.load``
    (``map_location`` defaults to the CPU). PyTorch's own message for a file
    holding Python objects suggests ``weights_only=False``; run files travel
    between people and machines, so autoprune never passes that on.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist.{_hint(hint)}")
    kwargs.setdefault("map_location", "cpu")
    try:
        with warnings.catch_warnings():  # a pickle of another protocol is refused below; no need to warn first
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{what} {path} cannot be read: it holds Python objects or code, or is not a torch file "
            f"({_unpickler_reason(str(e))}). autoprune reads only tensors and plain data from files and will not "
            f"load it. If you made it yourself, save tensors and plain containers only (e.g. a state_dict()).{_hint(hint)}"
        ) from None
    except Exception as e:  # garbage makes torch raise anything (an IndexError from its unpickler, ...)
        first = str(e).splitlines()[0] if str(e) else "empty or cut short"
        raise CheckpointError(f"{what} {path} cannot be read ({type(e).__name__}: {first}). Is the file complete and "
                              f"written by torch.save?{_hint(hint)}") from e


def read_yaml(path: str | os.PathLike[str], what: str, *, hint: str = "") -> Any:
    """The YAML document at ``path``, read with the safe loader (no Python tags)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist.{_hint(hint)}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{what} {path} is not valid YAML of plain data ({first}).{_hint(hint)}") from e


def load_npz(path: str | os.PathLike[str], what: str, *, hint: str = "") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read with ``allow_pickle=False`` (object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist.{_hint(hint)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as e:  # as for torch files: whatever a damaged file makes numpy raise
        raise CheckpointError(f"{what} {path} cannot be read as arrays of numbers ({type(e).__name__}: {e})."
                              f"{_hint(hint)}") from e


def save_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` atomically; only numeric and boolean arrays (no objects), so it reads back without pickle."""
    write_bytes(path, lambda f: np.savez(f, **arrays))


@contextmanager
def reading(path: str | os.PathLike[str], what: str, *, hint: str = "") -> Iterator[None]:
    """Turn the errors of using a file's contents (wrong keys, types, shapes) into a CheckpointError naming it.

    A file can parse as valid data and still not be what autoprune wrote there;
    applying it then fails somewhere in torch or numpy, which would say nothing
    about the file.
    """
    try:
        yield
    except CheckpointError:  # names its file already
        raise
    except (AutopruneError, KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{what} {path} is damaged: it does not hold what autoprune wrote there "
                              f"({type(e).__name__}: {detail}).{_hint(hint)}") from e


def _hint(hint: str) -> str:
    return f" {hint}" if hint else ""


def _unpickler_reason(message: str) -> str:
    """The weights-only unpickler's own reason, without PyTorch's advice to load the file unsafely."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", message, re.DOTALL)
    return " ".join(found.group(1).split()) if found else "not a weights-only pickle"
