"""The report's figures (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._run import Row, RunView

__all__ = ["ratios_figure", "curves_figure", "tradeoff_figure"]


def _pyplot():  # noqa: ANN202
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def ratios_figure(view: RunView, path: Path) -> Path | None:
    """Keep ratio per group as bars, the uniform policy's at the same MACs as a line; a panel per target."""
    if not view.policies:
        return None
    from ..models import create
    from ..pruning import space_for, uniform_counts

    plt = _pyplot()
    first = next(iter(view.policies.values()))
    space = space_for(create(first.arch, num_classes=first.num_classes).eval(), first.arch, first.space)
    channels = space.channels
    targets = sorted(view.policies)
    fig, axes = plt.subplots(len(targets), 1, figsize=(max(6, 0.3 * len(channels)), 2.6 * len(targets)),
                             squeeze=False)
    for ax, target in zip(axes[:, 0], targets):
        policy = view.policies[target]
        kept = np.array([len(policy.channels[n]) for n in space.names]) / channels
        uniform = uniform_counts(space, policy.macs_fraction) / channels
        x = np.arange(len(channels))
        ax.bar(x, kept, color="C0", label="kept")
        ax.step(x, uniform, where="mid", color="C3", label="uniform at the same MACs")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("keep ratio")
        ax.set_title(f"target {target:g}: {policy.macs_fraction:.1%} of the MACs kept")
        ax.set_xticks(x, space.names, rotation=90, fontsize=6)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(view: RunView, path: Path) -> Path | None:
    """Reward and holdout accuracy against episode (trial), the best so far drawn over the raw points."""
    if not view.episodes:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    targets = sorted({float(r["target"]) for r in view.episodes})
    for i, target in enumerate(targets):
        rows = [r for r in view.episodes if float(r["target"]) == target]
        x = np.array([int(r["episode"]) for r in rows])
        for ax, key in zip(axes, ("reward", "accuracy")):
            y = np.array([float(r[key]) for r in rows])
            ax.scatter(x, y, s=6, color=f"C{i}", alpha=0.35)
            ax.plot(x, np.maximum.accumulate(y), color=f"C{i}", label=f"target {target:g}")
    for ax, label in zip(axes, ("reward", "holdout accuracy (reward part)")):
        ax.set_xlabel("episode")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_figure(points: Sequence[tuple[str, Sequence[Row]]], path: Path, *,
                    background: Sequence[tuple[float, float]] = ()) -> Path:
    """Accuracy against MACs kept: one series per label (test where measured, else holdout)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if background:
        ax.scatter(*zip(*background), s=6, color="0.75", label="episodes (holdout, reward part)")
    for i, (label, rows) in enumerate(points):
        xy = sorted((r.macs, 100 * (r.finetuned_test or r.test or r.holdout or 0.0)) for r in rows)
        ax.plot(*zip(*xy), "o-", color=f"C{i}", label=label)
        for (x, y), r in zip(xy, sorted(rows, key=lambda r: r.macs)):
            ax.annotate(r.label, (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("MACs kept (fraction)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("lines: test after fine-tuning, else test, else holdout", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
