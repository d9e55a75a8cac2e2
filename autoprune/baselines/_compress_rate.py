"""How many kernels DExp masks in each conv: the compress-rate list, or one uniform rate that meets the MACs target.

The native knob is the compress-rate list
    ``compress_rate`` gives one rate per conv, in the seed's form
    ``"[0.0]+[0.4]*17+[0.5]"`` (read by a small parser, never ``eval``) or as a
    list; its length must equal the number of convs. The MACs target is then
    ignored (recorded, with whether the result meets it). Without a list, the
    target is mapped to one uniform rate for every conv from ``start_conv`` on:
    the smallest rate whose honest MAC count (:func:`~._kernel_macs.honest_macs`)
    is at most ``target x`` the unpruned MACs, found by bisection (the count is
    a non-increasing step function of the rate). An unreachable target is
    refused with the lowest reachable fraction.

A conv of ``f`` filters and ``c`` inputs per filter masks ``round(rate x f x c)``
kernels; a rate that would mask every kernel of a conv is refused: it removes the layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from ..errors import AutopruneError, BudgetError
from ._kernel_macs import ConvInfo, Layers, honest_macs

__all__ = ["conv_rates", "mask_count", "parse_compress_rate", "uniform_rate"]

_MAX_RATES = 100_000  # "[0.1]*10**9" must not build a billion-element list

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_TERM = re.compile(rf"\[\s*({_NUMBER})\s*\](?:\s*\*\s*(\d+))?")


def parse_compress_rate(spec: str | Sequence[float]) -> list[float]:
    """Per-conv rates from the seed's string form (``"[0.0]+[0.4]*17+[0.5]"``) or a list of numbers.

    The string is ``[rate]`` or ``[rate]*count`` terms joined by ``+``; only
    digits, ``.``, ``[``, ``]``, ``*``, ``+`` and spaces may appear (it is
    parsed, never evaluated). Every rate must lie in [0, 1).
    """
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise AutopruneError("DExp: compress_rate is empty; give e.g. '[0.0]+[0.4]*19'.")
        rates: list[float] = []
        for term in text.split("+"):
            match = _TERM.fullmatch(term.strip())
            if match is None:
                raise AutopruneError(
                    f"DExp: cannot read the term {term.strip()!r} of compress_rate {spec!r}: write '[rate]' or "
                    "'[rate]*count' terms joined by '+', e.g. '[0.0]+[0.4]*19'; only numbers, '[', ']', '*' and '+' "
                    "are allowed.")
            count = int(match.group(2)) if match.group(2) is not None else 1
            if count < 1 or len(rates) + count > _MAX_RATES:
                raise AutopruneError(f"DExp: the count of {term.strip()!r} in compress_rate must be between 1 and "
                                     f"{_MAX_RATES - len(rates)}, but got {count}.")
            rates += [float(match.group(1))] * count
    elif isinstance(spec, (list, tuple)):
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in spec):
            raise AutopruneError(f"DExp: compress_rate must hold numbers only, but got {list(spec)!r}.")
        rates = [float(r) for r in spec]
    else:
        raise AutopruneError(f"DExp: compress_rate must be a string like '[0.0]+[0.4]*19' or a list of numbers, "
                             f"but got {spec!r}.")
    bad = [r for r in rates if not 0 <= r < 1]
    if bad:
        raise AutopruneError(f"DExp: every compress rate must lie in [0, 1) (1 would remove a whole layer), but got "
                             f"{bad[0]!r}.")
    return rates


def conv_rates(rates: Sequence[float], layers: Layers, arch: str = "the model") -> np.ndarray:
    """``rates`` as an array, after checking there is exactly one per conv of ``layers``."""
    if len(rates) != len(layers.convs):
        raise AutopruneError(
            f"DExp: compress_rate has {len(rates)} rates but {arch} has {len(layers.convs)} convolutions; give one "
            f"rate per conv, in forward order: {', '.join(layers.names)}.")
    return np.asarray(rates, dtype=np.float64)


def mask_count(rate: float, conv: ConvInfo) -> int:
    """``round(rate x f x c)`` (halves up): the kernels to mask; refuses a count that masks the whole layer."""
    n = math.floor(rate * conv.kernels + 0.5)
    if n >= conv.kernels:
        raise AutopruneError(
            f"DExp: compress rate {rate} masks all {conv.kernels} kernels of conv {conv.name}, removing the layer; "
            f"use a rate below {(conv.kernels - 0.5) / conv.kernels:.4f}.")
    return n


def uniform_rate(layers: Layers, start_conv: int, target: float, base: int | None = None) -> float:
    """The smallest rate that, applied to every conv from ``start_conv`` on, keeps at most ``target x base`` MACs.

    Bisection on the honest count (a non-increasing step function of the
    rate), up to the largest rate that leaves every conv one kernel.
    """
    if not 0 < target <= 1:
        raise BudgetError(f"DExp: the MACs target must lie in (0, 1], but got target={target}.")
    prunable = layers.convs[start_conv:]
    if not prunable:
        raise AutopruneError(f"DExp: start_conv={start_conv} leaves no conv to prune (the model has "
                             f"{len(layers.convs)} convs).")
    base = honest_macs(layers, {}) if base is None else base
    weight = np.array([c.kk * c.hw for c in prunable], dtype=np.float64)
    kernels = np.array([c.kernels for c in prunable], dtype=np.float64)

    def macs(rate: float) -> float:
        return base - float(weight @ np.floor(rate * kernels + 0.5))

    goal = target * base
    high = float(np.min((kernels - 0.5) / kernels)) - 1e-9  # every conv keeps at least one kernel
    if macs(0.0) <= goal:
        return 0.0
    if macs(high) > goal:
        raise BudgetError(
            f"DExp cannot reach target={target}: masking all but about one kernel of every conv from start_conv="
            f"{start_conv} on still keeps {macs(high) / base:.4f} of the MACs (earlier convs and linear layers are "
            "never masked); raise the target or lower start_conv.")
    low = 0.0
    for _ in range(60):
        mid = (low + high) / 2
        if macs(mid) <= goal:
            high = mid
        else:
            low = mid
    return high
