"""Deployment export: a (pruned) model as one standalone file that loads without autoprune.

Formats:

- ``onnx``: ``torch.onnx.export(..., dynamo=True)``, the exporter built on ``torch.export``; run it with
  ONNX Runtime (``onnxruntime.InferenceSession(path)``, input ``input``, output ``output``, or
  ``output_0``, ``output_1``, ... for a model with several outputs). Why this
  exporter and not the TorchScript one (``dynamo=False``): with torch 2.13 both export every model of the
  zoo, pruned, to within 1e-6 of PyTorch, but the TorchScript exporter is deprecated (it warns that it
  will be removed), while the dynamo exporter is torch's default and captures the graph the same way as
  ``pt2`` below, so one capture path serves both formats. Its costs: it needs ``onnxscript``, takes
  seconds to tens of seconds where the old one took one, and writes opset 18 or newer only (asked for an
  older one, it logs that its version converter failed and keeps the newer opset, so older opsets are
  refused up front). The file is written with its weights inside (``external_data=False``): one file.
- ``pt2``: ``torch.export.export`` + ``torch.export.save``; load with ``torch.export.load(path).module()``.
  Needs torch only.

The file computes every tensor the model's own forward returns (a detector's class and box heads: a
tuple, list or dict of tensors, flattened in that order), not only the logits autoprune judges by
(``--output`` selects those for search and evaluation, not for deployment); an output object they cannot
be read from (one with ``.logits``) exports its logits.

Every export checks itself before the file takes its name: the written file is loaded back (ONNX
Runtime, ``torch.export.load``) and run on seeded random inputs beside the model in PyTorch; a largest
difference above ``rtol`` times the largest output (at least 1) raises :class:`ExportError` and leaves
nothing behind. The file is written beside ``path`` and renamed over it only then.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ._io import atomic_path, output_error
from .checkpoints import load_pruned
from .errors import DependencyNotInstalled, ExportError, OutputError, unknown_name
from .models import ModelSpec, every_output
from .policy import Policy

__all__ = ["FORMATS", "MIN_OPSET", "DEFAULT_RTOL", "ExportResult", "export_model", "export_pruned",
           "format_for", "require_onnx"]

FORMATS: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2"}  # format -> the usual file suffix
MIN_OPSET = 18  # the oldest opset the dynamo exporter writes (see the module docstring)
DEFAULT_RTOL = 1e-4
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs the first two; the check, the third


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it reproduces PyTorch."""

    path: Path
    format: str
    size: int  # bytes
    batch: int | None  # the fixed batch size; None: dynamic
    checked_batches: tuple[int, ...]  # batch sizes of the random inputs compared
    max_abs_diff: float  # largest |exported - PyTorch| over those inputs
    scale: float  # largest |PyTorch output| over those inputs
    rtol: float
    runtime: str  # what loaded the file back
    opset: int | None = None  # ONNX only

    @property
    def relative_diff(self) -> float:
        """``max_abs_diff`` over the largest output magnitude (at least 1): the figure held to ``rtol``."""
        return self.max_abs_diff / max(self.scale, 1.0)

    def summary(self) -> str:
        """Two lines for people: the file, and its parity with PyTorch."""
        what = f"{self.format}, opset {self.opset}" if self.opset else self.format
        batch = "dynamic batch" if self.batch is None else f"batch {self.batch}"
        return (f"wrote {self.path} ({self.size / 1e6:.2f} MB; {what}, {batch})\n"
                f"parity with PyTorch ({self.runtime}, {len(self.checked_batches)} random inputs at batch "
                f"{', '.join(map(str, sorted(set(self.checked_batches))))}): max abs diff {self.max_abs_diff:.3g}, "
                f"{self.relative_diff:.3g} of the largest output {self.scale:.3g} (tolerance {self.rtol:g})")


def format_for(path: str | os.PathLike[str], format: str | None) -> str:
    """``format`` checked, or read from ``path``'s suffix when None (``.onnx``, ``.pt2``)."""
    if format is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        suffix = Path(path).suffix.lower()
        if suffix not in by_suffix:
            raise ExportError(f"Cannot tell the export format from {Path(path).name!r}: give --format "
                              f"({' or '.join(FORMATS)}), or name the file *.onnx or *.pt2.")
        return by_suffix[suffix]
    if format not in FORMATS:
        raise unknown_name("export format", format, FORMATS)
    return format


