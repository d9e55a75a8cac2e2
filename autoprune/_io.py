"""File access: atomic writes, and reads that treat every file as data.

An interrupted write never replaces a good file with half a file, and a write
that fails because of the disk (full, read-only, no permission) raises
:class:`~autoprune.errors.OutputError` with one line naming the file
(:func:`output_error`). A read never runs code: torch files are loaded with
``weights_only=True``, YAML with the safe loader, arrays with
``allow_pickle=False``; a file that is damaged, or holds something other than
data, raises one :class:`CheckpointError` naming it, never a traceback from
deep inside torch, PyYAML or numpy.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import yaml

from .errors import AutopruneError, CheckpointError, OutputError


def _temp_beside(path: Path, suffix: str) -> tuple[int, str]:
    """An open temporary file ``.<name>.<random><suffix>`` in ``path``'s folder, with the mode open() would give.

    mkstemp's 0600 would follow the file to its final name, making outputs unreadable to the user's group.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success (:func:`atomic_path`)."""
    with atomic_path(path, keep_suffix=False) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path``, renamed over ``path`` only when the block ends without error.

    For writers that want a file name rather than an open file (the ONNX and torch.export writers), and
    for files checked before they take their final name (an export is loaded back and compared first).
    The temporary is created before the block runs, so an unwritable folder fails before any work. Its name
    is ``.<name>.<random>.tmp``, then ``path``'s suffix when ``keep_suffix`` (readers such as torch.export.load
    look at it); without, it is what run directories and resumed trainings recognise as a write cut short.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path, f".tmp{path.suffix}" if keep_suffix else ".tmp")
        os.close(fd)
    except OSError as e:
        raise (output_error(e, path) or OutputError(f"Could not write {path} ({e}).")) from e
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        error = output_error(e, path)
        if error is not None:
            raise error from e
        raise


def write_bytes(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a temporary file and atomically move it to ``path``."""
    with atomic_open(path) as f:
        write(f)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON every autoprune file uses."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = json_bytes(obj)
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


def write_together(files: Mapping[str | os.PathLike[str], Callable[[BinaryIO], Any]]) -> None:
    """Write several files so that all of them are replaced or none is (a policy.json must match its model.pt).

    Every file is written to a temporary beside it first (the step that can run out of space);
    only when all are complete are they renamed into place, in the given order. A failure removes
    the temporaries and any file already renamed, so callers put last the file whose presence says
    the outputs are complete.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for target, write in files.items():
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _temp_beside(path, ".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        renamed: list[Path] = []
        try:
            for tmp, path in temps:
                os.replace(tmp, path)
                renamed.append(path)
        except BaseException:
            for path in renamed:
                path.unlink(missing_ok=True)
            raise
    except BaseException as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        error = output_error(e, temps[-1][1] if temps else next(iter(files), None))
        if error is not None:
            raise error from e
        raise


_FULL, _READ_ONLY, _DENIED = (errno.ENOSPC, errno.EDQUOT), (errno.EROFS,), (errno.EACCES, errno.EPERM)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _free(path: Path) -> str:
    folder = path
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    units = ("bytes", "KiB", "MiB", "GiB")
    i = 0
    while free >= 1024 and i < len(units) - 1:
        free, i = free / 1024, i + 1
    return f"{free:.0f} bytes" if i == 0 else f"{free:.1f} {units[i]}"


def _torch_write_failed(text: str) -> bool:
    """torch.save's zip writer on a full disk: "file write failed", or "[enforce fail at inline_container.cc...]
    unexpected pos" when the short write shows only at the next record (its reader fails "PytorchStreamReader")."""
    return "file write failed" in text or ("inline_container" in text and "Reader" not in text)


def output_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> OutputError | None:
    """The one-line :class:`OutputError` for a write that failed because of the disk, or None for any other failure.

    Looks through the exception and its causes: an ``OSError`` for a full disk, a read-only filesystem
    or a missing permission; torch's ``RuntimeError: [enforce fail at inline_container.cc...] ... file
    write failed``; Optuna's SQLAlchemy ``OperationalError: database or disk is full`` with its SQL dump.
    ``path`` names the file being written (the exception may name a temporary beside it).
    """
    for e in _causes(exc):
        if isinstance(e, OutputError):
            return e
        where = Path(path) if path else Path(e.filename) if isinstance(e, OSError) and e.filename else None
        name = str(where) if where is not None else "the output folder"
        text = str(e).splitlines()[0] if str(e) else ""
        full = isinstance(e, OSError) and e.errno in _FULL or "disk is full" in text
        if full or (isinstance(e, RuntimeError) and _torch_write_failed(text)):
            free = f" ({_free(where)} free)" if where is not None else ""
            cause = "no space left on the device" if full else "the write failed; is the disk full?"
            return OutputError(f"Could not write {name}: {cause}{free}. Free some space, or choose --out on "
                               "another disk.")
        if isinstance(e, OSError) and e.errno in _READ_ONLY:
            return OutputError(f"Could not write {name}: it is on a read-only filesystem. Choose --out on a "
                               "writable one.")
        if isinstance(e, OSError) and e.errno in _DENIED:
            return OutputError(f"Permission denied on {name}: change its permissions (for an output: or choose "
                               "--out in a folder you may write).")
    return None
