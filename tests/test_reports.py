"""Reports and comparisons of small finished runs: files, decodable non-blank plots, the run's numbers, errors.

Also what a newcomer met (issue 19): the counts each defined once, the recorded wall time, the uniform-L1
columns, no line joining two splits in the trade-off plot, the keep-ratio legend off the bars.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import episode_rows, search_config
from PIL import Image

from autoprune.errors import AutopruneError
from autoprune.reports import compare, read_run, write_report
from autoprune.reports._plots import SPLITS, draw_ratios, tradeoff_figure, tradeoff_series
from autoprune.reports._report import HEADERS, table_rows, tradeoff_points
from autoprune.reports._report import _notes as report_notes
from autoprune.reports._run import EPISODES, EVALUATIONS, Row
from autoprune.search import export_policy, search


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cacp"
    search(search_config(tiny, "cacp", episodes=2), run)
    return run


def test_report_of_a_finished_run(finished):
    md = write_report(finished)
    text = md.read_text()
    assert (finished / "report.html").stat().st_size > 10_000  # the PNGs are inlined
    pictures = sorted(finished.glob("report-*.png"))
    assert [p.name for p in pictures] == ["report-curves.png", "report-ratios.png", "report-tradeoff.png"]
    for p in pictures:
        pixels = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert pixels.std() > 5  # drawn on, not blank
        assert f"({p.name})" in text
    for target in (0.3, 0.5, 0.7):
        policy = json.loads((finished / f"policy-{target:g}.json").read_text())
        assert f"| {policy['macs'] / policy['base_macs']:.3f} |" in text
        assert f"| {100 * policy['accuracy']['test']:.2f} |" in text
    assert "PARTIAL" not in text


def test_a_partial_run_is_reported_as_such_and_a_non_run_refused(finished, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "episodes.csv", "log.txt"):
        shutil.copy(finished / name, partial / name)
    assert "PARTIAL" in write_report(partial).read_text()
    with pytest.raises(AutopruneError, match="is not an autoprune run"):
        write_report(tmp_path)


def test_compare_tables_runs_and_refuses_other_datasets(finished, tmp_path):
    table, png = compare([finished, finished], tmp_path)
    assert table.count("cacp @ 0.5") == 2 and png.stat().st_size > 1000
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    for f in other.glob("policy*.json"):
        data = json.loads(f.read_text())
        data["dataset"] = "cifar100"
        f.write_text(json.dumps(data))
    with pytest.raises(AutopruneError, match="different datasets"):
        compare([finished, other], tmp_path)


@pytest.fixture(scope="module")
def report(finished):
    """report.md of the finished run, rendered once for the tests that read it (each render costs seconds)."""
    return write_report(finished).read_text()


def _copy(finished, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(finished, run)
    return run


def _result(run, **changes):
    """Rewrite the run's result.json with ``changes`` (a key given None is removed)."""
    data = json.loads((run / "result.json").read_text())
    data.update(changes)
    (run / "result.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def _notes(run) -> str:
    """The report's notes on ``run`` (what write_report puts above the table), without drawing the figures."""
    return "\n".join(report_notes(read_run(run)))


def test_episodes_and_evaluations_are_each_counted_once_as_defined(finished, report, tmp_path):
    rows = episode_rows(finished)
    evaluations = json.loads((finished / "result.json").read_text())["evaluations"]
    assert f"{len(rows)} episodes ({EPISODES})." in report
    assert f"{evaluations} evaluations ({EVALUATIONS})." in report
    assert "distinct evaluations" not in report and report.count(" evaluations (") == 1
    run = _copy(finished, tmp_path)  # the figure is result.json's, not one recounted from episodes.csv
    _result(run, evaluations=4321)
    assert f"4321 evaluations ({EVALUATIONS})." in _notes(run)
    (run / "result.json").unlink()  # an unfinished run has no count of evaluations yet, and says so
    assert "evaluations: counted in result.json when the run finishes." in _notes(run)
    assert f"{len(rows)} episodes" in _notes(run)


def test_wall_time_is_the_recorded_start_to_end_else_the_log_s_labelled_as_a_lower_bound(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _result(run, started="2031-04-02T10:00:00+02:00", finished="2031-04-02T10:35:48+02:00")
    assert "wall time 35.8 min: started 2031-04-02 10:00:00, finished 2031-04-02 10:35:48 (result.json)." in _notes(run)
    _result(run, started=None, finished=None)  # a run from before the writer recorded them
    (run / "log.txt").write_text("2031-04-02 10:02:24 checkpoint after episode 10\n2031-04-02 10:35:48 final\n")
    notes = _notes(run)
    assert "wall time at least 33.4 min: log.txt's first to last line" in notes and "(result.json)" not in notes
    _result(run, started="2031-04-02T10:35:48", finished="2031-04-02T10:00:00")  # inconsistent: not believed
    assert "wall time at least 33.4 min" in _notes(run)
    _result(run, started="2031-04-02T08:00:00Z", finished="2031-04-02T10:35:48+02:00")  # UTC as "Z": 35.8 min
    assert "wall time 35.8 min: started 2031-04-02 10:00:00, finished 2031-04-02 10:35:48" in _notes(run)


def test_the_table_has_the_uniform_l1_columns_of_the_search_s_own_table(finished, report):
    uniform = json.loads((finished / "result.json").read_text())["uniform"]
    assert "| " + " | ".join(HEADERS) + " |" in report
    for target, reference in uniform.items():
        line = next(line for line in report.splitlines() if line.startswith(f"| cacp @ {target} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[HEADERS.index("uniform-L1 holdout %")] == f"{100 * reference['holdout']:.2f}"
        assert cells[HEADERS.index("uniform-L1 test %")] == f"{100 * reference['test']:.2f}"


def test_the_tradeoff_plot_never_joins_figures_of_two_splits(finished, tmp_path):
    run = _copy(finished, tmp_path)
    exported = export_policy(run, 0.4)  # the agent's answer at a new target, between the picks
    view = read_run(run)
    series = tradeoff_series(tradeoff_points(view))
    rows = {r.label: r for r in view.rows}
    for s in series:  # every point of a line is a figure of the split the line is labelled with
        for _, accuracy, name in s.points:
            row = rows[name]
            figure = {"test after fine-tuning": row.finetuned_test, "test": row.test, "holdout": row.holdout}[s.split]
            assert accuracy == pytest.approx(100 * figure)
    split = "test" if "test" in exported.accuracy else "holdout"
    assert [(s.legend, len(s.points)) for s in series] == [("final picks (test)", 3),
                                                           (f"exported by the agent ({split})", 1)]
    assert set(SPLITS) == {"test after fine-tuning", "test", "holdout"}
    assert ("cacp @ 0.4 (exported)", "0.4") in [cells[:2] for cells in table_rows(view.rows)]
    assert tradeoff_figure(tradeoff_points(view), tmp_path / "t.png").stat().st_size > 1000


def test_rows_of_two_splits_under_one_label_make_two_lines():
    rows = [Row("cacp @ 0.3", 0.3, 0.30, 0.4, 0.4301, 0.4895), Row("cacp @ 0.45", 0.45, 0.45, 0.5, 0.4746, None),
            Row("cacp @ 0.5", 0.5, 0.50, 0.6, 0.6120, 0.6764), Row("tuned", 0.7, 0.70, 0.8, 0.8, 0.85, 0.9, 0.91),
            Row("unmeasured", 0.6, 0.60, 0.7, None, None)]
    series = tradeoff_series([("final picks", rows)])
    assert [(s.legend, [name for _, _, name in s.points]) for s in series] == [
        ("final picks (test after fine-tuning)", ["tuned"]), ("final picks (test)", ["cacp @ 0.3", "cacp @ 0.5"]),
        ("final picks (holdout)", ["cacp @ 0.45"])]
    assert series[2].points[0][:2] == (0.45, pytest.approx(47.46))


def test_the_keep_ratio_legend_covers_no_panel(finished):
    fig = draw_ratios(read_run(finished))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(fig.axes) == 3 and len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:  # neither the bars nor the panel's title
        assert not box.overlaps(ax.get_window_extent(renderer))
        assert not box.overlaps(ax.title.get_window_extent(renderer))


def test_a_cell_s_fine_tuned_figures_sit_on_the_row_of_the_target_it_fine_tuned(finished, tmp_path):
    sweep = tmp_path / "sweep"  # a sweep whose one cell ran cacp for 0.5: three policies, one fine-tuned
    search_dir = _copy(finished, sweep / "cacp-t0.5", "search")
    tuned_dir = sweep / "cacp-t0.5" / "finetune"
    tuned_dir.mkdir()
    shutil.copy(finished / "policy-0.5.json", tuned_dir / "policy.json")
    (tuned_dir / "result.json").write_text(json.dumps({"holdout_top1": 0.8125, "test_top1": 0.875}))
    (sweep / "config.yaml").write_text(yaml.safe_dump({"experiment": "sweep", "sweep": {"arch": "resnet20"},
                                                       "cells": {"cacp-t0.5": {"target": 0.5}}}))
    tuned = {r.target: (r.finetuned_holdout, r.finetuned_test) for r in read_run(search_dir).rows}
    assert tuned == {0.3: (None, None), 0.5: (0.8125, 0.875), 0.7: (None, None)}
    (row,) = read_run(sweep).rows  # the sweep's row is the cell's target's policy, not the first file's
    policy = json.loads((finished / "policy-0.5.json").read_text())
    assert (row.macs, row.test, row.finetuned_test) == (pytest.approx(policy["macs"] / policy["base_macs"]),
                                                        policy["accuracy"]["test"], 0.875)
    uniform = json.loads((finished / "result.json").read_text())["uniform"]["0.5"]
    assert (row.uniform_holdout, row.uniform_test) == (uniform["holdout"], uniform["test"])