def require_onnx() -> None:
    """Raise :class:`DependencyNotInstalled` naming the extra unless the ONNX packages import."""
    missing = []
    for name in _ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DependencyNotInstalled(
            f"ONNX export needs {', '.join(missing)} (the exporter needs onnx and onnxscript, its check "
            f'onnxruntime): pip install "autoprune[onnx]" (from a checkout: pip install -e ".[onnx]").')


def _check(path: Path, format: str | None, opset: int | None, rtol: float, overwrite: bool) -> str:
    """The arguments checked where they enter, before any model is loaded or traced; returns the format."""
    format = format_for(path, format)
    if opset is not None and format != "onnx":
        raise ExportError(f"--opset applies to ONNX only, not {format}.")
    if opset is not None and opset < MIN_OPSET:
        raise ExportError(f"--opset must be at least {MIN_OPSET} (the torch.export-based ONNX exporter writes "
                          f"no older opset), but got {opset}.")
    if not rtol > 0:
        raise ExportError(f"rtol must be positive, but got {rtol}.")
    if format == "onnx":
        require_onnx()
    _check_out(path, overwrite)
    return format


def _check_out(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; name the file to write (e.g. {path / 'model.onnx'}).")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it, or choose another --out.")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise OutputError(f"Cannot write {path}: {folder} is a file, not a folder.")


def export_model(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], format: str | None = None,
                 *, dynamic_batch: bool = False, opset: int | None = None, overwrite: bool = False,
                 rtol: float = DEFAULT_RTOL, seed: int = 0) -> ExportResult:
    """Export ``model`` (in eval mode, on the CPU; the argument itself is not changed) for inputs like ``example``.

    ``example``'s batch size is fixed in the file unless ``dynamic_batch`` (then the graph is traced at
    batch 2 or more, since torch.export specialises sizes 0 and 1, and checked at batch 1 and another
    size). ``opset`` (ONNX only) defaults to torch's. Raises :class:`ExportError` when the exporter fails
    or the file does not reproduce PyTorch within ``rtol``; nothing is left at ``path`` then.
    """
    path = Path(path)
    format = _check(path, format, opset, rtol, overwrite)
    if example.dim() < 1 or example.shape[0] < 1:
        raise ExportError(f"example must be a batch of at least one input, but got shape {tuple(example.shape)}.")
    with every_output(model):  # deploy every output the model returns, not only the logits autoprune judges by
        model = copy.deepcopy(model).cpu().eval()
    dtype = next(model.parameters()).dtype
    example = example.detach().to("cpu", dtype)
    batch = example.shape[0]
    if dynamic_batch and batch < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    checked = (1, example.shape[0] + 1) if dynamic_batch else (batch, batch)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(b, *example.shape[1:], generator=generator, dtype=dtype) for b in checked]
    with torch.no_grad():
        expected = [_tensors(model(x)) for x in inputs]
    with atomic_path(path) as tmp:
        if format == "onnx":
            opset_written = _write_onnx(model, example, tmp, dynamic_batch, opset, len(expected[0]))
            run, runtime = _onnx_runner(tmp)
        else:
            opset_written = None
            _write_pt2(model, example, tmp, dynamic_batch)
            run, runtime = _pt2_runner(tmp)
        with _exporting(f"{format} file's loading and running"):
            got = [run(x) for x in inputs]
        diff = max(_max_diff(g, e) for g, e in zip(got, expected))
        scale = max(float(y.abs().max()) for ys in expected for y in ys)
        result = ExportResult(path, format, tmp.stat().st_size, None if dynamic_batch else batch, checked,
                              diff, scale, rtol, runtime, opset_written)
        if not result.relative_diff <= rtol:  # also catches NaN
            raise ExportError(f"The exported {format} model does not reproduce PyTorch: max abs diff {diff:.3g} is "
                              f"{result.relative_diff:.3g} of the largest output {scale:.3g}, above the tolerance "
                              f"{rtol:g} ({runtime}); {path} was not written.")
    return result


