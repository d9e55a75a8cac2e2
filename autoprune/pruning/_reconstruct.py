"""Feature-map reconstruction (He, Zhang and Sun, ICCV 2017): which of a group's channels its consumers need.

A group's channels are the outputs of one conv and the inputs of its
*consumers*, the convs (or the classifier) that read them. Channel Pruning
samples each consumer's output ``Y`` at a few positions per image and writes
it as one term per input channel,

    Y = sum_i Z_i,   Z_i = X_i W_i^T   (X_i: channel i's k x k input patches, W_i: its weights),

then asks which channels the rest can do without. The LASSO

    min_beta  1/2 ||Y - sum_i beta_i Z_i||^2 / S  +  alpha ||beta||_1

zeroes coefficients one after another as the penalty ``alpha`` grows; a
channel whose coefficient survives a large penalty is one the reconstruction
needs. The consumers' weights on the channels kept are then refit by least
squares, so they make up for the channels removed.

Both steps work on sufficient statistics, so memory does not grow with the
number of samples: per consumer, ``M = X^T X`` and ``B = X^T Y`` over the
group's input patches, in float64. The LASSO's Gram matrix ``<Z_i, Z_j> / S``
and correlations ``<Z_i, Y> / S`` follow from them and the weights, and so
do the normal equations of the refit.

The LASSO path is computed exactly by LARS with the LASSO modification
(Efron, Hastie, Johnstone and Tibshirani 2004) on that c x c Gram matrix: one
small linear solve per channel entering or leaving, no penalty grid and no
tolerance to tune. He et al. raise the penalty until the number of non-zero
coefficients falls to the count; walking the path down from the top and
stopping when the count is reached gives the same set.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import AutopruneError
from ._discover import Group, Member

__all__ = ["Reconstruction", "consumers", "lasso_path", "reconstruction_problems", "sample_features"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def consumers(model: nn.Module, group: Group) -> list[Member]:
    """The modules reading the group's channels; :class:`AutopruneError` unless reconstruction can handle them.

    Each must be a plain (ungrouped, zero-padded) ``Conv2d`` or a ``Linear``, and the channels
    must reach nothing else: a residual group's channels also run through the identity
    shortcuts, whose sums no consumer's reconstruction accounts for.
    """
    if group.kind == "residual":
        raise AutopruneError(
            f"Group {group.name!r} couples a residual stage: its channels also flow through identity shortcuts, which "
            "a reconstruction of the consumers' outputs cannot account for. Reconstruction prunes block-internal "
            "channels only: use a space without residual groups (for CIFAR ResNets, 'inner')."
        )
    found = [m for m in group.members if m.side == "in"]
    if not found:
        raise AutopruneError(f"Group {group.name!r} has no consumer whose output could be reconstructed.")
    for m in found:
        module = model.get_submodule(m.module)
        if isinstance(module, nn.Linear):
            continue
        if not isinstance(module, nn.Conv2d):
            raise AutopruneError(f"Group {group.name!r} feeds {m.module} ({type(module).__name__}), not a Conv2d or "
                                 "Linear: reconstruction regresses a consumer's output on its input channels.")
        if module.groups != 1:
            raise AutopruneError(f"Group {group.name!r} feeds {m.module}, a grouped or depthwise conv (groups="
                                 f"{module.groups}): each of its outputs reads one input channel, nothing to select.")
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise AutopruneError(f"Group {group.name!r} feeds {m.module}, whose padding ({module.padding!r}, "
                                 f"{module.padding_mode}) is not an explicit zero padding.")
    return found


class _Stop(Exception):
    """Ends a forward pass once every sampled module has run."""


def _positions(name: str, batch: int, seed: int, images: int, size: int, points: int) -> np.ndarray:
    """Flat output positions sampled per image: ``points`` distinct ones (all when the map is smaller)."""
    if points >= size:
        return np.tile(np.arange(size), (images, 1))
    rng = np.random.default_rng([seed, batch, zlib.crc32(name.encode())])
    return np.argsort(rng.random((images, size)), axis=1)[:, :points]


def _sample(module: nn.Module, x: torch.Tensor, out: torch.Tensor, pos: np.ndarray | None, inputs: bool
            ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Input patches [S, C, k*k] (None unless ``inputs``) and outputs [S, n] at the sampled positions."""
    if isinstance(module, nn.Linear):
        return (x.reshape(len(x), -1, 1) if inputs else None), out.reshape(len(out), -1)
    dev = out.device
    flat = torch.as_tensor(pos, device=dev)
    b = torch.arange(len(flat), device=dev).repeat_interleave(flat.shape[1])
    wo = out.shape[3]
    oh, ow = (flat // wo).reshape(-1), (flat % wo).reshape(-1)
    y = out[b, :, oh, ow]
    if not inputs:
        return None, y
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, module.dilation, module.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = oh[:, None] * sh + torch.arange(kh, device=dev) * dh
    cols = ow[:, None] * sw + torch.arange(kw, device=dev) * dw
    patches = padded[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [S, kh, kw, C]
    return patches.permute(0, 3, 1, 2).reshape(len(b), x.shape[1], kh * kw), y


def sample_features(
    model: nn.Module, modules: Sequence[str], batches: Batches, *, points: int = 10, seed: int = 0, inputs: bool = True,
) -> Iterator[dict[str, tuple[torch.Tensor | None, torch.Tensor]]]:
    """Per batch, each module's sampled input patches ``x`` [S, C, k*k] and output ``y`` [S, n] (bias included).

    A conv is sampled at ``points`` random output positions per image (every position of a
    smaller map), drawn from ``seed``, the batch's index and the module's name, so every copy
    of the model is sampled at the same places; a linear layer once per image. The model runs
    in eval mode without gradients, and each forward pass stops after the last of ``modules``.
    """
    if points < 1:
        raise AutopruneError(f"points must be at least 1, but got {points=}.")
    wanted = list(dict.fromkeys(modules))
    captured: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    batch = [0]

    def hook(name: str, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pos = None
        if isinstance(module, nn.Conv2d):
            pos = _positions(name, batch[0], seed, out.shape[0], out.shape[2] * out.shape[3], points)
        captured[name] = _sample(module, args[0], out, pos, inputs)
        if len(captured) == len(wanted):
            raise _Stop

    hooks = []
    was_training = model.training
    model.eval()
    try:
        for n in wanted:
            hooks.append(model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: hook(n, m, a, o)))
        for i, (images, _) in enumerate(batches):
            captured.clear()
            batch[0] = i
            try:
                with torch.no_grad():
                    model(images)
            except _Stop:
                pass
            if len(captured) < len(wanted):
                missing = ", ".join(n for n in wanted if n not in captured)
                raise AutopruneError(f"The forward pass never ran {missing}: cannot sample its feature maps.")
            yield dict(captured)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def lasso_path(gram: np.ndarray, corr: np.ndarray, *, stop: int | None = None) -> tuple[np.ndarray, list[int]]:
    """The LASSO path of ``min_b 1/2 b^T G b - corr^T b + alpha ||b||_1``, by LARS with the LASSO modification.

    Walks the penalty down from ``max |corr|`` (where every coefficient is zero) and returns,
    for every coefficient, the penalty at which it first becomes non-zero (0: never, e.g. a
    channel whose contribution is identically zero), and the active set where the walk ended:
    once ``stop`` coefficients are non-zero, or at penalty 0 (the least-squares solution).
    """
    c = len(corr)
    entry = np.zeros(c)
    diag = np.diag(gram).astype(np.float64)
    alive = diag > 1e-12 * max(float(diag.max(initial=0.0)), np.finfo(float).tiny)
    rho = np.asarray(corr, dtype=np.float64).copy()  # correlations with the residual: corr - G b
    if not alive.any() or not np.abs(rho[alive]).max() > 0:
        return entry, []
    alpha = float(np.abs(rho[alive]).max())
    tol = 1e-12 * alpha
    beta = np.zeros(c)
    first = int(np.flatnonzero(alive)[np.argmax(np.abs(rho[alive]))])
    active, entry[first], left = [first], alpha, -1
    ridge = 1e-12 * float(diag.max())
    inverse = _BorderedInverse(gram, ridge, first)
    for _ in range(8 * c + 8):  # c entries plus the (rare) drops; a bound against numerical cycling
        if stop is not None and len(active) >= stop:
            break
        a_idx = np.array(active)
        sign = np.sign(rho[a_idx])
        w = inverse.matrix @ sign
        full = np.zeros(c)
        full[a_idx] = w
        a = gram @ full  # rho moves by -gamma * a; the active ones by -gamma * sign
        gamma, event = alpha, None  # by default the path runs to penalty 0
        cand = alive.copy()
        cand[a_idx] = False
        if cand.any():
            idx = np.flatnonzero(cand)
            with np.errstate(divide="ignore", invalid="ignore"):
                steps = np.stack([(alpha - rho[idx]) / (1 - a[idx]), (alpha + rho[idx]) / (1 + a[idx])])
            steps = np.where(np.isfinite(steps) & (steps > -tol), np.maximum(steps, 0.0), np.inf)
            steps[:, idx == left] = np.where(steps[:, idx == left] > tol, steps[:, idx == left], np.inf)  # no re-entry at once
            k = int(np.argmin(steps.min(0)))
            if steps[:, k].min() < gamma:
                gamma, event = float(steps[:, k].min()), ("in", int(idx[k]))
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_at = np.where(w != 0, -beta[a_idx] / w, np.inf)
        zero_at = np.where(zero_at > 0, zero_at, np.inf)
        k = int(np.argmin(zero_at))
        if zero_at[k] < gamma:
            gamma, event = float(zero_at[k]), ("out", int(a_idx[k]))
        beta[a_idx] += gamma * w
        rho -= gamma * a
        alpha -= gamma
        if event is None or alpha <= tol:
            break
        kind, j = event
        if kind == "in" and not inverse.add(j):
            alive[j] = False  # a copy of active channels' contributions: redundant, never needed
        elif kind == "in":
            active.append(j)
            entry[j] = entry[j] or alpha
            left = -1
        else:
            inverse.remove(active.index(j))
            active.remove(j)
            beta[j], left = 0.0, j
    return entry, active


class _BorderedInverse:
    """The inverse of ``G[A, A] + ridge I`` while the active set ``A`` grows and shrinks by one: O(|A|^2) a change
    instead of a fresh O(|A|^3) solve (LARS makes one change per step), recomputed now and then against drift."""

    def __init__(self, gram: np.ndarray, ridge: float, first: int) -> None:
        self.gram, self.ridge, self.active, self.changes = gram, ridge, [first], 0
        self.matrix = np.array([[1.0 / (gram[first, first] + ridge)]])

    def _refresh(self) -> None:
        self.changes += 1
        if self.changes % 100 == 0:
            a = np.array(self.active)
            self.matrix = np.linalg.inv(self.gram[np.ix_(a, a)] + self.ridge * np.eye(len(a)))

    def add(self, j: int) -> bool:
        """Add ``j`` to the active set; False (nothing added) when its column lies in the span of the active ones."""
        g = self.gram[self.active, j]
        u = self.matrix @ g
        schur = self.gram[j, j] + self.ridge - g @ u
        if schur <= 1e-9 * self.gram[j, j]:
            return False
        self.matrix = np.block([[self.matrix + np.outer(u, u) / schur, -u[:, None] / schur],
                                [-u[None, :] / schur, np.array([[1.0 / schur]])]])
        self.active.append(j)
        self._refresh()
        return True

    def remove(self, pos: int) -> None:
        keep = np.arange(len(self.active)) != pos
        h = self.matrix
        self.matrix = h[np.ix_(keep, keep)] - np.outer(h[keep, pos], h[pos, keep]) / h[pos, pos]
        del self.active[pos]
        self._refresh()


class Reconstruction:
    """The reconstruction problem of one group, accumulated batch by batch.

    Args:
        model: where the consumers' weights are read (for Channel Pruning, the partly pruned copy).
        group: the group; its consumers must pass :func:`consumers`.
        refit: also keep each consumer's normal equations, for :meth:`refit` and :meth:`error`.
    """

    def __init__(self, model: nn.Module, group: Group, *, refit: bool = False) -> None:
        self.group = group
        self.consumers = consumers(model, group)
        self._modules = {m.module: model.get_submodule(m.module) for m in self.consumers}
        self._members = {m.module: m for m in self.consumers}
        self.gram = np.zeros((group.channels, group.channels))
        self.corr = np.zeros(group.channels)
        self.samples = 0
        self._normal: dict[str, list[torch.Tensor | float]] | None = {} if refit else None

    def _weight(self, name: str, device: torch.device) -> torch.Tensor:
        w = self._modules[name].weight.detach()
        return w.to(device, torch.float64).reshape(w.shape[0], w.shape[1], -1)  # [n, C, P]

    def add(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add samples of consumer ``name``: its input patches ``x`` [S, C, P] and the output ``y`` [S, n] to reconstruct."""
        m = self._members[name]
        dev = torch.device("cpu") if x.device.type == "mps" else x.device  # no float64 on MPS
        x, y = x.to(dev, torch.float64), y.to(dev, torch.float64)
        w = self._weight(name, dev)
        bias = self._modules[name].bias
        if bias is not None:
            y = y - bias.detach().to(dev, torch.float64)
        idx = torch.as_tensor(m.index, device=dev)
        others = torch.ones(w.shape[1], dtype=torch.bool, device=dev)
        others[idx] = False
        if others.any():  # inputs from other groups (concatenations): their part of y is not ours to explain
            y = y - torch.einsum("scp,ncp->sn", x[:, others], w[:, others])
        s, n, p = len(x), w.shape[0], w.shape[2]
        xg, wg = x[:, idx].reshape(s, -1), w[:, idx].reshape(n, -1)
        mat, rhs = xg.T @ xg, xg.T @ y
        # <Z_j, Z_j'> = sum over kernel positions p, q of M[jp, j'q] (W^T W)[jp, j'q]; <Z_j, Y> likewise from B
        gram = (mat * (wg.T @ wg)).reshape(len(idx), p, len(idx), p).sum((1, 3)).cpu().numpy()
        corr = (rhs * wg.T).reshape(len(idx), p, n).sum((1, 2)).cpu().numpy()
        onehot = np.zeros((len(idx), self.group.channels))
        onehot[np.arange(len(idx)), m.root] = 1.0  # several inputs of one channel (a flattened map) add up
        self.gram += onehot.T @ gram @ onehot
        self.corr += onehot.T @ corr
        self.samples += s
        if self._normal is not None:
            energy = float((y * y).sum())
            if name in self._normal:
                acc = self._normal[name]
                acc[0], acc[1], acc[2] = acc[0] + mat, acc[1] + rhs, acc[2] + energy
            else:
                self._normal[name] = [mat, rhs, energy]

    def _check(self) -> None:
        if self.samples == 0:
            raise AutopruneError(f"No feature maps were sampled for group {self.group.name!r}.")

    def scores(self) -> np.ndarray:
        """Per channel, the LASSO penalty at which it enters the path (larger: needed more; 0: never)."""
        self._check()
        return lasso_path(self.gram / self.samples, self.corr / self.samples)[0]

    def select(self, k: int) -> np.ndarray:
        """Sorted indices of ``k`` channels: the LASSO's support when ``k`` coefficients are non-zero.

        Should the path end with fewer (channels that contribute nothing), the rest are the lowest indices.
        """
        self._check()
        entry, active = lasso_path(self.gram / self.samples, self.corr / self.samples, stop=k)
        rest = [int(j) for j in np.argsort(-entry, kind="stable") if j not in active]
        return np.sort(np.array((active + rest)[:k], dtype=np.int64))

    def _columns(self, name: str, kept: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kept input channels, dropped input channels, kept rows of M and B) of consumer ``name``."""
        m = self._members[name]
        keep = np.isin(m.root, kept)
        p = self._normal[name][0].shape[0] // len(m.index)
        rows = (np.flatnonzero(keep)[:, None] * p + np.arange(p)).reshape(-1)
        return torch.as_tensor(m.index[keep]), torch.as_tensor(m.index[~keep]), torch.as_tensor(rows)

    def refit(self, kept: np.ndarray) -> dict[str, torch.Tensor]:
        """Each consumer's weight (its shape, dtype and device) refit by least squares on the ``kept`` channels.

        The weights on the group's other channels are zero (they are removed when the policy is
        applied); those on other groups' channels are unchanged.
        """
        if self._normal is None:
            raise AutopruneError("This Reconstruction was built without refit=True.")
        self._check()
        out = {}
        for name, (mat, rhs, _) in self._normal.items():
            w = self._modules[name].weight.detach()
            keep, drop, rows = self._columns(name, kept)
            mat, rhs = mat.cpu(), rhs.cpu()
            sol = torch.linalg.lstsq(mat[rows][:, rows], rhs[rows], driver="gelsd").solution  # [kept * P, n]
            new = w.clone()
            new[:, drop.to(w.device)] = 0
            new[:, keep.to(w.device)] = sol.T.reshape(w.shape[0], len(keep), *w.shape[2:]).to(w.device, w.dtype)
            out[name] = new
        return out

    def error(self, kept: np.ndarray, weights: dict[str, torch.Tensor] | None = None) -> float:
        """Relative squared error ||Y - X_kept W_kept||^2 / ||Y||^2 over the samples, with ``weights``
        (default: the consumers' current weights) on the ``kept`` channels only."""
        if self._normal is None:
            raise AutopruneError("This Reconstruction was built without refit=True.")
        err = total = 0.0
        for name, (mat, rhs, energy) in self._normal.items():
            w = (weights or {}).get(name, self._modules[name].weight.detach())
            keep, _, rows = self._columns(name, kept)
            wk = w.to(mat.device, torch.float64)[:, keep.to(mat.device)].reshape(w.shape[0], -1).T  # [kept * P, n]
            r = rows.to(mat.device)
            fit = float((wk * (mat[r][:, r] @ wk)).sum())
            err += energy - 2.0 * float((wk * rhs[r]).sum()) + fit
            total += energy
        return max(err, 0.0) / total if total > 0 else 0.0


def reconstruction_problems(
    model: nn.Module, groups: Sequence[Group], batches: Batches, *, points: int = 10, seed: int = 0,
) -> dict[str, Reconstruction]:
    """The reconstruction problem of every group of ``groups`` on ``model``'s own feature maps, in one pass per batch."""
    problems = {g.name: Reconstruction(model, g) for g in groups}
    modules = [m.module for p in problems.values() for m in p.consumers]
    for features in sample_features(model, modules, batches, points=points, seed=seed):
        for p in problems.values():
            for m in p.consumers:
                x, y = features[m.module]
                p.add(m.module, x, y)
    return problems
