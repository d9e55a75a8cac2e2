"""The model zoo: CIFAR architectures from the pruning literature, plus torchvision's ImageNet ones.

Importing this package imports every family module so that each registers
itself; ``create("resnet56")`` is then the one way to build a model by name.
"""

from __future__ import annotations

from . import densenet_cifar, googlenet_cifar, imagenet, mobilenetv2_cifar, resnet_cifar, vgg_cifar  # noqa: F401
from ._registry import ModelInfo, create, get_model_info, list_models, register_model
from .resnet_cifar import ChannelPadShortcut

__all__ = ["create", "list_models", "get_model_info", "register_model", "ModelInfo", "ChannelPadShortcut"]
