"""A timm-like model registry: builders plus the metadata the rest of autoprune needs.

The pruner, the search spaces and the data pipeline all need to know things a
bare ``nn.Module`` does not say (which conv is the stem, which Linear is the
head, what input size and normalisation the weights expect). Keeping that next
to the builder means adding an architecture is one decorated function.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import unknown_name

__all__ = ["ModelInfo", "register_model", "create", "list_models", "get_model_info"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DEFAULT_NUM_CLASSES = {"cifar": 10, "imagenet": 1000}

_REGISTRY: dict[str, ModelInfo] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What autoprune knows about a registered architecture besides how to build it."""

    name: str
    builder: Callable[..., nn.Module]
    dataset: str
    input_size: tuple[int, int, int]
    first_conv: str
    classifier: str
    space: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def register_model(
    *,
    dataset: str,
    input_size: tuple[int, int, int],
    first_conv: str,
    classifier: str,
    space: str | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a ``builder(num_classes=..., **kw)`` under its function name (or ``name``).

    The builder is returned unchanged so it stays callable directly. Both
    checks below are programming errors, so they raise ValueError rather than
    a user-facing AutopruneError.
    """
    if dataset not in _DEFAULT_NUM_CLASSES:
        raise ValueError(f"dataset must be one of {sorted(_DEFAULT_NUM_CLASSES)}, got {dataset!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=builder,
            dataset=dataset,
            input_size=input_size,
            first_conv=first_conv,
            classifier=classifier,
            space=space,
            mean=mean,
            std=std,
        )
        return builder

    return decorator


def get_model_info(name: str) -> ModelInfo:
    """Return the metadata of ``name``; a misspelt name gets a "Did you mean" hint."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("architecture", name, list_models()) from None


def create(name: str, num_classes: int | None = None, **kwargs: object) -> nn.Module:
    """Build ``name``; ``num_classes`` defaults to the dataset's (10 for CIFAR, 1000 for ImageNet)."""
    info = get_model_info(name)
    if num_classes is None:
        num_classes = _DEFAULT_NUM_CLASSES[info.dataset]
    return info.builder(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
