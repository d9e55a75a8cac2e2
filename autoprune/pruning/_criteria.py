"""Channel-selection criteria: which channels of a group to keep.

A criterion scores every root channel of a group; the highest-scoring ones
are kept. Scores aggregate over all the group's producers (for a residual
stage, every conv and BN writing that channel), so coupled channels are
judged as one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError, unknown_name
from ._discover import Group
from ._reconstruct import Reconstruction

__all__ = ["CRITERIA", "channel_scores", "taylor_gradients"]


def _weights(model: nn.Module, group: Group, kinds: tuple[type, ...]) -> Iterable[tuple[torch.Tensor, np.ndarray]]:
    """(weight, root channel of each output row) for the group's producers of the given types."""
    for m in group.producers():
        module = model.get_submodule(m.module)
        if isinstance(module, kinds) and getattr(module, "weight", None) is not None:
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                continue  # a depthwise filter has k*k weights: no evidence of the channel's worth
            yield module.weight, m


def _accumulate(group: Group, rows: Iterable[tuple[np.ndarray, object]]) -> np.ndarray:
    scores = np.zeros(group.channels)
    for values, m in rows:
        np.add.at(scores, m.root, values[m.index])
    return scores


def _norm(p: int) -> Callable[[nn.Module, Group], np.ndarray]:
    def score(model: nn.Module, group: Group, **_: object) -> np.ndarray:
        rows = ((w.detach().flatten(1).norm(p=p, dim=1).double().cpu().numpy(), m)
                for w, m in _weights(model, group, (nn.Conv2d, nn.Linear)))
        return _accumulate(group, rows)
    score.__doc__ = f"L{p} norm of each channel's filters (Li et al. 2017), summed over the group's convs."
    return score


def _bn_gamma(model: nn.Module, group: Group, **_: object) -> np.ndarray:
    """|gamma| of the channel's BatchNorm scale (Network Slimming), summed over the group's BNs."""
    rows = ((w.detach().abs().double().cpu().numpy(), m)
            for w, m in _weights(model, group, (nn.modules.batchnorm._BatchNorm,)))
    scores = _accumulate(group, rows)
    if not scores.any():
        raise AutopruneError(f"Criterion 'bn-gamma' needs a BatchNorm after group {group.name!r}; use l1 instead.")
    return scores


def _random(model: nn.Module, group: Group, *, seed: int = 0, **_: object) -> np.ndarray:
    """A seeded random ranking: the control every criterion should beat."""
    digest = sum(map(ord, group.name))  # stable across processes, unlike hash()
    return np.random.default_rng([seed, digest]).random(group.channels)


def _taylor(model: nn.Module, group: Group, *, grads: dict[str, torch.Tensor] | None = None, **_: object) -> np.ndarray:
    """First-order Taylor estimate of the loss change (Molchanov et al. 2019): (sum of w * dL/dw)^2 per channel."""
    if grads is None:
        raise AutopruneError("Criterion 'taylor' needs gradients: pass batches of training data.")
    rows = []
    for m in group.producers():
        name = f"{m.module}.weight"
        if name in grads:
            w = model.get_submodule(m.module).weight.detach()
            rows.append(((w * grads[name]).reshape(w.shape[0], -1).sum(1).double().cpu().numpy(), m))
    return _accumulate(group, rows) ** 2


def _reconstruction(
    model: nn.Module, group: Group, *, problems: dict[str, Reconstruction] | None = None, **_: object
) -> np.ndarray:
    """How much the reconstruction of the consumers' outputs needs each channel (He et al. 2017): the LASSO
    penalty at which the channel's coefficient enters the path (larger: needed more; 0: never needed)."""
    if problems is None:
        raise AutopruneError("Criterion 'reconstruction' needs feature maps: pass batches of training data.")
    return problems[group.name].scores()


CRITERIA: dict[str, Callable[..., np.ndarray]] = {
    "l1": _norm(1),
    "l2": _norm(2),
    "bn-gamma": _bn_gamma,
    "random": _random,
    "taylor": _taylor,
    "reconstruction": _reconstruction,
}


def taylor_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Gradients of the cross-entropy w.r.t. every weight, summed over ``batches`` (model left unchanged)."""
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()  # BN in eval mode: score the model as it is, without touching its statistics
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return grads


def channel_scores(model: nn.Module, groups: Iterable[Group], criterion: str, **kwargs: object) -> dict[str, np.ndarray]:
    """Score every channel of every group with ``criterion`` (higher = more worth keeping)."""
    if criterion not in CRITERIA:
        raise unknown_name("criterion", criterion, CRITERIA)
    fn = CRITERIA[criterion]
    return {g.name: fn(model, g, **kwargs) for g in groups}
