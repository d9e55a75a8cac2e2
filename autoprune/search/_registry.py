"""Which kind of searcher plays an algorithm: decided here, once, from the preset's algorithm name.

Every algorithm belongs to one *kind* (RL agent, Optuna sampler, handcrafted
method); the kind names the :class:`~autoprune.search.Searcher` that runs it,
as Gymnasium's ``register(id, entry_point="module:Class")`` does, so listing
or validating presets imports neither stable-baselines3 nor Optuna. What else
differs between algorithms is recorded as data (:class:`Algorithm`), so no
code outside this module tests an algorithm's name to know what it is.
Handcrafted methods come from :data:`autoprune.baselines.METHODS`, whose
registry a user may extend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..baselines import METHODS
from ..errors import unknown_name

__all__ = ["ALGORITHMS", "Algorithm", "HANDCRAFTED", "Kind", "OPTUNA", "RL", "get_algorithm", "load_entry_point"]


@dataclass(frozen=True)
class Kind:
    """A family of agents and the searcher that runs its members.

    Attributes:
        name: "rl", "optuna" or "handcrafted".
        searcher: ``"module:Class"`` of its :class:`~autoprune.search.Searcher`, imported when a search runs.
        description: the kind in a sentence ("an RL agent"), for messages.
        parallel: whether ``--workers`` and ``--ray`` can spread its evaluations over processes.
        selects_channels: whether its members choose their own channels (the environment then only prices
            their answers and gives the uniform-L1 reference, so it selects by L1).
    """

    name: str
    searcher: str
    description: str
    parallel: bool = False
    selects_channels: bool = False


RL = Kind("rl", "autoprune.search._rl:RLSearcher", "an RL agent")
OPTUNA = Kind("optuna", "autoprune.search._study:OptunaSearcher", "an Optuna sampler", parallel=True)
HANDCRAFTED = Kind("handcrafted", "autoprune.search._handcrafted:HandcraftedSearcher", "a handcrafted method",
                   selects_channels=True)


@dataclass(frozen=True)
class Algorithm:
    """One algorithm a preset can name.

    Attributes:
        name: as in a preset's ``algorithm:``.
        kind: its :class:`Kind`.
        entry_point: ``"module:Class"`` of the agent class (RL) or sampler (Optuna); None for handcrafted
            methods, which :mod:`autoprune.baselines` resolves.
        one_study: Optuna: one multi-objective study over the range of targets instead of one per target
            (its episodes are counted in all, not per target).
        one_seed: Optuna: the sampler keeps one seed for the whole study (QMC scrambles one sequence)
            instead of a fresh seed per trial.
        family: RL: how the agent is built and trained: "amc" (AMC's DDPG: warm-up in episodes, its own
            exploration), "off-policy" (a replay buffer, updated after every episode) or "on-policy" (whole
            rollouts, so checkpoints fall on rollout boundaries).
    """

    name: str
    kind: Kind
    entry_point: str | None = None
    one_study: bool = False
    one_seed: bool = False
    family: str | None = None


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ddpg", RL, "autoprune.search._amc_ddpg:AMCDDPG", family="amc"),
    Algorithm("td3", RL, "stable_baselines3:TD3", family="off-policy"),
    Algorithm("sac", RL, "stable_baselines3:SAC", family="off-policy"),
    Algorithm("ppo", RL, "stable_baselines3:PPO", family="on-policy"),
    Algorithm("tpe", OPTUNA, "optuna.samplers:TPESampler"),
    Algorithm("cmaes", OPTUNA, "autoprune.search._cmaes:SafeCmaEsSampler"),  # reads its state as data
    Algorithm("random", OPTUNA, "optuna.samplers:RandomSampler"),
    Algorithm("qmc", OPTUNA, "optuna.samplers:QMCSampler", one_seed=True),
    Algorithm("nsga2", OPTUNA, "optuna.samplers:NSGAIISampler", one_study=True),
)}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm ``name``: a search algorithm, or a method registered in :mod:`autoprune.baselines`."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    if name in METHODS:
        return Algorithm(name, HANDCRAFTED)
    raise unknown_name("algorithm", name, [*ALGORITHMS, *METHODS])


def load_entry_point(entry_point: str) -> Any:
    """The object named by ``"package.module:attribute"``, importing the module now."""
    module, _, attribute = entry_point.partition(":")
    return getattr(importlib.import_module(module), attribute)
