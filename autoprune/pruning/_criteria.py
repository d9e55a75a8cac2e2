"""Channel-selection criteria: which channels of a group to keep.

A criterion scores every root channel of a group; the highest-scoring ones
are kept. Scores aggregate over all the group's producers (for a residual
stage, every conv and BN writing that channel), so coupled channels are
judged as one. The ``group-*`` criteria aggregate over every member instead:
producers' filters, norms' scales, bare parameters and the consumers' input
kernels, all the weights that leave the model with the channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError, unknown_name
from ._discover import Group, Member, ParameterPruning
from ._reconstruct import Reconstruction

__all__ = ["CRITERIA", "channel_scores", "taylor_gradients"]


def _weights(model: nn.Module, group: Group, kinds: tuple[type, ...]) -> Iterable[tuple[torch.Tensor, np.ndarray]]:
    """(weight, root channel of each output row) for the group's producers of the given types."""
    for m in group.producers():
        if isinstance(m.fn, ParameterPruning):
            continue  # a bare parameter (layer scale) is no filter
        module = model.get_submodule(m.module)
        if isinstance(module, kinds) and getattr(module, "weight", None) is not None:
            if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1:
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


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _member_weights(model: nn.Module, m: Member, p: int) -> np.ndarray | None:
    """Sum of |w|^p of the weights of each of ``m``'s channels (in the module's own numbering), or None.

    Out side: a conv's or Linear's filter (depthwise ones too), a norm's scale, a bare parameter's slice.
    In side: the input kernels reading the channel; in a grouped conv, only its own conv-group's filters
    read it (Torch-Pruning's importance repeats one conv-group's sums instead).
    """
    if isinstance(m.fn, ParameterPruning):
        w = model.get_parameter(m.module).detach().double().abs().pow(p)
        return w.movedim(m.fn.dim, 0).reshape(w.shape[m.fn.dim], -1).sum(1).cpu().numpy()
    module = model.get_submodule(m.module)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    w = weight.detach().double().abs().pow(p)
    if isinstance(module, _NORMS):
        return w.reshape(-1).cpu().numpy() if w.dim() == 1 else None
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        return None
    if m.side == "out":
        return w.flatten(1).sum(1).cpu().numpy()
    if isinstance(module, nn.Linear):
        return w.sum(0).cpu().numpy()
    per_in, per_out = w.shape[1], module.out_channels // module.groups
    kernels = w.sum((2, 3)).reshape(module.groups, per_out, per_in).sum(1)  # (conv-group, position in it)
    return kernels.reshape(-1).cpu().numpy()


def _group_norm(p: int) -> Callable[[nn.Module, Group], np.ndarray]:
    def score(model: nn.Module, group: Group, **_: object) -> np.ndarray:
        rows = ((v, m) for m in group.members if (v := _member_weights(model, m, p)) is not None)
        total = _accumulate(group, rows)
        return total if p == 1 else total ** (1.0 / p)
    score.__doc__ = (f"L{p} norm of all the weights each channel owns across its group (Torch-Pruning's group "
                     "importance): producers' filters, norms' scales, bare parameters, consumers' input kernels.")
    return score


def _group_gamma(model: nn.Module, group: Group, **_: object) -> np.ndarray:
    """|scale| of the channel summed over every normalisation layer of its group (BatchNorm, GroupNorm, LayerNorm)."""
    rows = ((v, m) for m in group.members
            if not isinstance(m.fn, ParameterPruning) and isinstance(model.get_submodule(m.module), _NORMS)
            and (v := _member_weights(model, m, 1)) is not None)
    scores = _accumulate(group, rows)
    if not scores.any():
        raise AutopruneError(f"Criterion 'group-bn-gamma' needs a normalisation layer in group {group.name!r}; "
                             "use group-l1 instead.")
    return scores


CRITERIA: dict[str, Callable[..., np.ndarray]] = {
    "l1": _norm(1),
    "l2": _norm(2),
    "bn-gamma": _bn_gamma,
    "random": _random,
    "taylor": _taylor,
    "reconstruction": _reconstruction,
    # Group criteria. Torch-Pruning's GroupMagnitudeImportance(p, group_reduction="mean", normalizer="mean")
    # sums |w|^p per member, averages over members and divides by the group's mean: a positive constant per
    # group times our plain sum, so both keep the same channels at any count. We keep the sum (the norm of
    # every weight the channel owns, what a hand computation gives); an allocation across groups that needs
    # comparable scales normalises them itself (the global baseline divides each group's scores by their mean).
    "group-l1": _group_norm(1),
    "group-l2": _group_norm(2),
    "group-bn-gamma": _group_gamma,
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
