"""CIFAR-10 and CIFAR-100 from the official python pickles, with a safe unpickler and download.

The official files are Python 2 pickles: a dict of byte-string keys, numpy
arrays and lists. ``pickle.load`` would run whatever callable a tampered file
names, so :class:`RestrictedUnpickler` resolves only the few numpy globals
those files need and refuses everything else before it can be called.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch.hub import download_url_to_file

from ..errors import DataError, unknown_name
from ._cache import SourceArrays

__all__ = ["RestrictedUnpickler", "load_cifar_pickle"]


@dataclass(frozen=True)
class _Archive:
    url: str
    md5: str
    folder: str  # what the archive extracts to
    train: tuple[str, ...]  # pickle files, relative to the folder
    test: str
    meta: str
    labels_key: bytes
    names_key: bytes

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


_ARCHIVES: dict[str, _Archive] = {
    "cifar10": _Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        labels_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": _Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        labels_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

# The exact objects the numpy pickler names: looked up from numpy itself so
# that both spellings (numpy<2 wrote numpy.core, numpy>=2 writes numpy._core)
# resolve without importing the deprecated numpy.core.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

_CHUNK = 1 << 20


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    Any other global (``os.system``, ``builtins.eval``, a class) raises
    :class:`DataError` naming it, before anything is called. ``source`` names
    the file in that message.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<stream>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"Refused to unpickle {self.source}: it references the global {module}.{name}, "
                "which a CIFAR pickle never contains (only numpy arrays, lists and bytes), so the "
                "file is not an official CIFAR batch and could run code. Delete it and download "
                "the dataset again from the official site."
            ) from None


def _read_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, source=str(path)).load()
    except DataError:
        raise
    except Exception as e:  # any other failure means a truncated or corrupt file
        raise DataError(
            f"Cannot read the CIFAR pickle {path}: {type(e).__name__}: {e}. The file is corrupt "
            "or truncated; delete its folder and extract or download the dataset again."
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict a CIFAR pickle holds.")
    return obj


def _field(batch: dict[Any, Any], key: bytes, path: Path) -> Any:
    """``batch[key]``; files re-pickled under Python 3 have str keys, so accept those too."""
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    found = ", ".join(repr(k) for k in batch)
    raise DataError(f"{path} has no {key.decode()!r} entry (found: {found}); it is not a CIFAR pickle.")


def _read_batch(path: Path, archive: _Archive, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    data = _field(batch, b"data", path)
    labels = np.asarray(_field(batch, archive.labels_key, path), dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape [N, 3072], but got {type(data).__name__} {shape}.")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), but range over [{labels.min()}, {labels.max()}].")
    return data, labels


def _nhwc(rows: np.ndarray) -> np.ndarray:
    # Each row is 1024 red, then green, then blue values (CHW); the NHWC view
    # of that buffer costs nothing and turns back into contiguous NCHW free.
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def load_cifar_pickle(folder: str | os.PathLike[str], name: str = "cifar10") -> SourceArrays:
    """Read the official CIFAR-10 (``name="cifar10"``) or CIFAR-100 pickles from ``folder``.

    Returns uint8 NHWC images (a view of the pickled CHW rows) and int64
    labels; CIFAR-100 uses its 100 fine labels.
    """
    if name not in _ARCHIVES:
        raise unknown_name("CIFAR dataset", name, _ARCHIVES)
    archive = _ARCHIVES[name]
    folder = Path(folder)
    cifar_files(folder, name)
    names = _field(_read_pickle(folder / archive.meta), archive.names_key, folder / archive.meta)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = [_read_batch(folder / f, archive, len(classes)) for f in archive.train]
    test_rows, test_labels = _read_batch(folder / archive.test, archive, len(classes))
    return SourceArrays(
        classes=classes,
        train_images=_nhwc(np.concatenate([rows for rows, _ in train])),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=_nhwc(test_rows),
        test_labels=test_labels,
    )


def cifar_files(folder: Path, name: str) -> tuple[str, ...]:
    """The pickle files of ``name`` (relative to ``folder``), after checking they are all there."""
    archive = _ARCHIVES[name]
    missing = [f for f in archive.files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks the {name} files {', '.join(missing)}. Extract {archive.filename} "
            f"again (it holds {archive.folder}/ with {', '.join(archive.files)}), or delete the "
            "folder and pass download=True."
        )
    return archive.files


def archive_filename(name: str) -> str:
    return _ARCHIVES[name].filename


def find_cifar(root: Path, name: str) -> Path | None:
    """The folder holding ``name``'s pickles: ``root`` itself or ``root/<official folder>``.

    A folder counts once any of the files is there, so that an incomplete
    extraction is reported by :func:`load_cifar_pickle` as missing files.
    """
    archive = _ARCHIVES[name]
    for folder in (root, root / archive.folder):
        if any((folder / f).is_file() for f in archive.files):
            return folder
    return None


def fetch_cifar(root: Path, name: str) -> Path:
    """Extract ``name``'s archive in ``root``, downloading it first when it is not there.

    The archive is checked against its published md5 either way, and kept
    (like torchvision does) so that the folder can be re-extracted offline.
    """
    archive = _ARCHIVES[name]
    path = root / archive.filename
    if path.is_file():
        _check_md5(path, archive)
    else:
        _download(archive, path)
    _extract(path, root, archive)
    return root / archive.folder


def where_to_put(root: Path, name: str) -> str:
    """The sentence telling a user how to provide ``name`` without the network."""
    return _where_to_put(root, _ARCHIVES[name])


def _where_to_put(root: Path, a: _Archive) -> str:
    return (
        f"Download {a.url} (md5 {a.md5}) and put it, or the {a.folder}/ folder it contains, "
        f"in {root}; or pass download=True on a machine with internet access."
    )


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_md5(path: Path, archive: _Archive) -> None:
    got = _md5(path)
    if got != archive.md5:
        raise DataError(
            f"{path} has md5 {got}, but the official archive has md5 {archive.md5}: it is "
            f"incomplete or not the official file. Delete it and download it again from {archive.url}."
        )


def _download(archive: _Archive, path: Path) -> None:
    """Download the archive with a progress bar; only a file with the right md5 lands at ``path``.

    torch.hub checks sha256 prefixes, but the archive publishes an md5: the download goes to a
    hidden name beside ``path`` and is checked and renamed here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.download")
    try:
        try:
            download_url_to_file(archive.url, str(part))
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            raise DataError(f"Could not download {archive.url}: {e}. " + _where_to_put(path.parent, archive)) from e
        got = _md5(part)
        if got != archive.md5:
            raise DataError(
                f"The download of {archive.url} has md5 {got}, but the official "
                f"archive has md5 {archive.md5}; it was not saved. Retry, or: "
                + _where_to_put(path.parent, archive)
            )
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _extract(path: Path, root: Path, archive: _Archive) -> None:
    """Extract into a temporary folder, then move the dataset folder into place in one rename.

    ``filter="data"`` refuses absolute paths, ``..``, links out of the
    folder and device files, so a malicious archive cannot write elsewhere.
    """
    if not hasattr(tarfile, "data_filter"):
        raise DataError(
            f"Safe extraction of {path} needs Python >= 3.10.12 or >= 3.11.4 (tarfile filters). "
            f"Upgrade Python, or extract it yourself into {root}."
        )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:  # zlib.error is raised as tarfile.ReadError
            raise DataError(f"Cannot extract {path}: {e}. Delete it and download it again from {archive.url}.") from e
        if not (tmp / archive.folder).is_dir():
            raise DataError(
                f"{path} does not contain the folder {archive.folder}/; it is not the official archive. "
                f"Delete it and download it again from {archive.url}."
            )
        try:
            os.replace(tmp / archive.folder, root / archive.folder)
        except OSError as e:
            raise DataError(
                f"Cannot move the extracted {archive.folder}/ into {root}: {e}. "
                f"Remove the existing {root / archive.folder} and retry."
            ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
