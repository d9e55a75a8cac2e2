"""Networks of structures the zoo lacks, for ``scripts/bench_models.py``: random init, built by ``f(num_classes=...)``.

Each reproduces one structure found in modern CNNs (bottleneck residuals at ImageNet size, grouped convs,
squeeze-excitation gates, ConvNeXt's LayerNorm and layer scale, pre-activation residuals, channel shuffle),
small enough to trace in seconds except ``resnet50_like``, which is ResNet-50-sized on purpose (the
benchmark's timing goals are set for it).
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Bottleneck(nn.Module):
    """ResNet's 1x1-3x3-1x1 bottleneck (stride on the 3x3, as torchvision's v1.5); ``groups`` makes it ResNeXt's."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class BottleneckNet(nn.Module):
    """Stages of bottlenecks: ``stages`` = [(mid, out, blocks, stride)]."""

    def __init__(self, stages: list[tuple[int, int, int, int]], *, stem: int, num_classes: int, imagenet: bool,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7 if imagenet else 3, 2 if imagenet else 1, 3 if imagenet else 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        blocks, cin = [], stem
        for mid, cout, n, stride in stages:
            for i in range(n):
                blocks.append(Bottleneck(cin, mid, cout, stride if i == 0 else 1, groups))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def resnet50_like(num_classes: int = 1000) -> nn.Module:
    """ResNet-50's layout (3-4-6-3 bottlenecks, 64..2048 channels, 7x7 stem): 25.6M params, 4.1G MACs at 224 px."""
    return BottleneckNet([(64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2)],
                         stem=64, num_classes=num_classes, imagenet=True)


def resnext_like(num_classes: int = 10) -> nn.Module:
    """ResNeXt: bottlenecks whose 3x3 is a grouped conv (4 groups), CIFAR-sized."""
    return BottleneckNet([(32, 64, 2, 1), (64, 128, 2, 2)], stem=16, num_classes=num_classes, imagenet=False, groups=4)


class SEInvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise 3x3, a squeeze-excitation gate, 1x1 project (residual if it fits)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(*_cbr(cin, hidden, 1))
        self.dw = nn.Sequential(*_cbr(hidden, hidden, 3, stride, groups=hidden))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden // 4, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden // 4, hidden, 1), nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        out = self.project(h * self.se(h))
        return x + out if self.residual else out


def se_mobile(num_classes: int = 10) -> nn.Module:
    """A MobileNetV3-like stack of SE inverted residuals."""
    cfg = [(16, 64, 24, 2), (24, 72, 24, 1), (24, 96, 40, 2), (40, 120, 40, 1)]
    return nn.Sequential(*_cbr(3, 16, 3, 1), *[SEInvertedResidual(*c) for c in cfg],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, num_classes))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's downsampling layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm, Linear 4x, GELU, Linear back, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(h)))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, num_classes: int = 10, dims: tuple[int, ...] = (32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))
        layers: list[nn.Module] = []
        for i, dim in enumerate(dims):
            if i:
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim), ConvNeXtBlock(dim)]
        self.stages = nn.Sequential(*layers)
        self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stages(self.stem(x)).mean((2, 3))))


class PreActBlock(nn.Module):
    """Pre-activation residual (He et al. 2016): BN and ReLU before each conv, the sum left un-normalised."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        return skip + self.conv2(torch.relu(self.bn2(self.conv1(h))))


def preact_resnet(num_classes: int = 10) -> nn.Module:
    """A PreAct-ResNet-18-like CIFAR network, narrow."""
    blocks, cin = [], 16
    for cout, stride in [(16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)]:
        blocks.append(PreActBlock(cin, cout, stride))
        cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), *blocks, nn.BatchNorm2d(cin), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit (stride 1): split the channels, transform one half, concatenate, shuffle in 2 groups."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*_cbr(half, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
                                    nn.BatchNorm2d(half), *_cbr(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def shufflenet_like(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(*_cbr(3, 48, 3, 2), ShuffleUnit(48), ShuffleUnit(48), *_cbr(48, 96, 3, 2), ShuffleUnit(96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes))
