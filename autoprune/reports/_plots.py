"""The report's figures (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._run import Row, RunView

__all__ = ["ratios_figure", "curves_figure", "tradeoff_figure", "tradeoff_series", "Series", "SPLITS"]

# The splits an accuracy of a row can come from, best first, with how each is drawn. A line joins the
# figures of one split only: a holdout figure between test figures would draw a dip that does not exist.
SPLITS = {"test after fine-tuning": "o-", "test": "s--", "holdout": "^:"}


def _pyplot():  # noqa: ANN202
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def ratios_figure(view: RunView, path: Path) -> Path | None:
    """Keep ratio per group as bars, the uniform policy's at the same MACs as a line; a panel per target."""
    fig = draw_ratios(view)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def draw_ratios(view: RunView) -> Any:
    """The figure of :func:`ratios_figure` (a matplotlib Figure, for tests to measure), or None.

    The legend sits above the panels, outside every axes: inside one it covered the bars of the last
    stage, the groups a low target prunes hardest.
    """
    if not view.policies:
        return None
    from ..models import ModelSpec, create, replay_spec
    from ..pruning import space_for, uniform_counts

    first = next(iter(view.policies.values()))
    spec = first.model_spec
    if not spec.is_zoo:  # a user's model is rebuilt only as the run's own command named it (as --resume does)
        named = view.config.get("model")
        if not named or spec.kind == "object":
            return None
        spec = replay_spec(spec, ModelSpec.from_dict(named), what=f"The policies of {view.path}")
    plt = _pyplot()
    space = space_for(create(spec).eval(), spec, first.space)
    channels = space.channels
    targets = sorted(view.policies)
    height = 2.6 * len(targets) + 0.3  # 0.3 inch for the legend strip on top
    fig, axes = plt.subplots(len(targets), 1, figsize=(max(6, 0.3 * len(channels)), height), squeeze=False)
    for ax, target in zip(axes[:, 0], targets):
        policy = view.policies[target]
        kept = policy.counts(space.names) / channels
        uniform = uniform_counts(space, policy.macs_fraction) / channels
        x = np.arange(len(channels))
        ax.bar(x, kept, color="C0", label="kept")
        ax.step(x, uniform, where="mid", color="C3", label="uniform at the same MACs")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("keep ratio")
        source = " (exported by the agent)" if "exported_from" in policy.provenance else ""
        ax.set_title(f"target {target:g}{source}: {policy.macs_fraction:.1%} of the MACs kept")
        ax.set_xticks(x, space.names, rotation=90, fontsize=6)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
    return fig


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


@dataclass(frozen=True)
class Series:
    """One line of the trade-off plot: rows of one label whose figures all come from one split.

    Attributes:
        label: the caller's label (a run, an agent, "final picks").
        split: a key of ``SPLITS``.
        points: (MACs kept, accuracy %, row label), by MACs.
    """

    label: str
    split: str
    points: list[tuple[float, float, str]]

    @property
    def legend(self) -> str:
        """The legend entry: the label and, always, the split, so no reader takes a holdout for a test figure."""
        return f"{self.label} ({self.split})"


def _figure(row: Row) -> tuple[str, float] | None:
    """The split and accuracy a row is plotted with: the best measured, or None when it has none."""
    for split, value in (("test after fine-tuning", row.finetuned_test), ("test", row.test), ("holdout", row.holdout)):
        if value is not None:
            return split, value
    return None


def tradeoff_series(points: Sequence[tuple[str, Sequence[Row]]]) -> list[Series]:
    """The lines of :func:`tradeoff_figure`: each label split by the split its rows' figures come from.

    A row is plotted with its best figure (test after fine-tuning, else test, else holdout), and rows of
    one label with different splits become separate series, never one line; rows without any figure are
    left out rather than drawn at zero.
    """
    series = []
    for label, rows in points:
        by_split: dict[str, list[tuple[float, float, str]]] = {}
        for r in rows:
            figure = _figure(r)
            if figure is not None:
                by_split.setdefault(figure[0], []).append((r.macs, 100 * figure[1], r.label))
        series += [Series(label, split, sorted(by_split[split])) for split in SPLITS if split in by_split]
    return series


def tradeoff_figure(points: Sequence[tuple[str, Sequence[Row]]], path: Path, *,
                    background: Sequence[tuple[float, float]] = ()) -> Path:
    """Accuracy against MACs kept: a colour per label, a line style per split (see :func:`tradeoff_series`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if background:
        ax.scatter(*zip(*background), s=6, color="0.75", label="episodes (holdout, reward part)")
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(label for label, _ in points))}
    for s in tradeoff_series(points):
        x, y, _ = zip(*s.points)
        ax.plot(x, y, SPLITS[s.split], color=colours[s.label], label=s.legend,
                markerfacecolor="none" if s.split == "holdout" else colours[s.label])
        for xi, yi, name in s.points:
            ax.annotate(name, (xi, yi), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("MACs kept (fraction)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("each line joins figures of one split: test after fine-tuning, test or holdout", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
