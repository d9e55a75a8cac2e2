"""Checkpoints: the registry of pretrained weights, safe loading, and pruned-model files.

Every load goes through ``torch.load(..., weights_only=True)`` (``_io.load_torch``):
a checkpoint is data, never code. A pruned model is saved as its policy (plain JSON-like
data) plus a state dict, and rebuilt by replaying the policy on the model its
spec names (a zoo name freely; a user's factory only when the user names it
again), so loading it needs no pickled classes either.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.hub import download_url_to_file

from ._io import load_torch, save_torch
from ._resources import cache_root
from .errors import CheckpointError, unknown_name
from .models import ModelSpec, build, replay_spec, state_sha256
from .policy import Policy
from .pruning import apply

__all__ = [
    "PretrainedWeights", "PRETRAINED", "file_sha256", "read_state_dict",
    "load_checkpoint", "pretrained_path", "load_model", "pruned_state", "save_pruned", "load_pruned", "is_pruned_file",
]

PRUNED_FORMAT = "autoprune-pruned-v1"


@dataclass(frozen=True)
class PretrainedWeights:
    """A published checkpoint: where to get it and how to recognise it."""

    arch: str
    dataset: str
    url: str
    sha256: str
    top1: float  # % on the dataset's test split, as measured by `autoprune eval`

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
PRETRAINED: dict[str, PretrainedWeights] = {
    w.arch: w for w in [
        PretrainedWeights("resnet20", "cifar10", _AKAMASTER + "resnet20-12fca82f.th",
                          "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
        PretrainedWeights("resnet32", "cifar10", _AKAMASTER + "resnet32-d509ac18.th",
                          "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63),
        PretrainedWeights("resnet44", "cifar10", _AKAMASTER + "resnet44-014dd654.th",
                          "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.10),
        PretrainedWeights("resnet56", "cifar10", _AKAMASTER + "resnet56-4bfd9763.th",
                          "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
    ]
}


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (plain, or under 'state_dict'/'model'), 'module.' prefixes removed."""
    path = Path(path)
    obj = load_torch(path, "Checkpoint")
    if isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT:
        raise CheckpointError(f"{path} is a pruned model written by autoprune: load it with load_pruned() "
                              "(on the command line: give --checkpoint without --arch).")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"Checkpoint {path} holds no state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], arch: str) -> str:
    """Load ``path`` into ``model``; return the file's sha256.

    A file named like ``resnet56-4bfd9763.th`` must hash to that prefix (the
    convention of published checkpoints), which catches truncated downloads.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist (or is not a file).")
    digest = file_sha256(path)
    stated = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", path.name)
    if stated and not digest.startswith(stated.group(1)):
        raise CheckpointError(f"Checkpoint {path} is corrupt: its sha256 starts {digest[:8]}, its name says {stated.group(1)[:8]}.")
    state = read_state_dict(path)
    own = model.state_dict()
    for key in set(own) - set(state):
        if key.endswith("num_batches_tracked"):  # absent from checkpoints of old PyTorch versions
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few([f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in shapes])}" if shapes else ""]
        raise CheckpointError(f"Checkpoint {path} does not fit {arch} ({'; '.join(p for p in parts if p)}). "
                              "Is it a checkpoint of another architecture or number of classes?")
    model.load_state_dict(state)
    return digest


def pretrained_path(arch: str, *, download: bool = True) -> Path:
    """The registered pretrained checkpoint of ``arch`` in the cache, downloaded if missing."""
    if arch not in PRETRAINED:
        raise unknown_name("pretrained architecture", arch, PRETRAINED)
    weights = PRETRAINED[arch]
    path = cache_root() / "checkpoints" / weights.filename
    if path.is_file():
        return path
    hint = (f"Download {weights.url} (sha256 {weights.sha256[:16]}...) to {path}, or give the file you have: "
            f"load_model({arch!r}, 'path/to/file.th') from Python, --checkpoint PATH on the command line.")
    if not download:
        raise CheckpointError(f"No pretrained {arch} checkpoint in the cache. {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch.hub writes beside ``path`` and moves the file there only once its sha256 matches
        download_url_to_file(weights.url, str(path), hash_prefix=weights.sha256)
    except RuntimeError as e:  # torch.hub's hash check: 'invalid hash value (expected "...", got "...")'
        raise CheckpointError(f"Downloaded {weights.url} is not the registered file, expected {weights.sha256[:16]}... "
                              f"({e}); it was not saved. {hint}") from e
    except OSError as e:  # urllib's URLError and timeouts are OSErrors
        raise CheckpointError(f"Could not download the pretrained {arch} checkpoint ({e}). {hint}") from e
    return path


def load_model(arch: str | ModelSpec, checkpoint: str | os.PathLike[str] | None, *, num_classes: int | None = None,
               download: bool = True) -> tuple[nn.Module, str | None]:
    """Build ``arch`` (a zoo name or a :class:`ModelSpec`) and load weights: a path, "pretrained" (the
    registry's), "none" (the weights the factory built: its own pretrained ones, say) or None (random init).

    Returns the model in eval mode and the checkpoint's sha256 (None for random init; for "none", the
    sha256 of the weights the factory built).
    """
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch)
    if num_classes is not None:
        spec = replace(spec, num_classes=num_classes)
    if str(checkpoint) == "pretrained" and spec.source not in PRETRAINED:
        # checked before building: a user's factory is not run for a command that cannot go on
        hint = "" if spec.is_zoo else ", or --checkpoint none to keep the weights its factory built"
        raise CheckpointError(f"{spec.source} has no registered pretrained weights: pass --checkpoint FILE{hint}.")
    model = build(spec)
    if checkpoint is None:
        return model.eval(), None
    if str(checkpoint) == "none":
        return model.eval(), state_sha256(model)
    path = pretrained_path(spec.source, download=download) if str(checkpoint) == "pretrained" else Path(checkpoint)
    return model.eval(), load_checkpoint(model, path, spec.describe())


def pruned_state(model: nn.Module, policy: Policy) -> dict[str, Any]:
    """What a pruned-model file holds (policy + state dict), for writers that save it beside other files."""
    return {"format": PRUNED_FORMAT, "policy": policy.to_dict(), "state_dict": model.state_dict()}


def save_pruned(path: str | os.PathLike[str], model: nn.Module, policy: Policy) -> None:
    """Save a pruned model as policy + state dict (atomic; loads with :func:`load_pruned`)."""
    save_torch(path, pruned_state(model, policy))


def is_pruned_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a pruned model written by autoprune (it is read, as data)."""
    if not Path(path).is_file():
        return False
    try:
        obj = load_torch(path, "Checkpoint")
    except CheckpointError:
        return False
    return isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT


