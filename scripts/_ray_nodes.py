"""A real multi-node Ray cluster on this machine, for ``tests/test_cluster.py`` and ``scripts/bench_cluster.py``.

Every node is its own ``ray start`` (its own raylet, object store and temp
dir; the head with the GCS), joined through a loopback address, with 1 CPU,
no GPU, a small object store and no dashboard. Ray's ``ray stop`` would end
every Ray process of this user on the machine, other people's clusters
included, so a node is stopped by process id instead: each ``ray start`` runs
with a tag in its environment (``AUTOPRUNE_RAY_NODE=<its temp dir>``), which
every process it starts inherits, and :meth:`LocalCluster.stop` ends exactly
the processes carrying that tag (SIGTERM, then SIGKILL after a grace period).

Token authentication (Ray >= 2.5x) is on, with a token file of the cluster's
own: every ``ray start`` and every driver gets ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` (:meth:`LocalCluster.env`); a machine whose
``~/.ray/auth_token`` exists would otherwise start a token-protected head that
plain workers cannot join.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TAG = "AUTOPRUNE_RAY_NODE"


def free_port() -> int:
    """A TCP port nothing listens on now (closed again before Ray takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start`` of the cluster: its name, temp dir (also its tag) and whether it was stopped."""

    name: str
    temp_dir: Path
    stopped: bool = False


class LocalCluster:
    """A head and workers started with ``ray start`` under ``root``; :meth:`close` stops all of them, by process id.

    Args:
        root: a fresh folder for the nodes' temp dirs and the token (short: Ray's socket paths are length-limited).
        pythonpath: PYTHONPATH of every node's processes (where they import autoprune from); None: this process's.
        timeout: seconds any ``ray start`` may take.
    """

    def __init__(self, root: Path, pythonpath: str | None = None, timeout: float = 90.0) -> None:
        self.root, self.timeout = root, timeout
        self.pythonpath = os.environ.get("PYTHONPATH", "") if pythonpath is None else pythonpath
        self.port = free_port()
        self.nodes: list[Node] = []
        self.ids: dict[str, str] = {}  # node name -> Ray node id, as :meth:`node_ids` last read them
        root.mkdir(parents=True, exist_ok=True)
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)

    @property
    def address(self) -> str:
        """The head's GCS address, as ``--ray-address`` takes it."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a driver of this cluster needs in its environment (the token), on top of os.environ."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token), "RAY_USAGE_STATS_ENABLED": "0"}

    def start_head(self) -> Node:
        """Start the head node (the GCS at :attr:`address`)."""
        return self._start("head", ["--head", "--port", str(self.port), "--ray-client-server-port", str(free_port()),
                                    "--dashboard-port", str(free_port()), "--include-dashboard=false"])

    def add_worker(self, name: str, pythonpath: str | None = None, prefix: Sequence[str] = ()) -> Node:
        """Start a worker node joining the head; ``prefix`` wraps ``ray start`` (e.g. ``unshare -m ...``)."""
        return self._start(name, ["--address", self.address], pythonpath, prefix)

    def _start(self, name: str, args: list[str], pythonpath: str | None = None, prefix: Sequence[str] = ()) -> Node:
        node = Node(name, self.root / name)
        node.temp_dir.mkdir()
        self.nodes.append(node)  # before starting: a start that fails half-way is still stopped by close()
        env = {**os.environ, **self.env(), TAG: str(node.temp_dir),
               "PYTHONPATH": self.pythonpath if pythonpath is None else pythonpath}
        command = [*prefix, sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--num-cpus", "1",
                   "--num-gpus", "0", "--object-store-memory", str(80 * 2**20),
                   "--disable-usage-stats", "--temp-dir", str(node.temp_dir)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode:
            raise RuntimeError(f"ray start ({name}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return node

    def node_ids(self) -> dict[str, str]:
        """The live nodes' Ray ids by node name (asked of the GCS from a short-lived driver)."""
        probe = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR'); "
                 "print(json.dumps([(n['NodeID'], n['RayletSocketName']) for n in ray.nodes() if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", probe % self.address], env={**os.environ, **self.env()},
                              capture_output=True, text=True, timeout=self.timeout, check=True)
        found = json.loads(done.stdout.strip().splitlines()[-1])
        self.ids = {node.name: nid for node in self.nodes for nid, socket_name in found
                    if socket_name.startswith(str(node.temp_dir) + os.sep)}
        return self.ids

    def pids(self, node: Node) -> list[int]:
        """The processes that carry ``node``'s tag: everything its ``ray start`` started, Ray workers included."""
        found = []
        want = f"{TAG}={node.temp_dir}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if want in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:  # gone, or not ours
                    pass
        return found

    def stop(self, node: Node, grace: float = 5.0) -> None:
        """End every process of ``node`` (a node lost: its raylet, object store and trial workers die)."""
        node.stopped = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids(node):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(p) for p in self.pids(node)):
                time.sleep(0.1)

    def close(self) -> None:
        """Stop every node, workers first."""
        for node in reversed(self.nodes):
            self.stop(node)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie, killed but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class Progress:
    """How far a sweep cell's fine-tune is, from its own log (written by the trial on the shared filesystem at
    once; Tune's result.json reaches the experiment folder only when the driver syncs it)."""

    pid: int | None  # the process of its latest attempt
    epochs: int  # epoch lines logged (epoch 0 is the evaluation before training)
    done: bool


def progress(sweep: Path, cell: str) -> Progress:
    """The fine-tune progress of ``cell`` of the sweep in ``sweep``."""
    path = sweep / cell / "finetune" / "log.txt"
    text = path.read_text() if path.is_file() else ""
    pids = re.findall(r"\(pid (\d+) on ", text)
    return Progress(int(pids[-1]) if pids else None, len(re.findall(r" epoch \d+:", text)), " done: " in text)


class NodeKiller(threading.Thread):
    """Stops ``node`` (every process of it) as soon as a sweep cell running there has finished a fine-tune epoch
    with more to come: a node lost in the middle of a trial.

    ``victim`` is that cell's name once it happened; :meth:`cancel` ends the watch.
    """

    def __init__(self, cluster: LocalCluster, node: Node, sweep: Path, cells: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node, self.sweep, self.cells = cluster, node, sweep, cells
        self.victim: str | None = None
        self._cancelled = threading.Event()

    def run(self) -> None:
        while not self._cancelled.is_set():
            for cell in self.cells:
                now = progress(self.sweep, cell)
                if now.epochs >= 2 and not now.done and now.pid in self.cluster.pids(self.node):
                    self.victim = cell
                    self.cluster.stop(self.node)
                    return
            self._cancelled.wait(0.05)

    def cancel(self) -> None:
        self._cancelled.set()
        self.join(30)
