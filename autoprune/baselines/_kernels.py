"""Which kernels DExp masks in a conv (the distribution of kernel sums), and holding them at zero while training.

A *kernel* is the ``k x k`` slice ``W[f, c]`` of a conv's weight (filter
``f``, input channel ``c``). Each kernel gets the score ``s[f, c] = sum(W[f, c])
+ beta[f]``, ``beta`` being the shift of the BatchNorm right after the conv
(no BN: the conv's bias, or 0; way B only). The scores are standardised over
the layer and squashed by a scaled sigmoid into ``buckets`` (13) bins:
``bucket = round((buckets - 1) * sigmoid((s - mean) / (temperature * std)))``,
so the expectation of the distribution falls in the middle bin. Bins are
ranked by population (ties: the bin nearer the middle, then the lower bin);
kernels of the most populated bins, the crowd around the expectation, are
the most redundant and are masked first:

- way B, "full-layer": over the whole layer, in the order (bin rank,
  distance ``|z|`` to the expectation, flat index);
- way A, "bn-priority": the candidates are the kernels of the most
  populated bins, taken bin by bin until they hold at least the number to
  mask; filters are then visited by ascending ``|gamma|`` (the BN scale:
  filters that matter least first) and each filter's candidates are masked
  (bin rank, ``|z|``, channel order) until the count is reached. Way A
  needs a BN after every pruned conv and says which conv lacks one.

Held masks stay exactly zero through training: their gradients are zeroed
and the mask is re-applied after every optimizer step (:func:`hold_masks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AutopruneError, unknown_name
from ._kernel_macs import Layers

__all__ = ["WAYS", "apply_masks", "bucketize", "compute_masks", "hold_masks", "kernel_mask", "kernel_sums"]

WAYS = ("bn-priority", "full-layer")


def kernel_sums(weight: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``s[f, c] = sum of kernel W[f, c] + shift[f]`` (float64, on the CPU)."""
    s = weight.detach().to("cpu", torch.float64).flatten(2).sum(2)
    if shift is not None:
        s = s + shift.detach().to("cpu", torch.float64)[:, None]
    return s


