"""`autoprune report RUN` and `autoprune compare RUN ...`: Markdown and self-contained HTML with PNG plots."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

from .._io import write_bytes
from .._table import format_table, markdown_table
from ..errors import AutopruneError
from ._plots import curves_figure, ratios_figure, tradeoff_figure
from ._run import EPISODES, EVALUATIONS, Row, RunView, read_run

__all__ = ["write_report", "compare", "table_rows", "tradeoff_points", "HEADERS"]

# The search's own table puts uniform-L1 beside every pick (result.json's "uniform"); so does the report.
HEADERS = ["policy", "target", "MACs kept", "params kept", "holdout %", "test %", "uniform-L1 holdout %",
           "uniform-L1 test %", "fine-tuned holdout %", "fine-tuned test %"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The cells of ``rows`` under ``HEADERS``; "-" where a figure was not measured."""
    return [(r.label, "-" if r.target is None else f"{r.target:g}", f"{r.macs:.3f}", f"{r.params:.3f}",
             _pct(r.holdout), _pct(r.test), _pct(r.uniform_holdout), _pct(r.uniform_test), _pct(r.finetuned_holdout),
             _pct(r.finetuned_test)) for r in rows]


def _html(title: str, notes: Sequence[str], headers: Sequence[str], rows: Sequence[Sequence[str]],
          images: Sequence[Path]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    pictures = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></p>'
                       for p in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
            + "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + f"</tr>{cells}</table>"
            + pictures + "</body></html>")


def _notes(view: RunView) -> list[str]:
    notes = [f"{view.kind} of {view.arch} on {view.dataset}, {view.path}"]
    if view.partial:
        notes.append("PARTIAL: this run has not finished (or was interrupted); the report shows what exists so far.")
    if view.kind == "search":
        if view.episodes:
            notes.append(f"{len(view.episodes)} episodes ({EPISODES}).")
        notes.append(f"{view.evaluations} evaluations ({EVALUATIONS})." if view.evaluations is not None else
                     "evaluations: counted in result.json when the run finishes.")
    wall = view.wall
    if wall is not None and wall.source == "result.json":
        notes.append(f"wall time {wall.seconds / 60:.1f} min: started {wall.started:%Y-%m-%d %H:%M:%S}, "
                     f"finished {wall.finished:%Y-%m-%d %H:%M:%S} (result.json).")
    elif wall is not None:
        notes.append(f"wall time at least {wall.seconds / 60:.1f} min: log.txt's first to last line (the run did not "
                     "record its start and end; its log begins after the start, a search's at its first checkpoint "
                     "or later).")
    return notes


def tradeoff_points(view: RunView) -> list[tuple[str, list[Row]]]:
    """The labelled rows the report's trade-off plot draws (each split into series by split there)."""
    if view.kind == "sweep":  # one line per agent; cells are named <agent>-t<target>
        agents = sorted({r.label.rsplit("-t", 1)[0] for r in view.rows})
        return [(a, [r for r in view.rows if r.label.rsplit("-t", 1)[0] == a]) for a in agents]
    front = [Row(f"#{r['trial']}", None, float(r["macs_fraction"]), float(r["params_fraction"]),
                 float(r["accuracy"]), None) for r in view.front]
    picks = [r for r in view.rows if not r.exported]
    exported = [r for r in view.rows if r.exported]
    return [(label, rows) for label, rows in (("final picks", picks), ("exported by the agent", exported),
                                              ("Pareto front, reward part", front)) if rows]


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write report.md, report.html and the PNGs into ``run_dir``; returns report.md's path."""
    view = read_run(run_dir)
    out = view.path
    images = [p for p in (ratios_figure(view, out / "report-ratios.png"), curves_figure(view, out / "report-curves.png"))
              if p is not None]
    if len(view.rows) > 1 or view.front:
        background = [(float(r["macs_fraction"]), 100 * float(r["accuracy"])) for r in view.episodes]
        images.append(tradeoff_figure(tradeoff_points(view), out / "report-tradeoff.png", background=background))
    rows = table_rows(view.rows)
    notes = _notes(view)
    title = f"autoprune report: {out.name}"
    md = [f"# {title}", "", *[f"{n}  " for n in notes], "", markdown_table(HEADERS, rows) if rows else
          "(no final policy yet)", ""] + [f"![{p.stem}]({p.name})\n" for p in images]
    text = "\n".join(md)
    write_bytes(out / "report.md", lambda f: f.write(text.encode()))
    page = _html(title, notes, HEADERS, rows, images)
    write_bytes(out / "report.html", lambda f: f.write(page.encode()))
    return out / "report.md"


def compare(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> tuple[str, Path]:
    """One table and one accuracy-against-MACs plot across runs; refuses runs of different datasets."""
    views = [read_run(d) for d in run_dirs]
    datasets = {v.dataset for v in views}
    if len(datasets) > 1:
        which = ", ".join(f"{v.path.name}: {v.dataset}" for v in views)
        raise AutopruneError(f"These runs are on different datasets ({which}); their accuracies are not comparable. "
                             "Compare runs of one dataset.")
    archs = {v.arch for v in views}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in views:
        for r in v.rows:
            rows.append((v.path.name, *table_rows([r])[0], "partial" if v.partial else ""))
    png = tradeoff_figure([(v.path.name, v.rows) for v in views if v.rows], out / "compare.png")
    table = format_table(["run", *HEADERS, ""], rows)
    note = "" if len(archs) == 1 else f"\n(note: several architectures: {', '.join(sorted(archs))})"
    text = table + note
    write_bytes(out / "compare.md", lambda f: f.write((markdown_table(["run", *HEADERS, ""], rows) + note
                                                        + f"\n\n![compare]({png.name})\n").encode()))
    return text, png
