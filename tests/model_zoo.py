"""Small models reproducing the structures of modern CNNs, for the engine's tests and ``scripts/bench_models.py``.

``STRUCTURES`` maps a name to a :class:`Structure` ``(factory, input_size, classifier, first_conv)``:
``factory()`` builds the model (random init, deterministic under ``torch.manual_seed``), ``input_size`` is
(C, H, W) without batch, ``classifier`` names the layer whose outputs are the classes (never pruned). Every model but
``resnet50`` runs on 16x16 inputs in milliseconds; ``resnet50`` is a ResNet-50-sized bottleneck
network at 224 px for benchmarks (keep it out of loops in tests).

:func:`structure_space` builds a model and its :class:`~autoprune.pruning.PrunableSpace` under a
temporary registry entry, since a space is built from a zoo name today.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EVERY_GROUP", "SMALL", "STRUCTURES", "Structure", "registered", "structure_model", "structure_space"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SqueezeExcite(nn.Module):
    """SE (Hu et al. 2018): a per-channel gate from the pooled input; its two 1x1 convs couple with those channels."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class Bottleneck(nn.Module):
    """ResNet/ResNeXt bottleneck: 1x1 reduce, 3x3 (grouped when ``groups`` > 1), optional SE, 1x1 expand, residual."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 1, se: int = 0) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.se = SqueezeExcite(width, se) if se else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.se(F.relu(self.bn2(self.conv2(y))))
        return F.relu(self.bn3(self.conv3(y)) + self.down(x))


class BottleneckNet(nn.Module):
    """Stem, bottleneck stages, global pool, fc: ResNeXt (``groups``), RegNetY-like (``se``), ResNet-50 (neither)."""

    def __init__(self, stages: list[tuple[int, int, int, int]], groups: int = 1, se: int = 0, stem: int = 16,
                 num_classes: int = 10, imagenet_stem: bool = False) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = _cbr(3, stem)
        blocks, cin = [], stem
        for width, cout, depth, stride in stages:
            for i in range(depth):
                blocks.append(Bottleneck(cin, width, cout, stride if i == 0 else 1, groups, se))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class SEBasicNet(nn.Module):
    """SE-ResNet: basic blocks whose second BN output is gated by SE before the residual addition."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.se = SqueezeExcite(width, 4)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.se(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(x + y), 1).flatten(1))


class MBConv(nn.Module):
    """EfficientNet's MBConv: 1x1 expand, depthwise 3x3, SE on the expanded channels, 1x1 project, residual."""

    def __init__(self, channels: int, expand: int = 4, se: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), nn.SiLU())
        self.se = SqueezeExcite(hidden, se, nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.dw(self.expand(x))))


class MBConvNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.blocks = nn.Sequential(MBConv(16), MBConv(16))
        self.head = _cbr(16, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's downsampling norm), via permutes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, channels-last LayerNorm, 4x MLP as Linears, layer scale (a bare Parameter), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self, dim: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 2, 2), LayerNorm2d(dim))
        self.blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


class LayerScaleNet(nn.Module):
    """Residual blocks with BatchNorm whose branch is scaled by a per-channel Parameter of shape (1, C, 1, 1)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.branch = nn.Sequential(_cbr(width, 2 * width), nn.Conv2d(2 * width, width, 3, 1, 1, bias=False),
                                    nn.BatchNorm2d(width))
        self.scale = nn.Parameter(torch.linspace(0.1, 1.0, width).view(1, width, 1, 1))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.scale * self.branch(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupNormNet(nn.Module):
    """Conv-GroupNorm-ReLU layers: GN with 4 groups of 4/8 channels and one GN of a channel per group."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 16, 3, 1, 1), nn.GroupNorm(4, 16)
        self.conv2, self.gn2 = nn.Conv2d(16, 32, 3, 1, 1), nn.GroupNorm(4, 32)
        self.conv3, self.gn3 = nn.Conv2d(32, 16, 3, 1, 1), nn.GroupNorm(16, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        x = F.relu(self.gn3(self.conv3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SplitConcatNet(nn.Module):
    """A conv's output chunked in two branches, each convolved, concatenated; then split in sizes fixed in the code."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 8), _cbr(8, 16))
        self.left, self.right = _cbr(8, 8), _cbr(8, 12)
        self.mix = _cbr(20, 24, 1)
        self.tail_a, self.tail_b = _cbr(8, 8), _cbr(16, 8)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        y = self.mix(torch.cat([self.left(a), self.right(b)], dim=1))
        p, q = torch.split(y, [8, 16], dim=1)
        y = torch.cat([self.tail_a(p), self.tail_b(q)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class UNet(nn.Module):
    """A two-level U-Net: encoder, bottleneck, upsample + concat skip connections, a 1x1 per-pixel head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _cbr(3, 8), _cbr(8, 16), _cbr(16, 32)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = _cbr(32 + 16, 16)
        self.dec1 = _cbr(16 + 8, 8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        return self.head(d1)


class FlattenLinearNet(nn.Module):
    """VGG-style: convs, then flatten (channel x 4 x 4 features) into a hidden Linear and the classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8), nn.MaxPool2d(2), _cbr(8, 16), nn.MaxPool2d(2))
        self.hidden = nn.Linear(16 * 4 * 4, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.hidden(torch.flatten(self.features(x), 1))))


class DilatedNet(nn.Module):
    """Dilated 3x3 convs (rates 2 and 4, DeepLab-style) after a strided stem."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2)
        self.d2, self.d4 = _cbr(16, 24, dilation=2), _cbr(24, 16, dilation=4)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.fc(F.adaptive_avg_pool2d(self.d4(self.d2(x)) + x, 1).flatten(1))


class TwoHeadNet(nn.Module):
    """A detector-like model: shared backbone, a class head and a box head (4 numbers a pixel), returned as a tuple."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(_cbr(3, 16), _cbr(16, 24, stride=2))
        self.cls_tower, self.box_tower = _cbr(24, 16), _cbr(24, 16)
        self.fc = nn.Linear(16, num_classes)
        self.box = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        logits = self.fc(F.adaptive_avg_pool2d(self.cls_tower(f), 1).flatten(1))
        return logits, self.box(self.box_tower(f))


class Structure(NamedTuple):
    """How to build one test model and what the registry would say of it."""

    factory: Callable[[], nn.Module]
    input_size: tuple[int, int, int]
    classifier: str  # its outputs are the classes: never pruned
    first_conv: str  # the stem, left out of the automatic space


STRUCTURES: dict[str, Structure] = {
    "resnext": Structure(lambda: BottleneckNet([(16, 32, 1, 1), (32, 64, 1, 2)], groups=4), (3, 16, 16), "fc", "stem.0"),
    "regnet_se": Structure(lambda: BottleneckNet([(16, 32, 1, 1), (32, 32, 1, 2)], groups=4, se=8), (3, 16, 16), "fc", "stem.0"),
    "se_resnet": Structure(SEBasicNet, (3, 16, 16), "fc", "stem.0"),
    "mbconv_se": Structure(MBConvNet, (3, 16, 16), "fc", "stem.0"),
    "convnext": Structure(ConvNeXtNet, (3, 16, 16), "fc", "stem.0"),
    "layer_scale": Structure(LayerScaleNet, (3, 16, 16), "fc", "stem.0"),
    "groupnorm": Structure(GroupNormNet, (3, 16, 16), "fc", "conv1"),
    "split_concat": Structure(SplitConcatNet, (3, 16, 16), "fc", "stem.0.0"),
    "unet": Structure(UNet, (3, 16, 16), "head", "enc1.0"),
    "flatten_linear": Structure(FlattenLinearNet, (3, 16, 16), "fc", "features.0.0"),
    "dilated": Structure(DilatedNet, (3, 16, 16), "fc", "stem.0"),
    "two_heads": Structure(TwoHeadNet, (3, 16, 16), "fc", "backbone.0.0"),
    "resnet50": Structure(lambda: BottleneckNet([(64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2)],
                                       stem=64, num_classes=1000, imagenet_stem=True), (3, 224, 224), "fc", "stem.0"),
}
"""The test models by name."""

SMALL = [n for n in STRUCTURES if n != "resnet50"]


def structure_model(name: str, seed: int = 0) -> nn.Module:
    """The model ``name`` in eval mode, weights and BN statistics randomised under ``seed``."""
    torch.manual_seed(seed)
    return randomise_norms(STRUCTURES[name].factory().eval())


def randomise_norms(model: nn.Module) -> nn.Module:
    """Norm scales, shifts and BN statistics away from the identity, so that a wrongly pruned channel shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


@contextlib.contextmanager
def registered(name: str, structure: Structure | None = None) -> Iterator[str]:
    """Register structure ``name`` (or ``structure`` under that name) as ``structure_<name>`` for the duration."""
    from autoprune.models import _registry

    s = structure or STRUCTURES[name]
    key = f"structure_{name}"
    _registry._REGISTRY[key] = _registry.ModelInfo(
        name=key, builder=lambda num_classes=10: s.factory(), dataset="cifar", input_size=s.input_size,
        first_conv=s.first_conv, classifier=s.classifier, space=None, mean=_registry.IMAGENET_MEAN, std=_registry.IMAGENET_STD)
    try:
        yield key
    finally:
        del _registry._REGISTRY[key]


EVERY_GROUP = str(Path(__file__).with_name("every_group.yaml"))
"""A space file searching every group, the stem's too."""


def structure_space(name: str, space: str | None = None, seed: int = 0):
    """``(model, PrunableSpace)`` of structure ``name`` (the space is built while the name is registered)."""
    from autoprune.pruning import PrunableSpace

    model = structure_model(name, seed)
    with registered(name) as key:
        return model, PrunableSpace(model, key, space)
