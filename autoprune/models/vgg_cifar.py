"""CIFAR VGG-BN as used by Network Slimming (Liu et al. 2017), DCP and SCP.

This is the slimming variant, not torchvision's: no final max-pool in the
config, a 2x2 average pool instead, and a single Linear head, so VGG-16 and
VGG-19 results are comparable with those papers. The layer list is renamed
``features`` (slimming calls it ``feature``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["CifarVGG"]

_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with 2x2 max-pools ('M'), then avg-pool 2 and one Linear."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        # Slimming's init; BN gamma 0.5 is the starting point its L1 sparsity was tuned for.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(self.features(x), 2)
        return self.classifier(x.flatten(1))


@register_model(dataset="cifar", input_size=(3, 32, 32), first_conv="features.0", classifier="classifier")
def vgg16(num_classes: int = 10) -> CifarVGG:
    """VGG-16-BN for CIFAR (13 conv layers)."""
    return CifarVGG(_CFGS["vgg16"], num_classes)


@register_model(dataset="cifar", input_size=(3, 32, 32), first_conv="features.0", classifier="classifier")
def vgg19(num_classes: int = 10) -> CifarVGG:
    """VGG-19-BN for CIFAR (16 conv layers)."""
    return CifarVGG(_CFGS["vgg19"], num_classes)
