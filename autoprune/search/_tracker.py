"""Per-episode bookkeeping of a search: the CSV row, TensorBoard scalars, the progress bar, the candidates."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._run_dir import SearchRunDir
from ._searcher import Candidate, add_candidate

__all__ = ["Tracker", "episode_row"]


def episode_row(episode: int, target: float, reward: float, accuracy: float, macs_fraction: float,
                params_fraction: float, cached: bool, ratios: np.ndarray) -> dict[str, Any]:
    """One line of episodes.csv."""
    return {"episode": episode, "target": target, "reward": f"{reward:.6f}", "accuracy": f"{accuracy:.6f}",
            "macs_fraction": f"{macs_fraction:.6f}", "params_fraction": f"{params_fraction:.6f}",
            "cached": int(cached), "ratios": " ".join(f"{r:.4f}" for r in ratios)}


class Tracker:
    """Records each finished episode; keeps the distinct policies per target with their rewards."""

    def __init__(self, run: SearchRunDir, channels: np.ndarray, reward: str) -> None:
        self.run, self.channels, self.reward = run, channels, reward  # reward: the env's kind, for the bar
        self.candidates: dict[float, list[Candidate]] = {}  # target -> [[reward, counts], ...]
        self.episodes = self.total = 0
        self.bar: tqdm | None = None
        self._writer: Any = None

    def start(self, total: int, done: int, candidates: dict[float, list[Candidate]], episodes: int | None = None) -> None:
        """``done`` trials are behind us, ``episodes`` of them (default: all) ended with an episode."""
        self.total, self.candidates = total, candidates
        self.episodes = done if episodes is None else episodes
        # a low smoothing: the ETA follows the average episode, not the last (often a cached or warm-up one)
        self.bar = tqdm(total=total, initial=done, desc="search", unit="ep", smoothing=0.05)

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.run.path / "tb"))
        return self._writer

    def episode(self, info: dict[str, Any], reward: float) -> None:
        """An episode that ended with ``info`` (the env's) and ``reward``."""
        self.episodes += 1
        policy = info["policy"]
        target = float(info["target"])
        counts = [int(c) for c in info["counts"]]
        self.run.append_episode(episode_row(self.episodes, target, reward, info["accuracy"], policy.macs_fraction,
                                            policy.params_fraction, info["cached"], np.asarray(counts) / self.channels))
        add_candidate(self.candidates, target, reward, counts)
        best = max(self.candidates[target])
        self.scalars(self.episodes, target, reward, info["accuracy"], policy.macs_fraction, best[0])
        self.advance(best=self._best(target, best[0]), macs=f"{policy.macs_fraction:.3f}")

    def _best(self, target: float, reward: float) -> str:
        """The bar's "best" at ``target``, in words: a normalized reward is points over uniform-L1."""
        if self.reward == "normalized":
            return f"{100 * reward:+.2f} pts vs uniform @ {target:g}"
        if self.reward == "acc":
            return f"{100 * reward:.2f}% holdout @ {target:g}"
        return f"{reward:.4f} @ {target:g}"

    def scalars(self, episode: int, target: float, reward: float, accuracy: float, macs_fraction: float,
                best: float) -> None:
        """TensorBoard curves of one episode, per target."""
        tb = self._tensorboard()
        for key, value in (("reward", reward), ("accuracy", accuracy), ("macs_fraction", macs_fraction),
                           ("best_reward", best)):
            tb.add_scalar(f"target_{target:g}/{key}", value, episode)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        """Move the bar (also for trials that ended without an episode: pruned ones, other workers').

        A finished trial or episode makes the run worth resuming: from then on a failure keeps its folder.
        """
        if n > 0:
            self.run.mark_started()
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._writer is not None:
            self._writer.close()
