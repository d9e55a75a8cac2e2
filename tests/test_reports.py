"""Reports and comparisons of small finished runs: files, decodable non-blank plots, the run's numbers, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import search_config
from PIL import Image

from autoprune.errors import AutopruneError
from autoprune.reports import compare, write_report
from autoprune.search import search


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
