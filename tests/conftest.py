"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and cheap zoo spaces."""

from __future__ import annotations

import csv
import functools
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_zoo import randomise_norms

# README runs the suites with pytest-xdist (`-n auto`): its test processes share the cores, so each gets its share
# of intra-op threads, as do the processes a test starts. Oversubscribed, OpenMP's waiting threads spin: on 2 cores,
# `-n 2` ran the fast suite in 240 s with torch's 2 threads a process, in 118 s with OMP_NUM_THREADS=1 (193 s in
# one process).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _THREADS = max(1, _CPUS // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PRETRAINED_DIR = SHARED / "pretrained" / "cifar10"
CIFAR_DIR = SHARED / "data" / "cifar10"


def require(path: Path) -> Path:
    """Skip the test unless ``path`` (from ../shared beside the checkout) exists."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data/checkpoints live beside the checkout in CI")
    return path


@functools.lru_cache(maxsize=None)
def zoo_space(arch: str, space: str | None = None):
    """A randomly initialised zoo model (BN statistics randomised too) and its PrunableSpace, cached per session."""
    from autoprune.models import create
    from autoprune.pruning import PrunableSpace

    torch.manual_seed(0)
    model = randomise_norms(create(arch).eval())
    return model, PrunableSpace(model, arch, space)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 10-class 32x32 image-folder dataset (8 train, 2 test images a class) and a resnet20 checkpoint."""
    from autoprune.models import create

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in range(10):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"state_dict": create("resnet20").state_dict()}, root / "r20.th")
    return root


def search_config(tiny: Path, agent: str = "ddpg", **overrides):
    """A SearchConfig for the ``tiny`` fixture: resnet20, 20 holdout images, one recalibration batch."""
    from autoprune.search import SearchConfig

    base = dict(arch="resnet20", data_dir=str(tiny / "data"), agent=agent, checkpoint=str(tiny / "r20.th"),
                episodes=6, holdout=20, reward_samples=10, recal_batches=1, recal_batch_size=10, device="cpu")
    return SearchConfig(**{**base, **overrides})


def episode_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's episodes.csv."""
    with open(run / "episodes.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_ray(request, tmp_path_factory):
    """A local 2-CPU Ray for the tests of one module; its workers get the module's functions by value."""
    import ray
    import ray.cloudpickle

    old = os.environ.get("AUTOPRUNE_CACHE")
    os.environ["AUTOPRUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the workers inherit it
    ray.cloudpickle.register_pickle_by_value(request.module)  # workers cannot import a test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("AUTOPRUNE_CACHE")
    else:
        os.environ["AUTOPRUNE_CACHE"] = old


@contextmanager
def tmpfs(path: Path, options: str):
    """A tiny tmpfs mounted at ``path`` (read-only or full disks: chmod does not stop root), or the test skipped."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                       capture_output=True).returncode == 0
    except FileNotFoundError:
        mounted = False
    if not mounted:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: a read-only or full disk needs one (chmod does not stop root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.hookimpl(trylast=True)  # after -m has deselected what it leaves out
def pytest_collection_modifyitems(config, items):
    """The cluster tests need a pytest process of their own (``-m cluster``): Ray keeps the authentication a
    driver first used for the rest of its process, so a local Ray started before or after them in the same
    process is refused by, or refuses, the cluster's token (InvalidAuthToken)."""
    if all(item.get_closest_marker("cluster") for item in items):
        return
    skip = pytest.mark.skip(reason="a Ray cluster test runs in a pytest process of its own: python -m pytest -q -m "
                                   "cluster (Ray keeps a driver's token for the rest of the process)")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)
