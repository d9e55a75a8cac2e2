"""Random generators captured and restored as plain data, for exact resumes.

A resumed search or training run continues bit for bit only if every
generator it draws from is where it was: Python's ``random``, numpy's global
generator (stable-baselines3 samples minibatches from it), torch's CPU and
CUDA generators, and numpy ``Generator`` objects owned by the caller (an
action space, an exploration noise). The state is written with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so it
holds only tensors, ints, floats, strings, None, lists and dicts: reading it
can never run code, and no state goes through ``repr``/``eval``.

Layout (also that of the training checkpoints written before this module,
whose Python state was a tuple of ints rather than a tensor; both load)::

    {"python": [version, int64 tensor of the Mersenne Twister words, gauss_next or None],
     "numpy":  [kind, int64 tensor of the 624 key words, pos, has_gauss, cached_gaussian],
     "torch":  uint8 tensor,
     "cuda":   [uint8 tensor per device]            (only where CUDA is available),
     "generators": {name: bit_generator.state}      (only for the generators passed in)}
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture", "restore"]


def capture(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """The global generators' states, and those of ``generators`` under their names."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = {name: g.bit_generator.state for name, g in generators.items()}
    return state


def restore(state: Mapping[str, Any], generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Put the generators back as :func:`capture` saw them.

    Raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed state;
    callers know which file it came from and say so.
    """
    version, words, gauss = state["python"]
    words = tuple(int(w) for w in torch.as_tensor(words).tolist())
    random.setstate((int(version), words, None if gauss is None else float(gauss)))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(kind), torch.as_tensor(keys).numpy().astype(np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    if not isinstance(state["torch"], torch.Tensor):
        raise TypeError(f"the torch generator state must be a tensor, not {type(state['torch']).__name__}")
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        generator.bit_generator.state = dict(saved[name])  # numpy checks the kind and the fields
