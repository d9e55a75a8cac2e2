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


@register_model(
    dataset="imagenet", input_size=(3, 224, 224), first_conv="conv1", classifier="fc", name="imagenet_resnet18"
)
def resnet18(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """torchvision ResNet-18; ``kwargs`` go to torchvision (e.g. ``weights="DEFAULT"``)."""
    return _torchvision_models("imagenet_resnet18").resnet18(num_classes=num_classes, **kwargs)


@register_model(
    dataset="imagenet", input_size=(3, 224, 224), first_conv="conv1", classifier="fc", name="imagenet_resnet50"
)
def resnet50(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """torchvision ResNet-50; ``kwargs`` go to torchvision (e.g. ``weights="DEFAULT"``)."""
    return _torchvision_models("imagenet_resnet50").resnet50(num_classes=num_classes, **kwargs)


@register_model(
    dataset="imagenet", input_size=(3, 224, 224), first_conv="features.0", classifier="classifier.6", name="imagenet_vgg16_bn"
)
def vgg16_bn(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """torchvision VGG-16-BN; ``kwargs`` go to torchvision (e.g. ``weights="DEFAULT"``)."""
    return _torchvision_models("imagenet_vgg16_bn").vgg16_bn(num_classes=num_classes, **kwargs)


@register_model(
    dataset="imagenet", input_size=(3, 224, 224), first_conv="features.0.0", classifier="classifier.1", name="imagenet_mobilenet_v2"
)
def mobilenet_v2(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """torchvision MobileNetV2; ``kwargs`` go to torchvision (e.g. ``weights="DEFAULT"``)."""
    return _torchvision_models("imagenet_mobilenet_v2").mobilenet_v2(num_classes=num_classes, **kwargs)
