"""Where and how latency is measured: one frozen settings object, checked where it is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import LatencyError, unknown_name

__all__ = ["LatencySettings", "RUNTIMES", "DEVICES", "DTYPES"]

RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LatencySettings:
    """The setting a latency is measured in; every field is part of a latency table's cache key.

    ``threads`` None means ``torch.get_num_threads()`` when the table is built (:meth:`resolved` fills it
    in, so the key names the number really used). The timing follows the field's habits: ``warmup``
    untimed calls, then ``repeats`` timed calls spread over ``rounds`` interleaved passes (several things
    timed together take turns, a couple of calls each, so a load change on a shared machine hits them all
    alike), reported as the fastest call (the figure predicted and budgeted, see ``Measurement``), the median
    and the 10th and 90th percentiles.
    """

    runtime: str = "torch"
    device: str = "cpu"
    batch: int = 1
    threads: int | None = None
    dtype: str = "float32"
    warmup: int = 10
    repeats: int = 50
    rounds: int = 25

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise unknown_name("latency runtime", self.runtime, RUNTIMES)
        if self.device not in DEVICES:
            raise unknown_name("latency device", self.device, DEVICES)
        if self.dtype not in DTYPES:
            raise unknown_name("latency dtype", self.dtype, DTYPES)
        for name, low in (("batch", 1), ("warmup", 0), ("repeats", 1), ("rounds", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise LatencyError(f"Latency {name} must be an integer of at least {low}, but got {value!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise LatencyError(f"Latency threads must be at least 1 (or None for torch's), but got {self.threads!r}.")
        if self.repeats < self.rounds:
            raise LatencyError(f"Latency repeats ({self.repeats}) must be at least rounds ({self.rounds}): "
                               f"every round times each model at least once.")
        if self.dtype == "float16" and self.device == "cpu":
            raise LatencyError("dtype float16 is for --latency-device cuda; on a CPU use float32 or bfloat16.")
        if self.runtime == "onnxruntime" and self.dtype != "float32":
            raise LatencyError(f"The onnxruntime latency runtime times float32 models only, but got dtype {self.dtype}.")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def resolved(self) -> LatencySettings:
        """These settings with ``threads`` fixed (torch's current number when None)."""
        return self if self.threads is not None else replace(self, threads=torch.get_num_threads())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
