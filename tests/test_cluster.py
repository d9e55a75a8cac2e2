"""autoprune on a real two-node Ray cluster on this machine: sweeps spread over both nodes, a worker node lost and a
driver killed mid-sweep, one Optuna study fed from both nodes, and the clear errors of a badly set-up cluster.

The nodes are separate ``ray start`` processes (head and worker, each its own raylet, object store and temp dir,
1 CPU each), joined on the loopback address, started and stopped by this module (scripts/_ray_nodes.py: stopped by
process id, also when a test fails or times out). The drivers are autoprune's own command line, as a user runs it:
in this process (``main``), or as a subprocess where the test kills it.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from autoprune.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _ray_nodes import LocalCluster, NodeKiller, free_port, progress  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TEST_SECONDS = 300  # any one test, the cluster's own start excluded: a hung Ray fails the test, never CI
CELLS = ["uniform-t0.5", "random-t0.5"]
COMPARED = ("agent", "target", "macs_fraction", "epoch", "holdout_top1", "test_top1")


@pytest.fixture(scope="module")
def cluster():
    """Head and one worker node; every node this module starts is stopped at the end, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="apc", dir="/tmp"))  # short: Ray's socket paths are length-limited
    nodes = LocalCluster(root)
    saved = {k: os.environ.get(k) for k in nodes.env()}
    os.environ.update(nodes.env())  # the drivers of this process join with the cluster's token
    try:
        nodes.start_head()
        nodes.add_worker("worker")
        assert set(nodes.node_ids()) == {"head", "worker"}, nodes.ids
        yield nodes
    finally:
        nodes.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        left = [pid for node in nodes.nodes for pid in nodes.pids(node)]
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes of this test still running: {left}"