def load_pruned(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
                model: ModelSpec | nn.Module | None = None) -> tuple[nn.Module, Policy]:
    """Rebuild a model saved by :func:`save_pruned`: replay its policy on the model it names, load weights.

    A zoo model is rebuilt from its name. A user's model is rebuilt only from what the caller gives as
    ``model``: the same :class:`ModelSpec` (fields left out take the policy's; fields that differ are
    refused by name) or an unpruned module object of that model; autoprune never imports the code a
    policy names on its own.
    """
    path = Path(path)
    obj: Any = load_torch(path, "Pruned checkpoint", map_location=map_location)
    if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
        raise CheckpointError(f"{path} is not a pruned autoprune checkpoint (format {PRUNED_FORMAT}): give the "
                              "model.pt that `autoprune prune`, `finetune` or `train` wrote (save_pruned() in Python).")
    policy = Policy.from_dict(obj["policy"], source=str(path))
    if isinstance(model, nn.Module):
        base = model
    else:
        base = build(replay_spec(policy.model_spec, model, what=f"Pruned model {path}"))
    pruned = apply(base, policy)
    try:
        pruned.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"Pruned checkpoint {path}: weights do not fit its policy ({str(e).splitlines()[0]}).") from e
    return pruned.eval().to(map_location), policy
