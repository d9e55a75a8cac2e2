"""Where trials run: the Ray options, joining a cluster or starting a local Ray, and the resources a trial may ask.

:func:`ray_session` is the only code that starts and stops Ray for autoprune:
it joins the cluster of ``RayOptions.address`` (or starts a local Ray) unless
this process is already connected, decides ``gpus_per_trial``, and shuts down
a Ray it started when its block ends, also on an error or Ctrl-C; a
connection made by someone else (a test fixture, a Ray worker running a
sweep cell) is left alone. A cluster address is probed first, so a wrong one
fails in seconds with the address in the message. :func:`check_nodes` asks
every node, before any trial, for its autoprune version and the paths the
trials need; :func:`require_paths` repeats the path check inside a trial (a
node that joined later), naming the node.

Ray is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import AutopruneError

__all__ = ["RayOptions", "check_address", "check_nodes", "check_resources", "connect", "node_id", "node_resources",
           "ray_session", "require_paths", "resolve_gpus"]

_SHARED = ("every node needs the data, the checkpoints and the output folder at the same paths (a shared "
           "filesystem) and the same autoprune")


@dataclass(frozen=True)
class RayOptions:
    """Where trials run and with what.

    Attributes:
        address: None (start a local Ray), "auto" (the cluster this machine belongs to), or
            "ray://host:port" / "host:port" of a cluster's head.
        cpus_per_trial: CPUs reserved per trial (also its torch threads).
        gpus_per_trial: GPUs per trial, fractions allowed; None: 1 where the cluster has GPUs, else 0.
        max_failures: retries of a failed trial, each from its last checkpoint.
        asha: stop lagging trials early (ASHA on the metric, one rung step per epoch).
        asha_grace: epochs every trial gets before ASHA may stop it (None: a tenth of the epochs, at least 1).
        max_concurrent: trials at a time (None: as many as the resources allow).
        num_cpus: CPUs a local Ray may use (None: all).
        verbose: Tune's console verbosity (0 silent, 1 status table, 2 every result).
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_failures: int = 2
    asha: bool = False
    asha_grace: int | None = None
    max_concurrent: int | None = None
    num_cpus: int | None = None
    verbose: int = 1

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0:
            raise AutopruneError(f"--cpus-per-trial must be positive, but got {self.cpus_per_trial}.")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise AutopruneError(f"--gpus-per-trial must be at least 0, but got {self.gpus_per_trial}.")
        if self.max_failures < 0:
            raise AutopruneError(f"--max-failures must be at least 0, but got {self.max_failures}.")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise AutopruneError(f"--max-concurrent must be at least 1, but got {self.max_concurrent}.")
        if self.asha_grace is not None and self.asha_grace < 1:
            raise AutopruneError(f"--asha-grace must be at least 1 epoch, but got {self.asha_grace}.")


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens at a cluster address ("auto" is looked up first)."""
    target = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment
            target = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise AutopruneError("--ray-address auto: no running Ray cluster found on this machine (RAY_ADDRESS is "
                                 "unset and `ray start` was not run here). Start one with `ray start --head`, or "
                                 "pass ray://HEAD:10001.") from None
        except (ImportError, AttributeError):  # private API moved: ray.init reports instead
            return
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", target)
    if match is None:
        raise AutopruneError(f"Ray address {address!r} is not of the form ray://HOST:PORT, HOST:PORT or auto.")
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise AutopruneError(f"Cannot reach the Ray cluster at {address} ({host}:{port}: {e}). Is its head running "
                             "(`ray start --head` on it) and the port open from here?") from None


def check_resources(nodes: Sequence[Mapping[str, float]], cpus: float, gpus: float) -> None:
    """Refuse a trial that no node can hold: trials run on one node, so the largest node is the limit."""
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if gpus > most_gpus:
        raise AutopruneError(f"--gpus-per-trial {gpus:g} asks for more GPUs than the cluster has on any node "
                             f"({most_gpus:g} at most); lower it{' or use --gpus-per-trial 0' if not most_gpus else ''}.")
    if cpus > most_cpus:
        raise AutopruneError(f"--cpus-per-trial {cpus:g} asks for more CPUs than any node of the cluster has "
                             f"({most_cpus:g} at most).")


def connect(options: RayOptions) -> bool:
    """Join the cluster (or start a local Ray) unless Ray is up; True when this call did (then ray.shutdown() is
    owed: :func:`ray_session` pairs the two)."""
    import ray

    if ray.is_initialized():
        return False
    if options.address is not None:
        check_address(options.address)
    try:
        if options.address is None:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False)
        else:
            ray.init(address=options.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray"
        if any("InvalidAuthToken" in str(cause) for cause in (e, e.__cause__, e.__context__)):
            raise AutopruneError(f"{where[0].upper()}{where[1:]} refused this process's token (InvalidAuthToken): its "
                                 "head runs with Ray's token authentication. Give this command the cluster's token: "
                                 "RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN_PATH=its token file or the token in "
                                 "~/.ray/auth_token.") from e
        raise AutopruneError(f"Could not start or join {where}: {str(e).splitlines()[0]}") from e
    return True


def node_resources() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster (a trial must fit on one)."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def node_id() -> str:
    """The Ray id of the node this code runs on (results.csv records it per trial)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def require_paths(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Fail at once, naming this node and the path, when this node cannot see one of ``paths`` (run in a trial)."""
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise AutopruneError(f"Ray node {node_id()} ({socket.gethostname()}) cannot see {', '.join(missing)}: "
                             f"{_SHARED}.")


def check_nodes(paths: Iterable[str | os.PathLike[str]] = (), timeout: float = 120.0) -> None:
    """Ask every live node of the connected cluster for its autoprune version and for ``paths``; refuse, naming each
    node and what it lacks, a cluster where a node runs another autoprune (or none) or cannot see a path.

    Run before any trial, so a sweep on a badly set-up cluster fails in seconds, not when its first trial lands on
    the wrong node. The probe is a zero-CPU task pinned to each node, pickled by value (it imports nothing of this
    module), so a node with another autoprune, or without it, still answers.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .._version import __version__

    wanted = sorted({str(Path(p).resolve()) for p in paths})

    def facts(paths: list[str]) -> tuple[str | None, str, list[str]]:
        import os
        import socket
        try:
            from autoprune import __version__ as version
        except ImportError:
            version = None
        return version, socket.gethostname(), [p for p in paths if not os.path.exists(p)]

    probe = ray.remote(num_cpus=0, max_retries=0)(facts)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(wanted)
            for n in nodes]
    ray.wait(refs, num_returns=len(refs), timeout=timeout)
    problems = []
    for node, ref in zip(nodes, refs):
        where = f"Ray node {node['NodeID']} ({node.get('NodeManagerAddress', '?')})"
        try:
            version, host, missing = ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:
            problems.append(f"{where} did not answer within {timeout:g} s")
            continue
        except ray.exceptions.RayError as e:
            problems.append(f"{where} could not run autoprune's check: {str(e).strip().splitlines()[-1]}")
            continue
        if version != __version__:
            problems.append(f"{where} on {host} has {f'autoprune {version}' if version else 'no autoprune'}, "
                            f"this driver autoprune {__version__}")
        problems += [f"{where} on {host} cannot see {p}" for p in missing]
    if problems:
        raise AutopruneError("The Ray cluster is not ready for these trials: " + "; ".join(problems) +
                             f". {_SHARED[0].upper()}{_SHARED[1:]}.")


def resolve_gpus(options: RayOptions) -> RayOptions:
    """``options`` with ``gpus_per_trial`` decided: as given, else 1 where a node of the cluster has a GPU, else 0."""
    if options.gpus_per_trial is not None:
        return options
    return replace(options, gpus_per_trial=1.0 if any(n.get("GPU", 0) > 0 for n in node_resources()) else 0.0)


@contextmanager
def ray_session(options: RayOptions) -> Iterator[RayOptions]:
    """Be connected to Ray inside the ``with`` block, which gets ``options`` with ``gpus_per_trial`` decided.

    Joins the cluster at ``options.address`` (or starts a local Ray) unless this process is connected already, in
    which case that connection is used and left alone. A Ray this call started is shut down when the block ends, also
    on an error or Ctrl-C: a local one stops, a cluster is only disconnected from.
    """
    started = connect(options)
    try:
        yield resolve_gpus(options)
    finally:
        if started:
            import ray
            ray.shutdown()
