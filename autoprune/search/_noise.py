"""AMC's exploration noise: a normal centred on the actor's action, truncated to the action bounds."""

from __future__ import annotations

import numpy as np
from scipy.stats import truncnorm
from stable_baselines3.common.noise import ActionNoise

__all__ = ["TruncatedNormalNoise"]


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: a normal centred on the actor's action, truncated to the action bounds.

    Why: additive Gaussian noise followed by clipping piles probability mass on
    the bounds (e.g. many layers at exactly the minimal keep ratio); AMC
    instead resamples inside ``[low, high]``. The std starts large (AMC: 0.5,
    wide for ratios in [0.2, 1]) and decays by ``decay`` after each
    post-warm-up episode (AMC: 0.95), moving from exploration to exploitation.

    Unlike SB3's additive noises this one needs the actor's action, so it is
    used through :meth:`sample` (as :class:`~autoprune.search._amc_ddpg.AMCDDPG` does);
    calling it like an additive noise raises. :meth:`reset` is SB3's per-episode hook: the noise
    is memoryless, so there is nothing to clear. The decay is *not* done in
    :meth:`reset` because SB3 also calls it at the start of every ``learn()``,
    which would tie the schedule to how training is chunked; the owner calls
    :meth:`decay_sigma` once per post-warm-up episode instead.

    Its whole state is the current ``sigma`` and the generator ``rng``: the
    agent's checkpoint stores the one as a number and the other as the
    generator's state (:mod:`autoprune.search._agent_files`).

    :param low: lower action bound(s).
    :param high: upper action bound(s).
    :param sigma: initial std, in action units.
    :param decay: factor applied to ``sigma`` by :meth:`decay_sigma`.
    :param seed: seed of the noise's own generator.
    """

    def __init__(
        self,
        low: np.ndarray | float,
        high: np.ndarray | float,
        sigma: float = 0.5,
        decay: float = 0.95,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if np.any(self.low > self.high):
            raise ValueError(f"low {self.low} exceeds high {self.high}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        """Re-create the generator from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def sample(self, mean: np.ndarray) -> np.ndarray:
        """Draw from N(mean, sigma^2) truncated to [low, high] (float64, same shape as ``mean``)."""
        mean = np.clip(np.asarray(mean, dtype=np.float64), self.low, self.high)
        if self.sigma == 0.0:
            return mean
        a, b = (self.low - mean) / self.sigma, (self.high - mean) / self.sigma
        draw = truncnorm.rvs(a, b, loc=mean, scale=self.sigma, size=mean.shape, random_state=self.rng)
        return np.clip(draw, self.low, self.high)  # guard against round-off at the bounds

    def decay_sigma(self) -> None:
        """One post-warm-up episode has ended: ``sigma *= decay``."""
        self.sigma *= self.decay

    def reset(self) -> None:
        """SB3's end-of-episode hook; nothing to reset (see the class docstring)."""

    def __call__(self) -> np.ndarray:
        raise RuntimeError(
            "TruncatedNormalNoise is centred on the actor's action: use sample(actor_action), as AMCDDPG does"
        )

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(low={self.low}, high={self.high}, sigma={self.sigma}, decay={self.decay})"