@pytest.fixture
def deadline():
    """Fail (TimeoutError in the test, then the cluster's teardown) a test that runs past TEST_SECONDS."""
    def expired(signum, frame):
        raise TimeoutError(f"cluster test ran past {TEST_SECONDS} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def sweep_args(tiny: Path, out: Path, *extra: str) -> list[str]:
    """`autoprune sweep` of 2 tiny cells (uniform, and random with 3 episodes, at 0.5), 4 fine-tune epochs."""
    return ["sweep", "--arch", "resnet20", "--checkpoint", str(tiny / "r20.th"), "--data-dir", str(tiny / "data"),
            "--targets", "0.5", "--agents", "uniform", "random", "--episodes", "3", "--finetune-epochs", "4",
            "--preset", "cpu", "--holdout", "20", "--reward-samples", "10", "--recal-batches", "1", "--device", "cpu",
            "--no-report", "--out", str(out), *extra]


def results(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def assert_complete_once(out: Path) -> None:
    """Every cell done, each fine-tune epoch run exactly once and every search episode recorded once."""
    rows = results(out)
    assert list(rows) == CELLS and {r["status"] for r in rows.values()} == {"done"}, rows
    for cell in CELLS:
        with open(out / cell / "finetune" / "metrics.csv", newline="") as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2", "3", "4"], cell
        log = (out / cell / "finetune" / "log.txt").read_text()
        # no epoch trained twice; epoch 0, the starting weights' evaluation, runs again when the driver was killed
        # before epoch 1's checkpoint (the cell then starts over: there is nothing to resume from)
        assert [log.count(f"epoch {e}:") for e in range(1, 5)] == [1] * 4 and log.count("epoch 0:") >= 1, log
        if cell.startswith("random"):
            assert len((out / cell / "search" / "episodes.csv").read_text().splitlines()) == 1 + 3, cell


def assert_same_as(out: Path, serial: Path) -> None:
    """Each cell ends as in the serial run: the same row of results.csv (but the node), the same weights."""
    mine, theirs = results(out), results(serial)
    assert {c: {k: mine[c][k] for k in COMPARED} for c in CELLS} == \
        {c: {k: theirs[c][k] for k in COMPARED} for c in CELLS}
    for cell in CELLS:
        a, b = (torch.load(o / cell / "finetune" / "model.pt", weights_only=True)["state_dict"] for o in (out, serial))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), cell


@pytest.fixture(scope="module")
def serial(cluster, tiny, tmp_path_factory):
    """The reference: the same 4 cells run one at a time (--max-concurrent 1), nothing beside them."""
    out = tmp_path_factory.mktemp("serial") / "sweep"
    assert main(sweep_args(tiny, out, "--ray-address", cluster.address, "--max-concurrent", "1")) == 0
    return out


def test_wrong_address_token_and_resources_no_node_has_fail_clearly(cluster, tiny, tmp_path, capsys, deadline):
    port = free_port()
    start = time.perf_counter()
    assert main(sweep_args(tiny, tmp_path / "a", "--ray-address", f"127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err
    assert f"Cannot reach the Ray cluster at 127.0.0.1:{port}" in err  # main() returned: no traceback
    assert time.perf_counter() - start < 30 and not (tmp_path / "a").exists()
    for flag, value, message in (("--cpus-per-trial", "2", "--cpus-per-trial 2 asks for more CPUs than any node of "
                                                            "the cluster has (1 at most)"),
                                 ("--gpus-per-trial", "1", "--gpus-per-trial 1 asks for more GPUs than the cluster "
                                                           "has on any node (0 at most)")):
        assert main(sweep_args(tiny, tmp_path / "b", "--ray-address", cluster.address, flag, value)) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not (tmp_path / "b").exists()  # nothing started: nothing left to resume
    (tmp_path / "wrong").write_text("0" * 64)  # a driver with another token than the cluster's
    done = subprocess.run([sys.executable, "-c", "import sys; from autoprune.cli import main; sys.exit(main())",
                           *sweep_args(tiny, tmp_path / "c", "--ray-address", cluster.address)],
                          env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong")}, capture_output=True,
                          text=True, timeout=120)
    refused = f"The Ray cluster at {cluster.address} refused this process's token (InvalidAuthToken)"
    assert done.returncode == 2 and refused in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_sweep_spreads_over_both_nodes_and_equals_a_serial_run(cluster, tiny, tmp_path, serial, deadline):
    out = tmp_path / "sweep"
    assert main(sweep_args(tiny, out, "--ray-address", cluster.address)) == 0
    rows = results(out)
    assert {rows[c]["node"] for c in CELLS} == set(cluster.ids.values())  # both nodes ran cells
    assert_same_as(out, serial)
    assert_complete_once(out)


def test_one_optuna_study_fed_from_the_cluster(cluster, tiny, tmp_path, deadline):
    import optuna

    def study(name: str, *ray: str) -> list[optuna.trial.FrozenTrial]:
        storage = f"sqlite:///{tmp_path / name}.db"
        assert main(["search", "--arch", "resnet20", "--checkpoint", str(tiny / "r20.th"), "--data-dir",
                     str(tiny / "data"), "--agent", "tpe", "--target-flops", "0.5", "--episodes", "6", "--holdout",
                     "20", "--reward-samples", "10", "--recal-batches", "1", "--device", "cpu", "--no-report",
                     "--storage", storage, "--study-name", "s", "--out", str(tmp_path / name), *ray]) == 0
        assert optuna.get_all_study_names(storage) == ["s-t0.5"]  # one study (per target), in the given storage
        return optuna.load_study(study_name="s-t0.5", storage=storage).get_trials(deepcopy=False)

    on_ray = study("ray", "--ray", "--workers", "2", "--ray-address", cluster.address)
    alone = study("serial")
    assert len(on_ray) == len(alone) == 6 and sorted(t.number for t in on_ray) == list(range(6))
    assert {t.state for t in on_ray} == {optuna.trial.TrialState.COMPLETE}
    # each trial names its node; which nodes is Tune's choice: two trials start at once (--workers 2), but a reused
    # worker may take every episode when episodes are shorter than the other node's worker start (both nodes took
    # trials in 2 of 4 runs here)
    assert {t.user_attrs["node"] for t in on_ray} <= set(cluster.ids.values())
    rows = (tmp_path / "ray" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # each trial recorded once


def test_a_killed_driver_is_resumed_without_recomputing(cluster, tiny, tmp_path, serial, deadline):
    out = tmp_path / "sweep"
    command = [sys.executable, "-c", "import sys; from autoprune.cli import main; sys.exit(main())"]
    driver = subprocess.Popen([*command, *sweep_args(tiny, out, "--ray-address", cluster.address)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not any(progress(out, c).done for c in CELLS):
            assert driver.poll() is None, "the sweep ended before the test could kill it"
            time.sleep(0.1)
        finished = {c: (out / c / "finetune" / "model.pt").stat().st_mtime_ns for c in CELLS if progress(out, c).done}
        assert set(finished) != set(CELLS), "every cell finished before the driver was killed"
    finally:
        driver.kill()
        driver.wait(30)
    assert main(["sweep", "--resume", str(out), "--ray-address", cluster.address]) == 0
    assert_same_as(out, serial)
    assert_complete_once(out)
    for cell, written in finished.items():  # finished before the kill: restored (Tune may run it again) but not
        assert (out / cell / "finetune" / "model.pt").stat().st_mtime_ns == written  # trained or written again


def test_a_node_with_another_autoprune_or_without_the_data_is_refused_at_once(cluster, tiny, tmp_path, capsys,
                                                                              deadline, monkeypatch):
    import autoprune

    monkeypatch.chdir(tmp_path)  # Ray puts the driver's folder first on every worker's sys.path: not the checkout

    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("a node that cannot see a path needs its own mount namespace (unshare -m, as root)")
    other = tmp_path / "other"
    shutil.copytree(Path(autoprune.__file__).parent, other / "autoprune", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "autoprune" / "_version.py").write_text('__version__ = "0.0.0+other"\n')
    hidden = tmp_path / "hidden"
    shutil.copytree(tiny / "data", hidden / "data")
    # the third node sees an empty tmpfs where the others see hidden/
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
              str(hidden)]
    node = cluster.add_worker("other", pythonpath=str(other), prefix=prefix)
    try:
        other_id = cluster.node_ids()["other"]
        start = time.perf_counter()
        args = sweep_args(tiny, tmp_path / "sweep", "--ray-address", cluster.address)
        args[args.index("--data-dir") + 1] = str(hidden / "data")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert time.perf_counter() - start < 60
        assert f"Ray node {other_id} (" in err and f"has autoprune 0.0.0+other, this driver autoprune " \
            f"{autoprune.__version__}" in err and f"cannot see {hidden / 'data'}" in err, err
        assert cluster.ids["head"] not in err and cluster.ids["worker"] not in err  # the good nodes are not blamed
        assert not (tmp_path / "sweep").exists()
    finally:
        cluster.stop(node)


def test_a_worker_node_lost_mid_sweep_is_retried_on_the_other(cluster, tiny, tmp_path, serial, deadline):
    out = tmp_path / "sweep"
    worker = next(n for n in cluster.nodes if n.name == "worker")
    killer = NodeKiller(cluster, worker, out, CELLS)
    killer.start()
    try:
        assert main(sweep_args(tiny, out, "--ray-address", cluster.address, "--max-failures", "2")) == 0
    finally:
        killer.cancel()
    victim = killer.victim
    assert victim, "no cell of the worker node was caught mid-fine-tune"
    rows = results(out)
    assert_same_as(out, serial)  # the retried cell ends exactly as uninterrupted
    assert_complete_once(out)
    assert rows[victim]["node"] == cluster.ids["head"]
    log = (out / victim / "finetune" / "log.txt").read_text()
    assert "resumed after epoch" in log, log  # from its last checkpoint, not from scratch
    assert "resumed" not in (out / victim / "search" / "log.txt").read_text()  # its finished search was kept
