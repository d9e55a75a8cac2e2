"""Model zoo: every registered CIFAR model builds and runs, metadata names real modules,
the option-A shortcut matches akamaster's F.pad bit for bit, and resnet56 loads akamaster's checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autoprune.errors import DependencyNotInstalled, UnknownNameError
from autoprune.models import ChannelPadShortcut, create, get_model_info, list_models

CIFAR = [n for n in list_models() if get_model_info(n).dataset == "cifar"]
IMAGENET = [n for n in list_models() if get_model_info(n).dataset == "imagenet"]
PRETRAINED = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "cifar10"


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def test_registry_contents() -> None:
    depths = (20, 32, 44, 56, 110)
    expected = {f"resnet{d}" for d in depths} | {f"resnet{d}_b" for d in depths}
    expected |= {"vgg16", "vgg19", "mobilenetv2", "googlenet", "densenet40"}
    assert set(CIFAR) == expected
    assert set(IMAGENET) == {"imagenet_resnet18", "imagenet_resnet50", "imagenet_vgg16_bn", "imagenet_mobilenet_v2"}
    assert list_models("resnet5*") == ["resnet56", "resnet56_b"]
    assert get_model_info("resnet56").space == "resnet_cifar_a"
    assert get_model_info("resnet56_b").space == "resnet_cifar_b"


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_model_forward_and_metadata(name: str) -> None:
    info = get_model_info(name)
    assert info.input_size == (3, 32, 32)
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    batch = 1 if name == "googlenet" else 2  # googlenet is ~1.5 GFLOPs per image
    x = torch.randn(batch, *info.input_size)
    torch.manual_seed(0)
    model = create(name).eval()
    modules = dict(model.named_modules())
    assert isinstance(modules[info.first_conv], torch.nn.Conv2d)
    assert isinstance(modules[info.classifier], torch.nn.Linear)
    with torch.no_grad():
        assert model(x).shape == (batch, 10)
        if name != "googlenet":
            assert create(name, num_classes=100).eval()(x).shape == (batch, 100)
    if name == "googlenet":
        assert create(name, num_classes=100).linear.out_features == 100


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet56'"):
        create("resnet57")
    with pytest.raises(UnknownNameError):
        get_model_info("resnet57")


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_without_torchvision(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail even where torchvision is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DependencyNotInstalled, match=r"autoprune\[vision\]") as exc:
        create(name)
    assert name in str(exc.value)
    assert isinstance(exc.value.__cause__, ImportError)


@pytest.mark.skipif(not _torchvision_imports(), reason="torchvision is not importable")
@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_metadata(name: str) -> None:
    info = get_model_info(name)
    modules = dict(create(name).named_modules())
    assert isinstance(modules[info.first_conv], torch.nn.Conv2d)
    assert isinstance(modules[info.classifier], torch.nn.Linear)


@pytest.mark.parametrize(("in_c", "out_c", "hw"), [(16, 32, 32), (32, 64, 16), (16, 32, 7)])
def test_channel_pad_shortcut_matches_fpad(in_c: int, out_c: int, hw: int) -> None:
    x = torch.randn(3, in_c, hw, hw)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, out_c // 4, out_c // 4), "constant", 0)
    assert torch.equal(ChannelPadShortcut(in_c, out_c, 2)(x), expected)


def test_channel_pad_shortcut_has_no_state() -> None:
    # akamaster checkpoints carry nothing for the shortcut, so neither may we.
    assert ChannelPadShortcut(16, 32).state_dict() == {}


def test_resnet56_param_count() -> None:
    n = sum(p.numel() for p in create("resnet56").parameters())
    assert abs(n - 853_018) / 853_018 < 0.01


@pytest.mark.parametrize(
    "filename", ["resnet20-12fca82f.th", "resnet32-d509ac18.th", "resnet44-014dd654.th", "resnet56-4bfd9763.th"]
)
def test_loads_akamaster_checkpoint(filename: str) -> None:
    path = PRETRAINED / filename
    if not path.is_file():
        pytest.skip(f"akamaster checkpoint not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    create(filename.split("-")[0]).load_state_dict(state, strict=True)
