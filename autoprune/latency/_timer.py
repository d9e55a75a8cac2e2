"""Timing: the Measurement a timing yields, and interleaved timing of several runnable things.

Why interleaved: on a shared machine the speed of the CPU swings by tens of percent within minutes. Timing
one model fully, then the next, lets that drift land on whichever was timed later; taking turns (``rounds``
passes over all of them, a few timed calls each, in a seeded shuffled order) spreads it over all of them,
and the fastest of a thing's calls is what a latency model uses (see :class:`Measurement`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._settings import LatencySettings

__all__ = ["Measurement", "Runner", "fixed_threads", "time_interleaved"]


@dataclass(frozen=True)
class Measurement:
    """A latency: the fastest, median, 10th and 90th percentiles of ``repeats`` timed calls, in seconds per batch.

    ``fastest`` is the figure autoprune predicts and budgets. On a shared or virtualised CPU the calls' times
    are bimodal: for seconds at a time another tenant slows every call by up to 1.5x. The median then
    follows whichever mode held more of the timing, and the same policies timed twice a few seconds apart
    differed by 9 to 20 % (median over policies; their ratio to the unpruned model, timed with them); the
    fastest call, the model's own cost without interference (the reason Python's ``timeit`` reports the
    minimum), differed by 1 to 5 %. On a quiet, dedicated device the two agree to a few percent; the median
    and the spread stay in the record to show how quiet the device was.
    """

    fastest: float
    median: float
    p10: float
    p90: float
    repeats: int

    @property
    def spread(self) -> float:
        """How far the slow calls are from the fast ones: p90 / p10 - 1 (0.1 is 10 %)."""
        return self.p90 / self.p10 - 1.0 if self.p10 > 0 else float("inf")

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Measurement:
        """The summary of the timed calls ``seconds``."""
        s = np.asarray(seconds, dtype=np.float64)
        p10, median, p90 = np.percentile(s, [10, 50, 90])
        return cls(float(s.min()), float(median), float(p10), float(p90), int(s.size))

    @classmethod
    def exactly(cls, seconds: float) -> Measurement:
        """A latency known exactly (a model of the time rather than a clock: no spread)."""
        return cls(seconds, seconds, seconds, seconds, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.fastest * 1e3:.3f} ms (median {self.median * 1e3:.3f}, p10 {self.p10 * 1e3:.3f}, "
                f"p90 {self.p90 * 1e3:.3f}, {self.repeats} runs)")


@dataclass(frozen=True)
class Runner:
    """One thing to time: ``call`` runs one batch; ``sync`` waits for the device (CUDA) to finish it."""

    call: Callable[[], object]
    sync: Callable[[], None] = lambda: None


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block, the caller's restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_interleaved(runners: Sequence[Runner], settings: LatencySettings, *, progress: bool = False,
                     desc: str = "timing") -> list[Measurement]:
    """Time every runner in ``settings.rounds`` interleaved passes (see the module docstring).

    Each pass warms each runner up (``warmup / rounds`` calls, at least one: another runner's calls evicted its
    weights from the caches) and times ``repeats / rounds`` calls, each call bracketed by the runner's ``sync``
    so a CUDA kernel is timed to its end. Runs under ``torch.inference_mode`` with ``settings.threads`` threads.
    """
    settings = settings.resolved()
    per_round = -(-settings.repeats // settings.rounds)
    warm = max(1, -(-settings.warmup // settings.rounds)) if settings.warmup else 0
    samples: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    shuffle = random.Random(0).shuffle
    clock = time.perf_counter
    with fixed_threads(settings.threads), torch.inference_mode(), tqdm(
            total=settings.rounds * len(runners), desc=desc, unit="model", disable=not progress, leave=False) as bar:
        for _ in range(settings.rounds):
            shuffle(order)
            for i in order:
                run, sync = runners[i].call, runners[i].sync
                for _ in range(warm):
                    run()
                sync()
                out = samples[i]
                for _ in range(per_round):
                    start = clock()
                    run()
                    sync()
                    out.append(clock() - start)
                bar.update()
    return [Measurement.of(s) for s in samples]
