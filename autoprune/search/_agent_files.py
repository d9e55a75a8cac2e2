"""A stable-baselines3 agent's state as data files, so that loading a run directory never runs code.

SB3's own ``save``/``load`` pickle the agent's attributes (with cloudpickle)
and its replay buffer; unpickling a file from someone else's run directory
can run any code in it. Here a checkpoint folder holds only data, each file
read with a loader that cannot execute anything::

    params.pt    networks and optimisers (SB3's get_parameters()), and tensors trained outside
                 them (SAC's log_ent_coef): torch.save / torch.load(weights_only=True)
    agent.yaml   the agent's class, seed and counters (num_timesteps, _n_updates, ...)
    buffer.npz   the replay buffer's filled rows and position (off-policy agents): allow_pickle=False
    rng.pt       the global generators and the agent's own (action space, exploration noise)

Reloading rebuilds the agent from its preset and seed (deterministic) and
puts this state back; the result continues exactly as the saved agent would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .. import _rng
from .._io import (
    load_npz,
    load_torch,
    read_yaml,
    reading,
    save_npz,
    save_torch,
    write_bytes,
)
from ..errors import CheckpointError

__all__ = ["AGENT_FILES", "AgentFiles", "read_agent", "restore_agent", "save_agent"]

FORMAT = "autoprune-agent-v1"
PARAMS, AGENT, BUFFER, RNG = "params.pt", "agent.yaml", "buffer.npz", "rng.pt"
AGENT_FILES = (PARAMS, AGENT, BUFFER, RNG)

# What SB3 changes while learning besides networks, optimisers, buffer and generators (those an
# algorithm has; PPO has no learning_starts). ep_info_buffer feeds only SB3's logger and is not kept.
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_total_timesteps", "_current_progress_remaining",
             "learning_starts")
# Tensors trained outside the modules and optimisers that get_parameters() returns.
_VARIABLES = ("log_ent_coef",)


@dataclass(frozen=True)
class AgentFiles:
    """The contents of an agent's checkpoint files, read and checked, not yet applied to an agent."""

    folder: Path
    manifest: dict[str, Any]  # agent.yaml
    params: dict[str, Any]
    buffer: dict[str, np.ndarray] | None
    rng: dict[str, Any]

    @property
    def seed(self) -> int | None:
        return self.manifest["seed"]


def _attributes(agent: Any) -> list[str]:
    return [n for n in _COUNTERS if hasattr(agent, n)] + list(getattr(agent, "checkpoint_attributes", ()))


def _generators(agent: Any) -> dict[str, np.random.Generator]:
    return {"action_space": agent.action_space.np_random, **getattr(agent, "checkpoint_generators", {})}


def _owner(agent: Any, dotted: str) -> tuple[Any, str]:
    *path, name = dotted.split(".")
    for part in path:
        agent = getattr(agent, part)
    return agent, name


def save_agent(agent: Any, folder: Path) -> None:
    """Write ``agent``'s state into ``folder`` (see the module docstring); every file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    variables = {n: getattr(agent, n).detach().clone() for n in _VARIABLES
                 if isinstance(getattr(agent, n, None), torch.Tensor)}
    save_torch(folder / PARAMS, {"parameters": agent.get_parameters(), "variables": variables})
    buffer = getattr(agent, "replay_buffer", None)
    if buffer is not None:
        from ._replay import buffer_state
        save_npz(folder / BUFFER, buffer_state(buffer))
    save_torch(folder / RNG, _rng.capture(_generators(agent)))
    values = {}
    for name in _attributes(agent):
        owner, attr = _owner(agent, name)
        value = getattr(owner, attr)
        values[name] = value if value is None else float(value) if isinstance(value, float) else int(value)
    # the format last: a file cut short anywhere lacks it, so it never reads as a whole one
    manifest = {"class": type(agent).__name__, "seed": agent.seed, "replay_buffer": buffer is not None,
                "attributes": values, "format": FORMAT}
    text = yaml.safe_dump(manifest, sort_keys=False).encode()
    write_bytes(folder / AGENT, lambda f: f.write(text))


def read_agent(folder: Path) -> AgentFiles:
    """Read and check the files :func:`save_agent` wrote, without an agent; CheckpointError names a bad one."""
    manifest = read_yaml(folder / AGENT, "Agent file")
    with reading(folder / AGENT, "Agent file"):
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"not an agent file of format {FORMAT}")
        if not isinstance(manifest["class"], str) or not isinstance(manifest["attributes"], dict) or \
                type(manifest["replay_buffer"]) is not bool:
            raise TypeError("'class' must be a name, 'replay_buffer' true or false and 'attributes' a mapping")
        if manifest["seed"] is not None and type(manifest["seed"]) is not int:
            raise TypeError(f"the seed must be an integer, not {manifest['seed']!r}")
        for name, value in manifest["attributes"].items():
            if value is not None and type(value) not in (int, float):
                raise TypeError(f"attribute {name} must be a number, not {value!r}")
    params = load_torch(folder / PARAMS, "Agent parameters")
    with reading(folder / PARAMS, "Agent parameters"):
        if not isinstance(params.get("parameters"), dict) or not isinstance(params.get("variables"), dict):
            raise TypeError("expected 'parameters' and 'variables' mappings")
    buffer = load_npz(folder / BUFFER, "Replay buffer") if manifest["replay_buffer"] else None
    rng = load_torch(folder / RNG, "Random generator state")
    with reading(folder / RNG, "Random generator state"):
        if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
            raise KeyError("python, numpy and torch generator states")
    return AgentFiles(folder, manifest, params, buffer, rng)


def restore_agent(agent: Any, files: AgentFiles) -> None:
    """Put the state of ``files`` into ``agent``, freshly built from the same preset and seed.

    The global generators are restored last: building the agent reseeded them.
    """
    folder = files.folder
    if files.manifest["class"] != type(agent).__name__:
        raise CheckpointError(f"Agent file {folder / AGENT} holds a {files.manifest['class']}, but the run's preset "
                              f"builds a {type(agent).__name__}: the checkpoint belongs to another run.")
    with reading(folder / PARAMS, "Agent parameters"):
        agent.set_parameters(files.params["parameters"], exact_match=True)
        for name in _VARIABLES:
            if isinstance(getattr(agent, name, None), torch.Tensor):
                target, value = getattr(agent, name), files.params["variables"][name]
                if not isinstance(value, torch.Tensor) or value.shape != target.shape:
                    raise ValueError(f"{name} must be a tensor of shape {list(target.shape)}")
                with torch.no_grad():
                    target.copy_(value)  # in place: the optimiser holds this very tensor
    buffer = getattr(agent, "replay_buffer", None)
    if (buffer is None) != (files.buffer is None):
        raise CheckpointError(f"Agent file {folder / AGENT} says replay_buffer: {files.buffer is not None}, but a "
                              f"{type(agent).__name__} {'has' if buffer is not None else 'has no'} replay buffer.")
    if buffer is not None:
        from ._replay import load_buffer_state
        with reading(folder / BUFFER, "Replay buffer"):
            load_buffer_state(buffer, files.buffer)
    with reading(folder / AGENT, "Agent file"):
        for name in _attributes(agent):
            owner, attr = _owner(agent, name)
            setattr(owner, attr, files.manifest["attributes"][name])
    with reading(folder / RNG, "Random generator state"):
        _rng.restore(files.rng, _generators(agent))