def bucketize(sums: torch.Tensor, buckets: int = 13, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin of every score and its standardised value ``z``: ``round((buckets - 1) x sigmoid(z / temperature))``.

    ``z = (s - mean) / std`` over the layer (all 0 when the scores are all equal),
    so the expectation falls in the middle bin.
    """
    std = sums.std(unbiased=False)
    z = (sums - sums.mean()) / std if std > 0 else torch.zeros_like(sums)
    return torch.round((buckets - 1) * torch.sigmoid(z / temperature)).long(), z


def _bin_rank(bins: np.ndarray, buckets: int) -> np.ndarray:
    """Rank of every bin (0: the most populated; ties: nearer the middle, then lower)."""
    population = np.bincount(bins.ravel(), minlength=buckets)
    ids = np.arange(buckets)
    order = np.lexsort((ids, np.abs(ids - (buckets - 1) / 2), -population))
    rank = np.empty(buckets, dtype=np.int64)
    rank[order] = ids
    return rank


def kernel_mask(weight: torch.Tensor, n: int, *, way: str = "bn-priority", shift: torch.Tensor | None = None,
                gamma: torch.Tensor | None = None, buckets: int = 13, temperature: float = 1.0) -> torch.Tensor:
    """Bool ``(f, c)``, False for the ``n`` kernels DExp masks in one conv (see the module docstring).

    ``shift`` is the BN shift per filter (added to the kernel sums), ``gamma``
    the BN scale per filter (way "bn-priority" visits filters by ascending |gamma|).
    """
    f, c = weight.shape[:2]
    if not 0 <= n < f * c:
        raise AutopruneError(f"DExp: the number of kernels to mask must lie in [0, {f * c}), but got {n}.")
    bins, z = bucketize(kernel_sums(weight, shift), buckets, temperature)
    rank = _bin_rank(bins.numpy(), buckets)[bins.numpy()]  # (f, c): the rank of each kernel's bin
    closeness = np.abs(z.numpy())
    filt, chan = np.meshgrid(np.arange(f), np.arange(c), indexing="ij")
    if way == "full-layer":
        order = np.lexsort((np.arange(f * c), closeness.ravel(), rank.ravel()))
    elif way == "bn-priority":
        if gamma is None:
            raise AutopruneError("DExp: way 'bn-priority' needs the BN scales (gamma) of the conv's filters.")
        population = np.bincount(rank.ravel(), minlength=buckets)  # per bin rank: non-increasing
        last = int(np.searchsorted(np.cumsum(population), n))  # the candidate bins: ranks 0..last
        g = np.abs(gamma.detach().to("cpu", torch.float64).numpy())
        filter_rank = np.empty(f, dtype=np.int64)
        filter_rank[np.argsort(g, kind="stable")] = np.arange(f)
        candidate = (rank <= last).ravel()
        order = np.lexsort((chan.ravel(), closeness.ravel(), rank.ravel(), filter_rank[filt].ravel()))
        order = order[candidate[order]]
    else:
        raise unknown_name("DExp way", way, WAYS)
    keep = np.ones(f * c, dtype=bool)
    keep[order[:n]] = False
    return torch.from_numpy(keep.reshape(f, c))


def compute_masks(model: nn.Module, layers: Layers, counts: Sequence[int], *, way: str = "bn-priority",
                  buckets: int = 13, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """DExp's masks of every conv with ``counts[i] > 0`` kernels to mask (convs before ``start_conv``: none)."""
    masks = {}
    modules = dict(model.named_modules())
    lacking = [c.name for c, n in zip(layers.convs, counts) if n > 0 and c.bn is None]
    if way == "bn-priority" and lacking:
        raise AutopruneError(
            f"DExp: way 'bn-priority' ranks filters by the scale of the BatchNorm after each conv, but the convs "
            f"{lacking} are not followed by one; use way 'full-layer' for this architecture.")
    for conv, n in zip(layers.convs, counts):
        if n == 0:
            continue
        module = modules[conv.name]
        bn = modules[conv.bn] if conv.bn is not None else None
        if bn is not None and bn.affine:
            shift, gamma = bn.bias, bn.weight
        elif bn is not None:
            shift, gamma = torch.zeros(conv.filters), torch.ones(conv.filters)
        else:
            shift, gamma = module.bias, None
        masks[conv.name] = kernel_mask(module.weight, int(n), way=way, shift=shift, gamma=gamma, buckets=buckets,
                                       temperature=temperature)
    return masks


# -- holding the masks -------------------------------------------------------------------

def _expanded(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    out = {}
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        out[name] = weight, mask.to(weight.device)[:, :, None, None]
    return out


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked kernels of ``model`` in place (exactly 0, whatever the weights held)."""
    _zero(_expanded(model, masks))


@torch.no_grad()
def _zero(expanded: Mapping[str, tuple[nn.Parameter, torch.Tensor]]) -> None:
    for weight, mask in expanded.values():
        weight.masked_fill_(~mask, 0.0)


def hold_masks(model: nn.Module, optimizer: torch.optim.Optimizer, masks: Mapping[str, torch.Tensor]) -> list[Any]:
    """Keep the masked kernels at exactly zero while ``optimizer`` trains ``model``.

    Their gradients are zeroed (so momentum never builds up for them) and the
    mask is re-applied after every optimizer step. Returns the hook handles:
    call ``.remove()`` on each when training ends.
    """
    expanded = _expanded(model, masks)  # on the weights' device once, not at every step
    handles = [weight.register_hook(lambda g, mask=mask: g.masked_fill(~mask, 0.0))
               for weight, mask in expanded.values()]
    handles.append(optimizer.register_step_post_hook(lambda *_: _zero(expanded)))
    return handles
