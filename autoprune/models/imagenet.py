"""torchvision's ImageNet models, registered under ``imagenet_*`` names.

torchvision is an optional extra: it is imported inside each builder, never
at module import, so ``import autoprune`` works without it (or with a
torchvision build that does not match the installed torch).
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from ..errors import DependencyNotInstalled
from ._registry import register_model


def _torchvision_models(name: str) -> ModuleType:
    """Import torchvision.models, turning any failure into an actionable DependencyNotInstalled."""
    try:
        from torchvision import models
    except Exception as err:  # ImportError, or RuntimeError/OSError from a build that does not match torch
        raise DependencyNotInstalled(
            f'{name} needs torchvision: pip install "autoprune[vision]" (a torchvision build matching your torch)'
        ) from err
    return models


_STEM_AND_HEAD = {  # torchvision builder: (first conv, classifier, what it is)
    "resnet18": ("conv1", "fc", "ResNet-18"),
    "resnet50": ("conv1", "fc", "ResNet-50"),
    "vgg16_bn": ("features.0", "classifier.6", "VGG-16-BN"),
    "mobilenet_v2": ("features.0.0", "classifier.1", "MobileNetV2"),
}


def _register(builder: str, first_conv: str, classifier: str, title: str) -> None:
    """Register torchvision's ``builder`` as ``imagenet_<builder>``, importing torchvision only when it is built."""
    name = f"imagenet_{builder}"

    def build(num_classes: int = 1000, **kwargs: object) -> nn.Module:
        return getattr(_torchvision_models(name), builder)(num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = builder
    build.__doc__ = f"torchvision {title}; ``kwargs`` go to torchvision (e.g. ``weights=\"DEFAULT\"``)."
    register_model(dataset="imagenet", input_size=(3, 224, 224), first_conv=first_conv, classifier=classifier,
                   name=name)(build)


for _builder, (_first_conv, _classifier, _title) in _STEM_AND_HEAD.items():
    _register(_builder, _first_conv, _classifier, _title)
