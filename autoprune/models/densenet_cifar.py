"""DenseNet-40 (Huang et al. 2017, L=40, k=12) for CIFAR: no bottleneck, no compression.

The original non-BC DenseNet is the one channel-pruning papers (HRank, GAL,
Network Slimming) report on. Layers are pre-activation (BN-ReLU-Conv) and
concatenate their 12 new channels onto their input, so the pruner must treat
each concat as a channel-index remap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["DenseLayer", "Transition", "CifarDenseNet"]


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth_rate`` channels, concatenated after the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv1(F.relu(self.bn1(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (same width: no compression) then 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class CifarDenseNet(nn.Module):
    """Stem conv, three dense blocks joined by transitions, final BN-ReLU, global pool, ``linear``."""

    def __init__(self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        self.dense1, planes = self._make_block(planes, n, growth_rate)
        self.trans1 = Transition(planes, planes)
        self.dense2, planes = self._make_block(planes, n, growth_rate)
        self.trans2 = Transition(planes, planes)
        self.dense3, planes = self._make_block(planes, n, growth_rate)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_block(planes: int, n: int, growth_rate: int) -> tuple[nn.Sequential, int]:
        layers = [DenseLayer(planes + i * growth_rate, growth_rate) for i in range(n)]
        return nn.Sequential(*layers), planes + n * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.dense1(self.conv1(x)))
        out = self.trans2(self.dense2(out))
        out = F.relu(self.bn(self.dense3(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


@register_model(dataset="cifar", input_size=(3, 32, 32), first_conv="conv1", classifier="linear")
def densenet40(num_classes: int = 10) -> CifarDenseNet:
    """DenseNet-40, growth rate 12: widths 24 -> 168 -> 312 -> 456 channels."""
    return CifarDenseNet(40, 12, num_classes)
