"""The model zoo and model specs: CIFAR architectures from the pruning literature, torchvision's ImageNet ones,
and any ``nn.Module`` given as ``package.module:factory``, ``file.py:factory`` or a module object.

Importing this package imports every family module so that each registers
itself; ``create("resnet56")`` or ``create(ModelSpec("my.py:net"))`` builds a model.
"""

from __future__ import annotations

from . import densenet_cifar, googlenet_cifar, imagenet, mobilenetv2_cifar, resnet_cifar, vgg_cifar  # noqa: F401
from ._registry import ModelInfo, get_model_info, list_models, register_model
from ._spec import (ModelSpec, build, create, every_output, parse_floats, parse_model_args, parse_size,
                    replay_spec, resolve, running_module, select_output, state_sha256, where)
from .resnet_cifar import ChannelPadShortcut

__all__ = ["create", "list_models", "get_model_info", "register_model", "ModelInfo", "ChannelPadShortcut",
           "ModelSpec", "build", "every_output", "resolve", "replay_spec", "parse_model_args", "parse_size",
           "parse_floats", "select_output", "running_module", "state_sha256", "where"]
