"""The pruning search as a Gymnasium environment: one step per layer group."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .errors import AutopruneError, BudgetError, unknown_name
from .evaluate import Evaluator, batch_norms
from .policy import Policy, policy_for
from .pruning import Metric, PrunableSpace, check_target, flops_metric, uniform_counts

__all__ = ["PruningEnv", "EnvConfig", "REWARDS", "FEATURES", "TIMED"]

REWARDS = ("acc", "err-log-flops", "normalized")
FEATURES = ("target", "t", "kind", "in_channels", "channels", "kernel", "stride", "fmap",
            "group_macs", "removed_budget", "removable_budget", "previous_action")
TIMED = ("apply", "recalibrate", "evaluate")
_KINDS = {"conv": 0.0, "depthwise": 0.5, "residual": 1.0}
_BN_KEPT_BYTES = 64 * 2**20  # recalibrated BN statistics kept for re-judging: ~4,000 resnet56 policies


@dataclass(frozen=True)
class EnvConfig:
    """What an episode is judged on.

    Attributes:
        targets: fractions of the budget metric kept (MACs by default); one is drawn per episode
            (several: a conditional agent).
        reward: "acc" (holdout accuracy, budget by clipping; AMC's), "err-log-flops"
            (-error x ln of the budget metric's value; AMC's unconstrained form, MACs by default) or "normalized" (accuracy minus that of
            the uniform policy at the episode's target, so targets of different difficulty
            give rewards on one scale, for conditional agents).
        criterion: channel selection inside each group.
        part: holdout part that scores an episode ("reward" when the evaluator splits it).
    """

    targets: tuple[float, ...] = (0.5,)
    reward: str = "acc"
    criterion: str = "l1"
    part: str = "reward"

    def __post_init__(self) -> None:
        if not self.targets:
            raise BudgetError("At least one target is needed.")
        for t in self.targets:
            if not 0.0 < t < 1.0:
                raise BudgetError(f"Targets must be fractions in (0, 1) of the budget, but got {t}.")
        if self.reward not in REWARDS:
            raise unknown_name("reward", self.reward, REWARDS)


class PruningEnv(gym.Env):
    """Choose a keep ratio for each prunable group of a CNN, in forward order.

    ## Description
    An episode walks the searchable groups of a :class:`PrunableSpace` (AMC,
    He et al. 2018; CACP, Liu et al. 2021). At each step the agent gives the
    current group's keep ratio; after the last group the policy is applied,
    BatchNorm is recalibrated, and the pruned model's holdout accuracy gives
    the reward.

    ## Action Space
    ``Box(lo, hi, (1,), float32)``: the keep ratio, within the space's bounds.
    It is rounded to a channel count and then clipped, as in AMC, so that (a)
    with every later group at its lower bound the budget is still met and
    (b) with every later group at its upper bound the budget is still reached.
    The budget is ``target`` times the base of the env's :class:`~autoprune.pruning.Metric`
    (MACs by default; params, or a latency model's seconds), whose value never falls when a
    count grows, so both bounds are bisections.
    The last group takes the largest count within budget, so every episode
    ends within one channel of that group below the target, never above.

    ## Observation Space
    ``Box(0, 1, (12,), float32)``; every feature is scaled to [0, 1]:

    | # | feature          | meaning                                                     |
    |---|------------------|-------------------------------------------------------------|
    | 0 | target           | fraction of the budget metric the episode keeps             |
    | 1 | t                | step / number of groups                                     |
    | 2 | kind             | 0 conv, 0.5 depthwise, 1 residual (coupled across blocks)   |
    | 3 | in_channels      | root conv's input channels / the maximum over groups        |
    | 4 | channels         | the group's channels / the maximum over groups              |
    | 5 | kernel           | kernel size / the maximum                                   |
    | 6 | stride           | stride / the maximum                                        |
    | 7 | fmap             | output height / the maximum                                 |
    | 8 | group_macs       | MACs this group controls / base MACs                        |
    | 9 | removed_budget   | budget metric removed by the earlier steps / its base       |
    | 10| removable_budget | budget metric the later groups could still remove / its base|
    | 11| previous_action  | the previous group's effective keep ratio (1 at the start)  |

    ## Rewards
    0 until the last step; then by ``config.reward`` (see :class:`EnvConfig`), from the holdout
    accuracy of the pruned model made ready by the evaluator's reward proxy
    (:mod:`autoprune.proxies`: ``bn`` recalibration by default, ``reconstruct``, ``finetune-K``,
    ``distill-K``; ``--reward-proxy``), so every agent can use any of them.

    ## Starting State
    The first group, nothing pruned. Each round of ``len(config.targets)``
    episodes visits every target once, in an order drawn from (seed, round),
    so targets get equal episodes and a resumed search draws the targets an
    uninterrupted one would; or the target is given as ``reset(options={"target": x})``.
    ``options={"screen": f}`` makes the episode's evaluation multi-fidelity: ``f`` gets the
    accuracy on a quarter of the reward images first and may raise to abandon the episode.

    ## Episode End
    Terminates after the last searchable group; never truncated.
    ``info`` then holds ``policy`` (a :class:`Policy`), ``accuracy``, ``macs``,
    ``params``, ``fraction`` (of the budget metric), ``counts`` and ``cached`` (whether the
    evaluation was reused).

    ## Arguments
    ``space``: the prunable space (and through it the model); ``evaluator``:
    scores pruned models; ``config``: :class:`EnvConfig`; ``dataset`` and
    ``checkpoint``: recorded in the policies; ``metric``: the budget
    (:func:`~autoprune.pruning.flops_metric` of ``space`` when None).

    ## Version History
    * v0: initial version; features 9 and 10 and the clipping follow the budget metric (MACs by default).
    """

    metadata = {"render_modes": []}

    def __init__(self, space: PrunableSpace, evaluator: Evaluator, config: EnvConfig = EnvConfig(),
                 *, dataset: str = "cifar10", checkpoint: str | None = None, metric: Metric | None = None) -> None:
        self.space, self.evaluator, self.config = space, evaluator, config
        self.dataset, self.checkpoint = dataset, checkpoint
        self.metric = flops_metric(space) if metric is None else metric
        for t in config.targets:
            check_target(space, t, self.metric)
        self.n = len(space.searchable)
        lo, hi = space.spec.bounds
        self.action_space = spaces.Box(lo, hi, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self._options = [space.count_options(j) for j in range(self.n)]
        self._lo = np.array([o[0] for o in self._options])
        self._hi = np.array([o[-1] for o in self._options])
        self._scores = space.scores(config.criterion)
        self._static = self._static_features()
        self._cache: dict[tuple[int, ...], float] = {}
        self._reference: dict[float, float] = {}
        self._bn_states: dict[tuple[int, ...], dict[str, Any]] = {}  # counts -> recalibrated BN buffers
        self._bn_bytes = 0
        self.evaluations = 0
        self.timings = dict.fromkeys(TIMED, 0.0)  # seconds spent in each part of the evaluations
        self.episodes = 0
        self._seed = 0
        self._counts = self._hi.copy()
        self._t = 0
        self._target = config.targets[0]
        self._previous = 1.0
        self._screen: Callable[[float], None] | None = None

    # -- features -----------------------------------------------------------
    def _static_features(self) -> np.ndarray:
        groups = self.space.searchable
        base = self.space.base.macs
        table = np.array([[g.in_channels, g.channels, g.kernel, g.stride, g.fmap] for g in groups], dtype=np.float64)
        table /= table.max(axis=0)
        controlled = []
        for j in range(self.n):
            k = self.space.channels.copy()
            k[j] = 0
            controlled.append((base - self.space.macs(k)) / base)
        kinds = [_KINDS[g.kind] for g in groups]
        return np.column_stack([kinds, table, controlled])

    def _observation(self) -> np.ndarray:
        metric = self.metric
        j = min(self._t, self.n - 1)
        done = self._counts.copy()
        done[j:] = self._hi[j:]
        removed = (metric(self._hi) - metric(done)) / metric.base
        later_hi, later_lo = done.copy(), done.copy()
        later_lo[j + 1:] = self._lo[j + 1:]
        removable = (metric(later_hi) - metric(later_lo)) / metric.base
        obs = np.concatenate([[self._target, self._t / self.n], self._static[j], [removed, removable, self._previous]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # -- the budget -----------------------------------------------------------
    def _clip(self, j: int, wanted: int) -> int:
        """AMC's constraint: the count nearest ``wanted`` that keeps the budget met and reachable."""
        budget = self._target * self.metric.base
        options = self._options[j]

        def value_with(c: int, rest: np.ndarray) -> float:
            k = self._counts.copy()
            k[j] = c
            k[j + 1:] = rest[j + 1:]
            return self.metric(k)

        # the metric never falls as the count grows, so both bounds are bisections over the options
        over = bisect.bisect_right(options, budget, key=lambda c: value_with(c, self._lo))
        upper = int(options[max(over - 1, 0)])  # largest count still within budget
        reached = bisect.bisect_left(options, budget, key=lambda c: value_with(c, self._hi))
        lower = int(options[min(reached, len(options) - 1)])  # smallest count from which the budget is still reached
        if j == self.n - 1:
            return upper
        return int(np.clip(wanted, min(lower, upper), upper))

    # -- the Gymnasium contract ----------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self.episodes = seed, 0
        if options and "target" in options:
            target = float(options["target"])
            check_target(self.space, target, self.metric)
        else:  # every target once per round, in a shuffled order that depends on (seed, round) only:
            n = len(self.config.targets)  # balanced, and a resumed run draws what an uninterrupted one would
            order = np.random.default_rng([self._seed, self.episodes // n]).permutation(n)
            target = float(self.config.targets[order[self.episodes % n]])
        self._target = target
        self._screen = (options or {}).get("screen")
        self._counts = self._hi.copy()
        self._t = 0
        self._previous = 1.0
        return self._observation(), {"target": target}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t >= self.n:
            raise AutopruneError("step() called after the episode ended; call reset() first.")
        j = self._t
        ratio = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], *self.space.spec.bounds))
        options = self._options[j]
        wanted = int(options[np.argmin(np.abs(options - ratio * self.space.searchable[j].channels))])
        count = self._clip(j, wanted)
        self._counts[j] = count
        self._previous = count / self.space.searchable[j].channels
        self._t += 1
        if self._t < self.n:
            return self._observation(), 0.0, False, False, {}
        reward, info = self._finish()
        obs = self._observation()
        return obs, reward, True, False, info

    def state_dict(self) -> dict[str, Any]:
        """What a resumed search needs: the evaluation cache, the target schedule, the counters."""
        return {"cache": [[list(k), part, acc] for (k, part), acc in self._cache.items()],
                "reference": [[t, a] for t, a in self._reference.items()],
                "episodes": self.episodes, "seed": self._seed, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cache = {(tuple(k), part): acc for k, part, acc in state["cache"]}
        self._reference = {t: a for t, a in state["reference"]}
        self.episodes, self._seed, self.evaluations = state["episodes"], state["seed"], state["evaluations"]

    # -- the end of an episode -------------------------------------------------
    def accuracy(self, counts: Sequence[int], part: str | None = None,
                 screen: Callable[[float], None] | None = None) -> tuple[float, bool]:
        """Holdout accuracy of the policy keeping ``counts`` (cached by counts); and whether it was cached.

        ``screen`` (multi-fidelity, "reward" part only) is called with the accuracy on the part's
        first quarter before the rest is evaluated on the same recalibrated model; it may raise to
        stop there, and then nothing is cached.
        """
        key = tuple(int(c) for c in counts)
        part = part or self._part()
        if (key, part) in self._cache:
            return self._cache[(key, part)], True
        model = self.judged(counts)
        recalibrated = time.perf_counter()
        try:
            acc = self._score(model, part, screen)
        finally:
            self.timings["evaluate"] += time.perf_counter() - recalibrated
        self._cache[(key, part)] = acc
        self.evaluations += 1
        return acc, False

    def judged(self, counts: Sequence[int]) -> Any:
        """The model pruned to ``counts``, ready to be judged (BN recalibrated).

        Its time goes into ``timings``: "apply" (cut the model), "recalibrate" (adaptive BN). Under the
        ``bn`` proxy the recalibrated statistics are kept (FIFO, ``_BN_KEPT_BYTES`` at most): the final
        pick re-judges policies the search scored, and recalibration is deterministic (fixed images, no
        augmentation), so their kept statistics are what recalibrating again would give.
        """
        key = tuple(int(c) for c in counts)
        channels = self.space.select(counts, self._scores)
        kept = self._bn_states.get(key)
        if kept is not None:
            start = time.perf_counter()
            model = self.evaluator.prepare(self.space.apply(channels))
            model.load_state_dict(kept, strict=False)
            self.timings["apply"] += time.perf_counter() - start
            return model
        model = self.evaluator.judge(self.space, channels, timings=self.timings)
        if self.evaluator.proxy is None or not self.evaluator.proxy.changes_weights:
            self._keep_bn_state(key, model)
        return model

    def _keep_bn_state(self, key: tuple[int, ...], model: Any) -> None:
        bns = set(batch_norms(model))
        state = {f"{name}.{b}": t.detach().clone() for name, m in model.named_modules() if m in bns
                 for b, t in m.named_buffers(recurse=False) if t is not None}
        self._bn_states[key] = state
        self._bn_bytes += _nbytes(state)
        while self._bn_bytes > _BN_KEPT_BYTES and len(self._bn_states) > 1:  # the oldest go first
            self._bn_bytes -= _nbytes(self._bn_states.pop(next(iter(self._bn_states))))

    def _score(self, model: Any, part: str, screen: Callable[[float], None] | None) -> float:
        if screen is None or part != "reward":
            return self.evaluator.holdout(model, part=part).top1
        first = self.evaluator.holdout(model, part="screen")
        screen(first.top1)
        rest = self.evaluator.holdout(model, part="rest")
        correct = round(first.top1 * first.samples) + round(rest.top1 * rest.samples)
        return correct / (first.samples + rest.samples)

    def _part(self) -> str:
        return self.config.part if self.config.part in self.evaluator.parts else "all"

    def _finish(self) -> tuple[float, dict]:
        self.episodes += 1
        counts = self._counts.copy()
        acc, cached = self.accuracy(counts, screen=self._screen)
        cost = self.space.cost(counts)
        if self.config.reward == "acc":
            reward = acc
        elif self.config.reward == "err-log-flops":
            reward = -(1.0 - acc) * float(np.log(self.metric(counts)))
        else:
            reward = acc - self.reference(self._target)
        policy = self.policy(counts, self._target)
        policy.accuracy[self._part()] = acc
        return float(reward), {"policy": policy, "accuracy": acc, "macs": cost.macs, "params": cost.params,
                               "fraction": policy.budget_fraction,
                               "counts": counts, "target": self._target, "cached": cached}

    def reference(self, target: float) -> float:
        """Accuracy of the uniform policy at ``target`` (the "normalized" reward's baseline)."""
        if target not in self._reference:
            self._reference[target] = self.accuracy(uniform_counts(self.space, target, self.metric))[0]
        return self._reference[target]

    def policy(self, counts: Sequence[int], target: float, provenance: dict | None = None) -> Policy:
        """The Policy of an episode that kept ``counts``."""
        return policy_for(self.space, self.space.select(counts, self._scores), target=target, dataset=self.dataset,
                          checkpoint=self.checkpoint, criterion=self.config.criterion, provenance=provenance,
                          metric=self.metric)


def _nbytes(tensors: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
