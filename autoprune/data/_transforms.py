"""The field's image transforms, per sample, with Pillow on uint8: what the streaming loader applies.

Evaluation: resize the shorter side to ``resize`` (bilinear), then centre-crop
``crop`` x ``crop``; an image already ``crop`` x ``crop`` is left as it is
(CIFAR at 32 px). Training: random-resized-crop to ``crop`` (area 8-100 %,
aspect 3/4-4/3, torchvision's sampling rule) and a horizontal flip; or, for
data already at the input size, the pad-and-crop + flip of CIFAR, which the
loaders apply a whole batch at a time on the device (:func:`~._loader.crop_flip`).

Pillow rather than kornia or torchvision: decoding dominates on a CPU and
Pillow does it anyway, its resize works on the uint8 image before it becomes
a tensor (4x less memory traffic than float), and images of different sizes
cannot be batched for a tensor library before they are cropped. torchvision's
own PIL path calls the very same ``Image.resize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["Transforms"]

_TRAIN_MODES = ("random-resized-crop", "pad-crop", "none")


@dataclass(frozen=True)
class Transforms:
    """Which transforms a loader applies, for a model taking ``crop`` x ``crop`` inputs.

    Args:
        crop: the model's input size (square).
        resize: evaluation resizes the shorter side to this, then centre-crops ``crop``
            (default ``round(crop / 0.875)``: 256 for 224, the ImageNet convention).
        train: "random-resized-crop", "pad-crop" (4-px zero padding, for data already at
            ``crop``), or "none" (training batches get the evaluation transform).
        scale: the random-resized-crop's range of area fractions.
        ratio: its range of aspect ratios.
    """

    crop: int
    resize: int | None = None
    train: str = "random-resized-crop"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if not isinstance(self.crop, int) or self.crop < 1:
            raise DataError(f"crop must be a positive integer (the model's input size), but got crop={self.crop!r}.")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < self.crop):
            raise DataError(f"resize must be an integer of at least crop={self.crop} (the shorter side before the "
                            f"centre crop), but got resize={self.resize!r}.")
        if self.train not in _TRAIN_MODES:
            raise DataError(f"train must be one of {', '.join(_TRAIN_MODES)}, but got train={self.train!r}.")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise DataError(f"scale must satisfy 0 < low <= high <= 1, but got scale={self.scale}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise DataError(f"ratio must satisfy 0 < low <= high, but got ratio={self.ratio}.")

    @classmethod
    def for_input(cls, crop: int, image_size: tuple[int, int] | None = None, *, resize: int | None = None) -> Transforms:
        """The defaults for a model of input size ``crop``: pad-and-crop training when every image is
        already ``crop`` x ``crop`` (``image_size``, when the data has one size), else random-resized-crop."""
        train = "pad-crop" if image_size is not None and tuple(image_size) == (crop, crop) else "random-resized-crop"
        return cls(crop=crop, resize=resize, train=train)

    @property
    def short_side(self) -> int:
        """The evaluation resize of the shorter side."""
        return self.resize if self.resize is not None else round(self.crop / 0.875)

    def evaluate(self, image: Image.Image) -> np.ndarray:
        """``image`` (RGB) resized and centre-cropped to ``crop`` x ``crop``, as uint8 HWC."""
        w, h = image.size
        c = self.crop
        if (w, h) != (c, c):
            s = self.short_side
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            image = image.resize(size, Image.BILINEAR)
            w, h = size
            top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
            image = image.crop((left, top, left + c, top + c))
        return np.asarray(image)

    def augment(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """``image`` (RGB) after the per-sample training transform, as uint8 HWC ``crop`` x ``crop``.

        "pad-crop" returns the evaluation transform: its crop and flip are drawn per
        epoch and applied to the batch by the loader, exactly as for cached data.
        """
        if self.train != "random-resized-crop":
            return self.evaluate(image)
        top, left, h, w = rrc_box(image.size[0], image.size[1], rng, self.scale, self.ratio)
        out = image.resize((self.crop, self.crop), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(out)


def rrc_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float],
            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random-resized-crop, by torchvision's rule: ten tries at a
    random area and log-uniform aspect ratio that fits, else the centre crop clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
