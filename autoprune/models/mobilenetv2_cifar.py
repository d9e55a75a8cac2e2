"""MobileNetV2 (Sandler et al. 2018) for CIFAR, after kuangliu/pytorch-cifar.

CIFAR changes from the ImageNet net: a stride-1 stem and a stride-1 second
stage, so a 32x32 input reaches the head at 4x4. Unlike kuangliu, the residual
is the paper's (identity only when stride is 1 and width is unchanged, no 1x1
projection shortcuts) and activations are ReLU6. Every block keeps its 1x1
expansion conv, even at expansion 1, as kuangliu does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["InvertedResidual", "CifarMobileNetV2"]

# (expansion, out_planes, num_blocks, stride)
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; identity residual when shapes allow."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """Stem conv, 17 inverted-residual blocks, 1x1 conv to 1280, global pool, ``linear``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks: list[nn.Module] = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in _CFG:
            for s in [stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu6(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


@register_model(dataset="cifar", input_size=(3, 32, 32), first_conv="conv1", classifier="linear")
def mobilenetv2(num_classes: int = 10) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs."""
    return CifarMobileNetV2(num_classes)
