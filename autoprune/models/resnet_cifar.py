"""The CIFAR ResNets of He et al. 2016 (section 4.2), layer for layer as akamaster/pytorch_resnet_cifar10.

Module names and shapes match that repository exactly, so its published
checkpoints load with ``strict=True`` once the DataParallel ``module.`` prefix
is stripped. Option A (parameter-free zero-padding shortcut) is the paper's
CIFAR setting; option B (1x1 conv + BN projection) is registered too because
some pruning papers report on it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["ChannelPadShortcut", "BasicBlock", "CifarResNet"]

_DEPTHS = (20, 32, 44, 56, 110)


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and place input channel ``src[i]`` at output channel ``dst[i]``.

    Other output channels are zero. Parameter-free, so akamaster checkpoints
    load unchanged. Unpruned: ``src = arange(in_channels)`` and
    ``dst = arange(in_channels) + (out_channels - in_channels) // 2`` (planes//4
    zeros each side), identical to
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``.

    Explicit index buffers (rather than a lambda around F.pad) let the pruning
    engine drop channels on either side of the shortcut by editing ``src`` and
    ``dst``. They are non-persistent so state dicts stay akamaster's.
    """

    src: torch.Tensor
    dst: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be >= in_channels ({in_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        offset = (out_channels - in_channels) // 2
        self.register_buffer("src", torch.arange(in_channels), persistent=False)
        self.register_buffer("dst", torch.arange(in_channels) + offset, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 max-pool subsamples exactly like x[:, :, ::s, ::s] but without
        # the SliceBackward node that confuses torch_pruning's tracer.
        sub = F.max_pool2d(x, kernel_size=1, stride=self.stride) if self.stride != 1 else x
        n, _, h, w = sub.shape
        out = sub.new_zeros(n, self.out_channels, h, w)
        return out.index_copy(1, self.dst, sub.index_select(1, self.src))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kept={self.src.numel()}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; the shortcut adapts width/stride when they change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = ChannelPadShortcut(in_planes, planes, stride)
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                raise ValueError(f"option must be 'A' or 'B', got {option!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 16-channel stem, then n blocks at widths 16/32/64."""

    def __init__(self, depth: int, num_classes: int = 10, option: str = "A") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1, option)
        self.layer2 = self._make_layer(32, n, 2, option)
        self.layer3 = self._make_layer(64, n, 2, option)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # akamaster's _weights_init: biases keep PyTorch's default
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, option: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3))
        return self.linear(out.flatten(1))


def _register(depth: int, option: str) -> None:
    suffix = "" if option == "A" else "_b"
    register_model(
        name=f"resnet{depth}{suffix}",
        dataset="cifar",
        input_size=(3, 32, 32),
        first_conv="conv1",
        classifier="linear",
        space=f"resnet_cifar_{option.lower()}",
    )(functools.partial(CifarResNet, depth, option=option))


for _depth in _DEPTHS:
    for _option in ("A", "B"):
        _register(_depth, _option)
