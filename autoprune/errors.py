"""The exceptions autoprune raises: one root, one subclass per kind of bad input.

The CLI catches :class:`AutopruneError` and prints its message, so every
message must say what was wrong, the offending value, and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AutopruneError",
    "UnknownNameError",
    "DataError",
    "CheckpointError",
    "PolicyError",
    "ModelError",
    "BudgetError",
    "OutputError",
    "DependencyNotInstalled",
    "ExportError",
    "LatencyError",
    "unknown_name",
]


class AutopruneError(Exception):
    """Root of every error autoprune raises on purpose."""


class UnknownNameError(AutopruneError, KeyError):
    """Raised when an architecture, criterion, space or preset name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(AutopruneError):
    """Raised when a dataset is missing, of an unknown layout, corrupt or cannot be downloaded."""


class CheckpointError(AutopruneError):
    """Raised when a checkpoint or run file is damaged, holds objects or code instead of data (autoprune never
    loads those), fails its hash, or belongs to another architecture or run."""


class PolicyError(AutopruneError):
    """Raised when a policy file is malformed or does not match the model it names."""


class ModelError(AutopruneError):
    """Raised when a model spec cannot become a prunable model: its factory does not import, is not callable,
    rejects its arguments or returns no ``nn.Module``; the model rejects its input size; ``--output`` selects
    nothing; an ``--ignore`` pattern matches no module; it has no prunable group, or it cannot be traced."""


class BudgetError(AutopruneError):
    """Raised when a FLOPs/params target is outside (0, 1) or unreachable within the space's bounds."""


class OutputError(AutopruneError):
    """Raised when an output cannot be written: the folder is read-only, full, or holds a user's or another run's files."""


class DependencyNotInstalled(AutopruneError, ImportError):
    """Raised when an optional dependency is needed; the message names the extra to install."""


class ExportError(AutopruneError):
    """Raised when a model cannot be exported, or the exported file does not reproduce PyTorch's outputs."""


class LatencyError(AutopruneError):
    """Raised when latency cannot be measured as asked: a device that is absent (``cuda`` without CUDA), a dtype
    the runtime or device does not run, latency settings out of range, or a model that a runtime cannot run."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Build the error for a misspelt name, with a "Did you mean" hint and the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")