def export_pruned(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str], format: str | None = None, *,
                  model: ModelSpec | nn.Module | None = None, batch: int = 1, dynamic_batch: bool = False, opset: int | None = None, overwrite: bool = False,
                  rtol: float = DEFAULT_RTOL) -> tuple[ExportResult, Policy]:
    """Export the pruned model in ``checkpoint`` (a model.pt of ``prune``, ``finetune`` or ``save_pruned``).

    ``model`` is what :func:`~autoprune.checkpoints.load_pruned` needs to rebuild a user's model (its
    spec or an unpruned module; a zoo model needs nothing). The input is the model's (``batch`` x the
    input size its policy records, e.g. 3x32x32). Returns the
    :class:`ExportResult` and the model's policy. Arguments and the output are checked before the
    model is loaded, so a bad ``--out`` or a missing package fails at once.
    """
    path = Path(path)
    if batch < 1:
        raise ExportError(f"--batch must be at least 1, but got {batch}.")
    format = _check(path, format, opset, rtol, overwrite)
    pruned, policy = load_pruned(checkpoint, model=model)
    size = policy.model_spec.defaults().input_size
    if size is None:  # a schema-2 policy records it; kept as a clear error should one not
        raise ExportError(f"{checkpoint}: its policy records no input size to export the model at.")
    example = torch.zeros(batch, *size)
    result = export_model(pruned, example, path, format, dynamic_batch=dynamic_batch, opset=opset,
                          overwrite=overwrite, rtol=rtol)
    return result, policy


def _tensors(out: object) -> list[torch.Tensor]:
    """The tensors a model returns, in the order the exporters flatten them (torch's pytree order)."""
    leaves, _ = tree_flatten(out)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise ExportError(f"Export supports models that return tensors (one, or a tuple, list or dict of them); "
                          f"this one returns a {type(out).__name__}"
                          f"{' holding ' + ', '.join(sorted({type(t).__name__ for t in leaves})) if leaves else ''}.")
    return leaves


def _max_diff(got: list[np.ndarray], expected: list[torch.Tensor]) -> float:
    """Largest difference over every output (inf when the file returns other outputs or shapes)."""
    if [tuple(g.shape) for g in got] != [tuple(e.shape) for e in expected]:
        return float("inf")
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters' chatter off: torch.onnx logs a warning per torchvision op it skips, and both warn about
    their own internals (deprecations), none of it about the user's model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            yield
    finally:
        logger.setLevel(level)


def _exporting(format: str) -> contextlib.AbstractContextManager[None]:
    """Turn an exporter's own failure into one :class:`ExportError` (a disk error stays an OutputError)."""
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            with _quiet_exporter():
                yield
        except (ExportError, OutputError):
            raise
        except Exception as e:
            if output_error(e) is not None:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ExportError(f"The {format} failed on this model ({type(e).__name__}: {first}).") from e
    return guard()


def _dynamic(dynamic_batch: bool) -> tuple[dict[int, object], ...] | None:
    return ({0: torch.export.Dim("batch")},) if dynamic_batch else None


def _write_onnx(model: nn.Module, example: torch.Tensor, tmp: Path, dynamic_batch: bool, opset: int | None,
                outputs: int) -> int:
    """Write the ONNX file; return the opset it holds (refusing a file of another opset than asked for)."""
    import onnx

    names = ["output"] if outputs == 1 else [f"output_{i}" for i in range(outputs)]
    with _exporting("ONNX exporter"):
        torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                          input_names=["input"], output_names=names, opset_version=opset,
                          dynamic_shapes=_dynamic(dynamic_batch))
        written = next(o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                       if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise ExportError(f"The ONNX exporter wrote opset {written}, not the {opset} asked for; try another --opset.")
    return written


def _write_pt2(model: nn.Module, example: torch.Tensor, tmp: Path, dynamic_batch: bool) -> None:
    """Save to memory, then write the bytes: torch's zip writer, failing on a full disk, throws again from its
    destructor when the garbage collector frees it later, and a C++ exception there aborts the process."""
    buffer = io.BytesIO()
    with _exporting("pt2 exporter"):
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic(dynamic_batch))
        torch.export.save(program, buffer)
    tmp.write_bytes(buffer.getbuffer())


def _onnx_runner(tmp: Path) -> tuple[Callable[[torch.Tensor], list[np.ndarray]], str]:
    import onnxruntime

    with _exporting("ONNX file's loading"):
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x.numpy()})), f"onnxruntime {onnxruntime.__version__}"


def _pt2_runner(tmp: Path) -> tuple[Callable[[torch.Tensor], list[np.ndarray]], str]:
    with _exporting("pt2 file's loading"):
        module = torch.export.load(str(tmp)).module()

    def run(x: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in tree_flatten(module(x))[0]]
    return run, "torch.export.load"
