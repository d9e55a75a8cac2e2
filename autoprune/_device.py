"""Pick the device: CUDA when there is one, else CPU; ``--device`` forces it."""

from __future__ import annotations

import torch

from .errors import AutopruneError


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
