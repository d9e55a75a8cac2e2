"""Pick the device (CUDA when there is one, else CPU; ``--device`` forces it) and the precision training runs in there."""

from __future__ import annotations

import torch

from .errors import AutopruneError, unknown_name


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"``/None: cuda if available, else cpu. Otherwise the named device, which must exist."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise AutopruneError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AutopruneError(f"Device {name!r} asked for, but this torch sees no CUDA GPU; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AutopruneError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return device


PRECISIONS = ("auto", "float32")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype training autocasts to on ``device``; None: float32 throughout.

    ``"auto"``: float16 on CUDA (with a gradient scaler); bfloat16 on a CPU with native bfloat16 arithmetic
    (AVX512-BF16 or AMX), where a pruned CIFAR ResNet's training step runs about 1.5x faster so
    (scripts/bench_train.py); float32 on other CPUs, which would only emulate bfloat16. ``"float32"``: no
    autocast anywhere. Weights, optimiser state and BatchNorm statistics stay float32 either way.
    """
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _native_bfloat16():
        return torch.bfloat16
    return None


def _native_bfloat16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX: torch's own checks, which are private, so a torch without them
    counts as no (float32, the safe side)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
