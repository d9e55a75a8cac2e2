"""The runtimes a latency is measured in: PyTorch eager, and ONNX Runtime (an optional extra).

A runtime turns a module and its inputs into a :class:`Runner` (one call runs one batch), checks up front
that it can run as asked (CUDA present, onnxruntime installed, its CUDA provider available), and names
itself, its version and the device for a latency table's cache key.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import logging
import platform
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import DependencyNotInstalled, LatencyError
from ._settings import LatencySettings
from ._timer import Runner

__all__ = ["Runtime", "runtime_for", "device_name"]


class Runtime(Protocol):
    name: str
    version: str

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner: ...


def device_name(device: str) -> str:
    """The processor's model string (``/proc/cpuinfo``'s model name) or the GPU's name: part of the cache key,
    so a table measured on one machine is not reused on another."""
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _check_device(settings: LatencySettings) -> None:
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise LatencyError("Latency device cuda was asked for, but torch sees no CUDA device (a CPU-only build of "
                           f"torch {torch.__version__}, or no GPU); use --latency-device cpu.")


class TorchRuntime:
    """PyTorch eager: a copy of the module in eval mode on the device and in the dtype; timed under inference mode."""

    name = "torch"

    def __init__(self, settings: LatencySettings) -> None:
        _check_device(settings)
        self.settings = settings
        self.version = torch.__version__

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        device, dtype = torch.device(self.settings.device), self.settings.torch_dtype
        module = copy.deepcopy(module).to(device, dtype).eval()
        xs = tuple(x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in inputs)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        return Runner(lambda: module(*xs), sync)


def _onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise DependencyNotInstalled(
            "The onnxruntime latency runtime needs ONNX Runtime and the ONNX exporter (onnx, onnxscript): "
            'pip install "autoprune[onnx]" (from a checkout: pip install -e ".[onnx]").') from e


class OnnxRuntime:
    """ONNX Runtime: the module exported to ONNX in memory, run by an ``InferenceSession`` with
    ``intra_op_num_threads`` = the settings' threads (one inter-op thread, sequential execution) on the CPU
    provider, or the CUDA provider for ``device="cuda"``.

    The export uses torch's TorchScript-based exporter (``dynamo=False``): a latency table exports tens
    of small modules, and here it takes 0.3 s a residual block where the torch.export-based exporter
    (the one ``autoprune export`` writes files with) takes 4 to 18 s. Both give ONNX Runtime the same
    operators to run (Conv, BatchNormalization folded by its optimiser, Relu, Add, Pad, Gemm).
    """

    name = "onnxruntime"

    def __init__(self, settings: LatencySettings) -> None:
        _check_device(settings)
        ort = _onnxruntime()
        for package in ("onnx",):
            try:
                importlib.import_module(package)
            except ImportError as e:
                raise DependencyNotInstalled(f'The onnxruntime latency runtime needs {package}: pip install '
                                             f'"autoprune[onnx]" (from a checkout: pip install -e ".[onnx]").') from e
        self.providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if settings.device == "cuda"
                          else ["CPUExecutionProvider"])
        if self.providers[0] not in ort.get_available_providers():
            raise LatencyError(f"ONNX Runtime {ort.__version__} has no {self.providers[0]} (it has "
                               f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for "
                               f"--latency-device cuda, or measure on the CPU.")
        self.ort = ort
        self.settings = settings.resolved()
        self.version = ort.__version__

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        names = [f"input{i}" for i in range(len(inputs))]
        model = copy.deepcopy(module).cpu().float().eval()
        xs = tuple(x.detach().cpu() for x in inputs)
        buffer = io.BytesIO()
        with _quiet(), torch.no_grad():
            try:
                torch.onnx.export(model, xs, buffer, dynamo=False, input_names=names)
            except Exception as e:
                raise LatencyError(f"{type(module).__name__} cannot be exported to ONNX for timing "
                                   f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}).") from e
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        session = self.ort.InferenceSession(buffer.getvalue(), options, providers=self.providers)
        feed = {i.name: np.ascontiguousarray(x.numpy()) for i, x in zip(session.get_inputs(), xs)}
        run = functools.partial(session.run, None, feed)
        return Runner(run)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's deprecation and tracer warnings off: they are about torch's internals, not the model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def runtime_for(settings: LatencySettings) -> Runtime:
    """The runtime ``settings`` name, checked it can run (raises :class:`LatencyError` or
    :class:`~autoprune.errors.DependencyNotInstalled` with the install hint)."""
    return OnnxRuntime(settings) if settings.runtime == "onnxruntime" else TorchRuntime(settings)
