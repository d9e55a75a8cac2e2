"""What autoprune sees in a data folder (`autoprune data`): splits, classes, counts, sizes, loader, errors.

Reads the image headers only (the survey), unless ``verify`` decodes every
image; nothing is cached in memory and nothing is decoded for the report.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ._cache import default_cache_dir, fingerprint
from ._image_folder import _pool_context, ordered, scan_image_folder, test_dir_of
from ._sources import open_rgb
from ._survey import choose_loader, default_cache_limit, parse_bytes, survey_files
from ._transforms import Transforms

__all__ = ["describe"]


def _verify(paths: list[str]) -> list[str]:
    errors = []
    for p in paths:
        try:
            open_rgb(p).load()
        except DataError as e:
            errors.append(str(e).split(". Replace")[0])
    return errors


def describe(data_dir: str | os.PathLike[str], *, name: str = "cifar10", cache_limit: int | str | None = None,
             input_size: int | None = None, verify: bool = False,
             cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The report's lines for ``data_dir``: an image folder is surveyed; CIFAR pickles are loaded."""
    root = Path(data_dir).expanduser()
    limit = default_cache_limit() if cache_limit is None else parse_bytes(cache_limit)
    if not (root / "train").is_dir():
        from ._dataset import load_dataset

        ds = load_dataset(root, name, cache_limit=limit, cache_dir=cache_dir)
        h, w = ds.train_images.shape[2:]
        return [f"{root}: {ds.name} ({ds.why}); {ds.num_classes} classes; train {len(ds.train_labels)}, "
                f"test {len(ds.test_labels)} images of {w}x{h}; loader: in memory."]
    index = scan_image_folder(root)
    train_paths, train_labels = ordered(index, "train")
    test_paths, test_labels = ordered(index, "test")
    paths = train_paths + test_paths
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = f"{root.resolve().name}-{fingerprint('image-folder', index.entries)[:24]}"
    survey = survey_files(paths, cache_dir / f"{stem}.survey.npz", desc=f"Reading the image headers of {root}")
    n = len(train_paths)
    classes = index.classes
    lines = [f"{root}: image folder, splits train/ and {test_dir_of(root)}/ (the test split, measured once at the end)",
             f"classes: {len(classes)} ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})"]
    for split, labels, part in (("train", train_labels, slice(0, n)), ("test", test_labels, slice(n, None))):
        counts = np.bincount(labels, minlength=len(classes))
        lines.append(f"  {split:5} {len(labels):>9,} images, {counts.min()}..{counts.max()} per class; "
                     f"{survey.summary(np.arange(len(paths))[part])}")
    lines.append("formats: " + ", ".join(f"{k} {v:,}" for k, v in Counter(survey.formats).most_common())
                 + "; modes: " + ", ".join(f"{k} {v:,}" for k, v in Counter(survey.modes).most_common())
                 + " (all converted to RGB)")
    choice, why = choose_loader(survey, limit, "auto")
    lines.append(f"loader: {'in-memory uint8 cache' if choice == 'memory' else 'streaming from disk'}: {why}")
    size = survey.one_size()
    crop = input_size or (size[0] if size and size[0] == size[1] else 224)
    t = Transforms.for_input(crop, (size[1], size[0]) if size else None)
    train = ("pad-and-crop (4 px) + flip" if t.train == "pad-crop" else
             f"random-resized-crop {crop} (scale {t.scale[0]:g}-{t.scale[1]:g}) + flip")
    evaluation = ("identity" if size == (crop, crop) else f"resize shorter side to {t.short_side}, centre-crop {crop}")
    lines.append(f"transforms for a {crop}-px model{'' if input_size else ' (--arch sets it)'}: evaluation {evaluation}; "
                 f"training {train}")
    errors = [survey.errors[i] for i in sorted(survey.errors)]
    if verify:
        readable = [p for i, p in enumerate(paths) if i not in survey.errors]
        chunks = [readable[s : s + 256] for s in range(0, len(readable), 256)]
        with tqdm(total=len(readable), desc="Decoding every image", unit="img") as bar, \
                ProcessPoolExecutor(min(os.cpu_count() or 1, max(1, len(chunks))), mp_context=_pool_context()) as pool:
            for chunk, found in zip(chunks, pool.map(_verify, chunks)):
                errors += found
                bar.update(len(chunk))
    what = "decoding every image" if verify else "reading the headers (--verify decodes every image)"
    if errors:
        lines.append(f"decode errors: {len(errors)} found by {what}; load fails on them unless --skip-bad-images:")
        lines += [f"  {e}" for e in errors[:10]] + ([f"  ... and {len(errors) - 10} more"] if len(errors) > 10 else [])
    else:
        lines.append(f"decode errors: none found by {what}")
    return lines
