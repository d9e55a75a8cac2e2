"""Independent batches through a model side by side, each worker a CPU thread running one intra-op thread.

On a CPU, the forward pass of a pruned CIFAR network over one batch leaves its intra-op threads short of
work: its layers are 3-64 channels wide. Batches that do not depend on each other (an evaluation; a BN
recalibration, whose cumulative average is a mean over batches) go faster side by side: the evaluation of
uneven resnet56 policies (recalibrate, then score 1,000 images) was 1.14x faster with two one-thread workers
than in one two-thread pass (scripts/bench_engine.py, interleaved). Torch releases the GIL in its
kernels, so threads suffice; the model is shared read-only, or copied per worker where it changes state.

Batch ``j`` goes to worker ``j mod k``, in order, so every worker sees the same batches on every run and
the results (and their floating-point sums) do not depend on thread timing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

__all__ = ["side_by_side", "default_workers"]

T = TypeVar("T")
_DONE = object()
_MAX_WORKERS = 8  # beyond this, a batch's activations times the workers costs memory for little speed


def default_workers(device: torch.device) -> int:
    """Workers for ``device``: one per intra-op thread on a CPU (at most 8); one on an accelerator, which runs
    its kernels asynchronously already."""
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS)) if device.type == "cpu" else 1


def side_by_side(items: Iterable[T], work: Callable[[int, T], None], workers: int) -> None:
    """Call ``work(w, item)`` for every item of ``items``, item ``j`` on worker ``w = j mod workers``.

    With one worker it runs in the caller's thread. Otherwise each worker is a thread with one intra-op
    thread and the caller's grad mode; the caller reads ``items`` (so a loader decodes in one place) and
    hands them over through bounded queues, so at most two items per worker wait in memory. The first
    exception of a worker (or of ``items``) is raised here once every worker has stopped.
    """
    if workers <= 1:
        for item in items:
            work(0, item)
        return
    queues = [queue.Queue(maxsize=2) for _ in range(workers)]
    errors: list[BaseException] = []
    failed = threading.Event()
    grad = torch.is_grad_enabled()

    def run(w: int) -> None:
        torch.set_num_threads(1)
        with torch.set_grad_enabled(grad):
            while (item := queues[w].get()) is not _DONE:
                if failed.is_set():
                    continue  # drain, so the reader never blocks on a full queue
                try:
                    work(w, item)
                except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread below
                    errors.append(e)
                    failed.set()

    intra = torch.get_num_threads()
    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        for j, item in enumerate(items):
            if failed.is_set():
                break
            queues[j % workers].put(item)
    except BaseException:  # an interrupt or a failing loader: the workers drop what is queued
        failed.set()
        raise
    finally:
        for q in queues:
            q.put(_DONE)
        for t in threads:
            t.join()
        torch.set_num_threads(intra)  # the workers' setting is also the default of threads started later
    if errors:
        raise errors[0]
