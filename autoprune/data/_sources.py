"""Where a split's images come from when they are not one uint8 tensor: files, a tensor, a user's Dataset.

Every source answers ``len()``, ``read(i)`` (an RGB Pillow image) and
``subset(indices)``; the streaming loader calls ``read`` in its worker
processes, so a source holds only what pickles or forks cheaply (paths, a
tensor, the user's dataset object).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

__all__ = ["FileImages", "ImageSource", "TensorImages", "TorchImages", "open_rgb"]

# What Pillow raises for a file that is not an image, is truncated or corrupt.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def read(self, i: int) -> Image.Image: ...
    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSource: ...


def open_rgb(path: str) -> Image.Image:
    """The image at ``path`` decoded as RGB: greyscale, palette, CMYK and alpha images are converted.

    A file Pillow cannot decode (truncated, corrupt, not an image) raises
    :class:`DataError` naming it.
    """
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")  # palette transparency would otherwise warn on convert("RGB")
            return im.convert("RGB")
    except DECODE_ERRORS as e:
        raise DataError(f"Cannot read the image {path}: {e}. Replace or delete the file, or pass "
                        "--skip-bad-images (skip_bad_images=True) to skip unreadable images and count them.") from e


def _indices(indices: Sequence[int] | torch.Tensor) -> np.ndarray:
    return np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)


class FileImages:
    """Image files, decoded on every read."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = np.asarray(paths, dtype=object)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> Image.Image:
        return open_rgb(str(self.paths[i]))

    def name(self, i: int) -> str:
        return str(self.paths[i])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FileImages:
        return FileImages(self.paths[_indices(indices)])


class TensorImages:
    """A uint8 ``[N, C, H, W]`` tensor read one image at a time (cached data at another input size)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i].permute(1, 2, 0).numpy()).convert("RGB")

    def name(self, i: int) -> str:
        return f"image {i}"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorImages:
        return TensorImages(self.images[torch.as_tensor(_indices(indices))])


class TorchImages:
    """A user's ``torch.utils.data.Dataset`` of ``(image, label)``: the image a Pillow image, a uint8
    ``[C, H, W]`` tensor, or a float ``[C, H, W]`` tensor in [0, 1] (1 or 3 channels)."""

    def __init__(self, dataset: Any, indices: np.ndarray | None = None) -> None:
        self.dataset = dataset
        self.indices = indices if indices is not None else np.arange(len(dataset))

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> Image.Image:
        j = int(self.indices[i])
        return to_pil(self.dataset[j][0], f"item {j} of {type(self.dataset).__name__}")

    def name(self, i: int) -> str:
        return f"item {int(self.indices[i])} of {type(self.dataset).__name__}"

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TorchImages:
        return TorchImages(self.dataset, self.indices[_indices(indices)])


def to_pil(image: Any, what: str) -> Image.Image:
    """A user's image as an RGB Pillow image; anything else is refused with what was expected."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] in (1, 3):
        if image.is_floating_point():
            image = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        if image.dtype == torch.uint8:
            hwc = image.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()
            return Image.fromarray(hwc)
    got = f"{image.dtype} {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
    raise DataError(f"{what} returned an image of {got}; autoprune takes a Pillow image, a uint8 [C, H, W] tensor or "
                    "a float [C, H, W] tensor in [0, 1] with 1 or 3 channels, untransformed: it applies the model's "
                    "resize, crop, augmentation and normalisation itself.")
