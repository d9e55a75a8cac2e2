"""Agent presets: a YAML file names the algorithm and its settings.

``--agent NAME`` finds ``agents/NAME.yaml`` shipped with autoprune;
``--agent path.yaml`` reads a user's file. Unknown keys are refused, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._resources import resource_dir
from ..errors import AutopruneError, unknown_name
from ..proxies import get_proxy
from ._registry import HANDCRAFTED, OPTUNA, Algorithm, get_algorithm

__all__ = ["Preset", "list_presets", "load_preset"]


@dataclass(frozen=True)
class Preset:
    """An agent and how long it searches.

    Attributes:
        name: the preset's name (file stem).
        algorithm: a name of :data:`~autoprune.search.ALGORITHMS` or a method registered in
            ``autoprune.baselines``.
        targets: fractions of the run's budget metric (MACs by default); several make an RL agent
            conditional (CACP), run one Optuna study per target, span the range of NSGA-II's
            budgets, or run a handcrafted method once per target.
        reward: the env's reward form (not used by handcrafted methods).
        criterion: channel selection inside each group (for handcrafted methods: their ranking).
        episodes: episodes (trials) per target; NSGA-II: in all. Meaningless for handcrafted
            methods, which answer once per target (``--episodes`` is ignored there).
        warmup_episodes: random-action episodes before learning (off-policy agents), or the
            sampler's random start-up trials (Optuna); meaningless for handcrafted methods.
        checkpoint_every: episodes between checkpoints of the run (RL; an Optuna study saves
            every trial).
        multi_fidelity: Optuna only: score a quarter of the reward images first and let a
            median pruner stop trials below the median there.
        reward_proxy: how each pruned model is made ready before its holdout accuracy is the
            reward (:mod:`autoprune.proxies`: bn, reconstruct, finetune-K, distill-K).
        hyperparameters: passed to the algorithm's (or sampler's) constructor; a handcrafted
            method's own knobs (``Context.hyperparameters``).
    """

    name: str
    algorithm: str
    targets: tuple[float, ...] = (0.5,)
    reward: str = "acc"
    criterion: str = "l1"
    episodes: int = 150
    warmup_episodes: int = 50
    checkpoint_every: int = 10
    multi_fidelity: bool = False
    reward_proxy: str = "bn"
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spec.one_study and len(self.targets) < 2:
            raise AutopruneError(f"Preset {self.name!r}: {self.algorithm} searches a range of budgets; give at least two "
                                 f"targets (their min and max bound it), but got {list(self.targets)}.")
        get_proxy(self.reward_proxy)  # refuses a misspelt or incomplete proxy name
        for key, low in (("episodes", 1), ("warmup_episodes", 0), ("checkpoint_every", 1)):
            if getattr(self, key) < low:
                raise AutopruneError(f"Preset {self.name!r}: {key} must be at least {low}, but got {getattr(self, key)}.")

    @property
    def spec(self) -> Algorithm:
        """What the registry knows of the algorithm: its kind, entry point and flags."""
        return get_algorithm(self.algorithm)

    @property
    def optuna(self) -> bool:
        return self.spec.kind is OPTUNA

    @property
    def handcrafted(self) -> bool:
        """A method of :mod:`autoprune.baselines`: one answer per target instead of a search."""
        return self.spec.kind is HANDCRAFTED

    @property
    def total_episodes(self) -> int:
        return self.episodes if self.spec.one_study else self.episodes * len(self.targets)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


def list_presets() -> list[str]:
    return sorted(p.stem for p in resource_dir("agents").glob("*.yaml"))


def load_preset(agent: str | os.PathLike[str], **overrides: Any) -> Preset:
    """The preset named ``agent`` (or at that path), with ``overrides`` (None values ignored) applied."""
    text = str(agent)
    path = Path(text) if text.endswith((".yaml", ".yml")) else resource_dir("agents") / f"{text}.yaml"
    if not path.is_file():
        if text.endswith((".yaml", ".yml")):
            raise AutopruneError(f"Agent preset file {path} does not exist.")
        raise unknown_name("agent", text, list_presets())
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise AutopruneError(f"Agent preset {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise AutopruneError(f"Agent preset {path} must be a mapping of settings.")
    data = {"name": path.stem, **data, **{k: v for k, v in overrides.items() if v is not None}}
    known = set(Preset.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise AutopruneError(f"Agent preset {path}: unknown keys {unknown}; allowed: {sorted(known - {'name'})}.")
    if "targets" in data:
        data["targets"] = tuple(float(t) for t in data["targets"])
    return Preset(**data)
