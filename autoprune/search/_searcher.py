"""The contract every agent kind implements, in the spirit of Optuna's ``BaseSampler``.

A :class:`Searcher` receives the environment (which holds the space, the cost
model and the evaluator) and the run directory, plays or answers, and returns
:class:`Proposals`. It does not pick, measure on test, or write the final
files: the orchestrator (:func:`autoprune.search.search`) does that once for
every kind, so RL agents, Optuna samplers and handcrafted methods end in the
same table, judged by the same protocol.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

from ..env import PruningEnv
from ..errors import AutopruneError
from ..policy import Policy
from ._config import SearchConfig
from ._preset import Preset
from ._run_dir import SearchRunDir

__all__ = ["Candidate", "Proposals", "Searcher", "add_candidate", "asked_targets"]

Candidate = list  # [reward, counts]: a list, so the pools round-trip through a checkpoint's YAML as they are


def asked_targets(config: SearchConfig, env: PruningEnv) -> list[float]:
    """The targets the final pick answers: the asked ones, or all the preset's when none were asked.

    Each costs a re-judging, a test pass and a uniform-L1 reference; a conditional agent's other training
    targets stay exportable (``autoprune export-policy``).
    """
    return [float(t) for t in config.targets or env.config.targets]


def add_candidate(pools: dict[float, list[Candidate]], target: float, reward: float, counts: list[int]) -> None:
    """Add a distinct policy (by its counts) to ``target``'s pool; a policy met again keeps its first reward."""
    pool = pools.setdefault(float(target), [])
    if all(c != counts for _, c in pool):
        pool.append([float(reward), counts])


@dataclass
class Proposals:
    """What a searcher hands the final pick.

    Attributes:
        pools: per target, the distinct ``[reward, counts]`` its episodes scored; the best ``top_k`` are
            re-judged on holdout images the search never scored.
        answers: per target, a policy already measured on the whole holdout and on test (a handcrafted
            method's one answer: nothing to re-judge).
        evaluations: distinct policies evaluated by the search (cache hits excluded).
        seconds: wall time of this process's search, and its split.
        notes: what to do next, for the command line to print.
    """

    pools: dict[float, list[Candidate]] = field(default_factory=dict)
    answers: dict[float, Policy] = field(default_factory=dict)
    evaluations: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def played(cls, env: PruningEnv, pools: dict[float, list[Candidate]], started: float) -> Proposals:
        """The pools of a search that played ``env`` since ``started`` (``time.perf_counter()``), timed."""
        return cls(pools=pools, evaluations=env.evaluations,
                   seconds={"search": time.perf_counter() - started, **env.timings})


class Searcher(abc.ABC):
    """Searches (or answers) a preset's targets on the pruning environment.

    Subclasses are registered by kind in :mod:`autoprune.search._registry` and built by the
    orchestrator with the run's configuration and resolved preset.
    """

    def __init__(self, config: SearchConfig, preset: Preset) -> None:
        self.config, self.preset = config, preset

    @abc.abstractmethod
    def search(self, env: PruningEnv, run: SearchRunDir, resume: bool) -> Proposals:
        """Play (or continue, with ``resume``) the preset's search in ``run``; Ctrl-C keeps what was saved."""

    def export(self, env: PruningEnv, run: SearchRunDir, target: float) -> list[int]:
        """Kept counts for a new ``target`` from what ``run`` learnt, without searching again.

        Only a trained agent can answer (conditional ones across their range); other kinds refuse.
        """
        raise AutopruneError(f"{run.path} is a run of {self.preset.spec.kind.description} "
                             f"({self.preset.algorithm}): it cannot answer new targets without searching again.")
