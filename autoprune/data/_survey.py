"""What an image folder holds, read from the image headers only: sizes, modes, unreadable files; and
which loader its data gets (the in-memory uint8 cache, or streaming from disk) and why.

Reading a header costs tens of microseconds where decoding costs milliseconds,
so the survey of even a large folder is quick, and it is cached beside the
decoded data under the folder's fingerprint.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .._io import write_bytes
from ..errors import DataError
from ._sources import DECODE_ERRORS

__all__ = ["FolderSurvey", "default_cache_limit", "parse_bytes", "survey_files"]

_CHUNK = 2048
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_limit() -> int:
    """A quarter of this machine's memory: what the decoded data may take before it is streamed instead."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows
        total = 16 << 30
    return total // 4


def parse_bytes(text: str | int) -> int:
    """``"4G"``, ``"512M"``, ``"1.5G"`` or a plain number of bytes, as an int (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
        if not match:
            raise DataError(f"--cache-limit must be a size like 4G, 512M or a number of bytes, but got {text!r}.")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value < 0:
        raise DataError(f"--cache-limit must be at least 0, but got {text!r}.")
    return value


def _header(path: str) -> tuple[int, int, str, str, str]:
    """``(width, height, mode, format, error)`` from the header; width -1 and the error when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode, im.format or "?", ""
    except DECODE_ERRORS as e:
        return -1, -1, "", "", f"Cannot read the image {path}: {e}"


def _headers(paths: list[str]) -> list[tuple[int, int, str, str, str]]:
    return [_header(p) for p in paths]


@dataclass
class FolderSurvey:
    """Per file of a folder (in its index order): width, height, mode and format; and the unreadable ones."""

    sizes: np.ndarray  # int32 [N, 2] (width, height); -1 where the header could not be read
    modes: dict[str, int]  # Pillow mode -> count, e.g. {"RGB": 9000, "L": 12, "CMYK": 3}
    formats: dict[str, int]  # JPEG, PNG, ...
    errors: dict[int, str]  # file position -> why its header could not be read

    @property
    def readable(self) -> np.ndarray:
        return self.sizes[:, 0] >= 0

    def one_size(self) -> tuple[int, int] | None:
        """``(width, height)`` when every readable image has it, else None."""
        ok = self.sizes[self.readable]
        if len(ok) and (ok == ok[0]).all():
            return int(ok[0, 0]), int(ok[0, 1])
        return None

    def decoded_bytes(self) -> int:
        """What the whole folder takes decoded to uint8 RGB."""
        ok = self.sizes[self.readable].astype(np.int64)
        return int((ok[:, 0] * ok[:, 1]).sum() * 3)

    def summary(self, indices: np.ndarray | None = None) -> str:
        """``min .. median .. max`` of the sizes (by area) and the number of distinct sizes."""
        sizes = self.sizes if indices is None else self.sizes[indices]
        sizes = sizes[sizes[:, 0] >= 0]
        if not len(sizes):
            return "none readable"
        order = np.argsort(sizes[:, 0].astype(np.int64) * sizes[:, 1], kind="stable")
        pick = [sizes[order[0]], sizes[order[len(order) // 2]], sizes[order[-1]]]
        distinct = len(np.unique(sizes, axis=0))
        if distinct == 1:
            return f"all {pick[0][0]}x{pick[0][1]}"
        return (f"{distinct} distinct sizes: smallest {pick[0][0]}x{pick[0][1]}, median {pick[1][0]}x{pick[1][1]}, "
                f"largest {pick[2][0]}x{pick[2][1]}")

    def to_bytes(self) -> bytes:
        f = io.BytesIO()
        extra = json.dumps({"modes": self.modes, "formats": self.formats,
                            "errors": {str(k): v for k, v in self.errors.items()}})
        np.savez(f, sizes=self.sizes, extra=np.frombuffer(extra.encode(), dtype=np.uint8))
        return f.getvalue()

    @classmethod
    def from_file(cls, path: Path, count: int) -> FolderSurvey | None:
        """The survey cached at ``path`` (never unpickled); None when absent, unreadable or not ``count`` files."""
        try:
            with np.load(path, allow_pickle=False) as z:
                sizes, extra = z["sizes"], json.loads(z["extra"].tobytes().decode())
            if sizes.shape != (count, 2):
                return None
            return cls(sizes, extra["modes"], extra["formats"], {int(k): v for k, v in extra["errors"].items()})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def survey_files(paths: list[str], cache_file: Path | None, desc: str) -> FolderSurvey:
    """Read the headers of ``paths`` (in worker processes when many), or the cached survey."""
    if cache_file is not None:
        cached = FolderSurvey.from_file(cache_file, len(paths))
        if cached is not None:
            return cached
    from ._image_folder import _pool_context

    chunks = [paths[s : s + _CHUNK] for s in range(0, len(paths), _CHUNK)]
    results: list[tuple[int, int, str, str, str]] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < 5000) as bar:
        if len(chunks) <= 1:
            results = _headers(paths)
        else:
            with ProcessPoolExecutor(min(os.cpu_count() or 1, len(chunks)), mp_context=_pool_context()) as pool:
                for block in pool.map(_headers, chunks):
                    results += block
                    bar.update(len(block))
    sizes = np.array([(w, h) for w, h, *_ in results], dtype=np.int32).reshape(-1, 2)
    survey = FolderSurvey(
        sizes=sizes,
        modes=dict(Counter(r[2] for r in results if not r[4])),
        formats=dict(Counter(r[3] for r in results if not r[4])),
        errors={i: r[4] for i, r in enumerate(results) if r[4]},
    )
    if cache_file is not None:
        try:
            write_bytes(cache_file, lambda f: f.write(survey.to_bytes()))
        except OSError:
            pass  # only costs reading the headers again next time
    return survey


def choose_loader(survey: FolderSurvey, limit: int, asked: str) -> tuple[str, str]:
    """``("memory" | "stream", why)`` for a folder: the uint8 cache needs one image size and must fit ``limit``."""
    size, need = survey.one_size(), survey.decoded_bytes()
    fits = need <= limit
    facts = f"decoded {_gib(need)} against --cache-limit {_gib(limit)}"
    if asked == "stream":
        return "stream", f"streaming was asked for ({facts})"
    if asked == "memory":
        return "memory", f"the in-memory cache was asked for ({facts})"
    if size is None:
        return "stream", f"the images differ in size ({survey.summary()}), and the uint8 cache holds one size"
    if not fits:
        return "stream", f"the data does not fit: {facts}"
    return "memory", f"every image is {size[0]}x{size[1]} and the data fits: {facts}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"
