"""The folder a command writes (``--out``): who owns it, and whether it may be written, replaced or resumed.

Every command that writes a folder (prune, search, finetune, train, finetune --ray, sweep) claims it
through :class:`RunDir` before any work, so a bad ``--out`` costs seconds, not a search:

- it must be writable: a file is created in it (or in its nearest existing parent) and removed, since
  a read-only filesystem or a missing permission is only certain once tried;
- a new or empty folder is taken;
- a folder holding a run of autoprune is refused ("already holds a run", with ``--resume`` where the
  command has one), unless ``overwrite``; a run of another command is refused naming that command,
  because two commands' files in one folder disagree silently (a new policy.json beside an old model.pt);
- ``overwrite`` replaces a run only when the folder holds nothing its kind does not write; anything
  else (a user's thesis.txt) makes every command refuse and list what it found: --overwrite replaces
  runs of autoprune, never other files;
- a run that has not started (no episode, trial or epoch finished) holds nothing worth resuming: it is
  replaced without ``overwrite``, and a command that fails before starting removes what it wrote
  (:meth:`RunDir.cleanup_unless_started`), so the corrected command is not told to resume a bad one.

The marker ``autoprune-run.json`` identifies a run of autoprune::

    {"format": "autoprune-run-v1", "kind": "search", "started": false, "version": "0.5.0",
     "created": "2026-01-05T12:00:00+00:00", "host": "node1", "pid": 4242, "options": {"report": false}}

``kind`` is the command that wrote the folder (see :data:`WRITES`); ``started`` turns true with
:meth:`RunDir.mark_started`; ``host`` and ``pid`` keep a second command from replacing a run that is
still starting; ``options`` holds command-line settings that are not part of the run's config.yaml
(``--no-report``, ``--no-progress``) so that ``--resume`` honours them. Folders written before the
marker existed are recognised by their config.yaml, as `autoprune report` reads it, or, for prune,
by policy.json beside model.pt.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import yaml

from ._io import output_error, read_yaml, write_bytes, write_json, write_together
from .errors import CheckpointError, OutputError

__all__ = ["MARKER", "WRITES", "RunDir"]

logger = logging.getLogger(__name__)

MARKER = "autoprune-run.json"
_FORMAT = "autoprune-run-v1"

_TRAINING = ("config.yaml", "policy.json", "log.txt", "metrics.csv", "tb", "checkpoints", "model.pt", "result.json")
#: The top-level names (glob patterns) each kind of run writes; besides them, every run may hold the
#: marker, `autoprune report`'s files and the temporaries of an interrupted atomic write. An experiment
#: (finetune-ray, sweep) also owns the trial folders its config.yaml names under ``trials`` or ``cells``.
WRITES: dict[str, tuple[str, ...]] = {
    "prune": ("policy.json", "model.pt"),
    "search": ("config.yaml", "log.txt", "episodes.csv", "checkpoints", "tb", "study.db*", "ray",
               "policy.json", "policy-*.json", "result.json", "front", "front.csv", "front.png", "method",
               "weights-*.pt"),
    "finetune": _TRAINING,
    "train": _TRAINING,
    "finetune-ray": ("config.yaml", "tune", "results.csv"),
    "sweep": ("config.yaml", "tune", "results.csv", "sweep.png"),
}
_ANY_RUN = (MARKER, "report.md", "report.html", "report-*.png", ".*.tmp")


@dataclass(frozen=True)
class _Found:
    """What a folder holds: the run of autoprune in it (if any) and the names that run does not account for."""

    names: list[str]
    kind: str | None = None
    marker: dict[str, Any] | None = None
    foreign: tuple[str, ...] = ()
    nested_started: bool = False

    @property
    def started(self) -> bool:
        """Whether it holds work worth resuming (a folder without marker is an older run: assumed so)."""
        return self.marker is None or bool(self.marker.get("started")) or self.nested_started

    @property
    def starting_elsewhere(self) -> int | None:
        """The id of a live process on this machine that created this run and has not started it, or None."""
        m = self.marker
        if m is None or m.get("started") or m.get("host") != socket.gethostname() or m.get("pid") == os.getpid():
            return None
        try:
            os.kill(int(m["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return None
        except PermissionError:  # alive, another user's
            pass
        return int(m["pid"])


def _legacy_kind(path: Path, names: list[str]) -> str | None:
    """The kind of a run written before the marker existed, from its config.yaml (as `autoprune report` reads it)."""
    if "config.yaml" in names:
        try:
            config = yaml.safe_load((path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        if not isinstance(config, dict):
            return None
        experiment = config.get("experiment")
        if experiment in ("sweep", "finetune"):
            return "sweep" if experiment == "sweep" else "finetune-ray"
        if "agent" in config and "arch" in config:
            return "search"
        if "mode" in config:
            return "finetune" if config["mode"] == "finetune" else "train"
        return None
    return "prune" if {"policy.json", "model.pt"} <= set(names) else None


def _trial_folders(path: Path) -> list[str]:
    """The trial folders an experiment's config.yaml names (a cell of a sweep, a trial of finetune --ray)."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    if not isinstance(config, dict):
        return []
    return [str(name) for key in ("trials", "cells") for name in (config.get(key) or {})]


def _nested_started(path: Path) -> bool:
    """Whether a run inside ``path`` has started: a trial of an experiment, a sweep cell's search or fine-tune.

    An experiment's driver may die before it records anything itself; its trials' markers still tell.
    """
    for marker in (*path.glob(f"*/{MARKER}"), *path.glob(f"*/*/{MARKER}")):
        try:
            if json.loads(marker.read_text()).get("started"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _inspect(path: Path) -> _Found:
    names = sorted(os.listdir(path)) if path.is_dir() else []
    if not names:
        return _Found(names)
    marker = None
    if MARKER in names:
        try:
            marker = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        if not isinstance(marker, dict) or marker.get("format") != _FORMAT or marker.get("kind") not in WRITES:
            marker = None
    kind = marker["kind"] if marker else _legacy_kind(path, names)
    if kind is None:
        return _Found(names, foreign=tuple(names))
    owned = WRITES[kind] + _ANY_RUN + tuple(_trial_folders(path) if kind in ("sweep", "finetune-ray") else ())
    foreign = tuple(n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in owned))
    return _Found(names, kind, marker, foreign, marker is not None and _nested_started(path))


def _few(path: Path, names: tuple[str, ...] | list[str], limit: int = 6) -> str:
    shown = [f"{n}/" if (path / n).is_dir() else n for n in names[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _command(kind: str) -> str:
    return "`autoprune finetune --ray`" if kind == "finetune-ray" else f"`autoprune {kind}`"


def _resume(kind: str, path: Path) -> str:
    """How to continue a run of ``kind`` ("" for prune, which has nothing to continue)."""
    command = "finetune" if kind == "finetune-ray" else kind
    return "" if kind == "prune" else f"`autoprune {command} --resume {path}`"


def _check_writable(path: Path) -> None:
    """Raise :class:`OutputError` unless files can be created in ``path`` (or, if absent, where it would be made)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"--out {path}: {probe} is a file, not a folder; choose another --out.")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".autoprune-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise (output_error(e, path) or OutputError(f"--out {path} cannot be written ({e}); choose another "
                                                    "--out.")) from None


class RunDir:
    """A folder written by one command, claimed through :meth:`create` or :meth:`open` (see the module docstring).

    Subclasses name the kinds they write in ``KINDS`` (the first is the default) and add what their
    runs store (:class:`autoprune.search._run_dir.SearchRunDir`,
    :class:`autoprune.training._run_dir.TrainingRunDir`); prune, finetune --ray and sweep use this class.
    """

    KINDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | os.PathLike[str], kind: str | None = None) -> None:
        self.path = Path(path)
        self.kind = kind or (self.KINDS[0] if self.KINDS else None)
        self._marker: dict[str, Any] | None = None
        self._created = False  # by create(): only then may a failure remove what the run wrote
        self._made: Path | None = None  # the topmost folder create() made, if it made one

    @classmethod
    def _kind(cls, kind: str | None) -> str:
        kind = kind or (cls.KINDS[0] if cls.KINDS else None)
        if kind not in WRITES or (cls.KINDS and kind not in cls.KINDS):
            raise ValueError(f"{cls.__name__} writes runs of kind {cls.KINDS or tuple(WRITES)}, not {kind!r}.")
        return kind

    @classmethod
    def check(cls, path: str | os.PathLike[str], *, kind: str | None = None, overwrite: bool = False) -> None:
        """Refuse now, before any work, what :meth:`create` would refuse (it checks again, then writes)."""
        cls._claim(Path(path), cls._kind(kind), overwrite)

    @classmethod
    def _claim(cls, path: Path, kind: str, overwrite: bool) -> _Found:
        _check_writable(path)
        found = _inspect(path)
        if not found.names:
            return found
        if found.kind is None:
            raise OutputError(f"{path} is not empty and holds no run of autoprune ({_few(path, found.names)}); "
                              "choose a new or empty folder for --out. --overwrite replaces runs of autoprune only, "
                              "never other files.")
        pid = found.starting_elsewhere
        if pid is not None:
            raise OutputError(f"{path} holds a run of {_command(found.kind)} that process {pid} is starting; "
                              "choose another --out, or wait for it.")
        if found.started and not overwrite:
            over = (f"; --overwrite would not replace it either, since it also holds {_few(path, found.foreign)}, "
                    "which no such run writes") if found.foreign else ""
            if found.kind == kind:
                resume = f"resume it with --resume {path}, or " if _resume(kind, path) else ""
                raise OutputError(f"{path} already holds a run of {_command(kind)}; {resume}choose another --out"
                                  + (over or " (or pass --overwrite to replace it)") + ".")
            files = [n for n in found.names if n != MARKER]
            raise OutputError(f"{path} holds a run of {_command(found.kind)} ({_few(path, files)}); "
                              f"{_command(kind)} will not mix its files with another command's: choose another --out"
                              + (over or ", or pass --overwrite to replace that run") + ".")
        if found.foreign:
            raise OutputError(f"{path} holds a run of {_command(found.kind)} but also {_few(path, found.foreign)}, "
                              "which no such run writes; move those out of it or choose another --out "
                              "(--overwrite replaces runs of autoprune only, never other files).")
        return found

    @classmethod
    def create(cls, path: str | os.PathLike[str], config: Mapping[str, Any] | None = None, *,
               kind: str | None = None, overwrite: bool = False,
               cli_options: Mapping[str, Any] | None = None) -> RunDir:
        """Claim ``path`` for a new run of ``kind`` (default: the class's), replacing a run there when allowed.

        Writes the marker (not started yet) and, given ``config``, config.yaml. ``cli_options`` are
        command-line settings outside ``config`` that ``--resume`` must honour (read back as :attr:`options`).
        """
        path, kind = Path(path), cls._kind(kind)
        found = cls._claim(path, kind, overwrite)
        run = cls(path, kind)
        if found.names:
            logger.info("replacing the %s run in %s (%s)", found.kind, path,
                        "not started" if not found.started else "--overwrite")
            for name in found.names:  # the folder itself stays: it may be a mount point or the working directory
                _delete(path / name)
        made = path
        while not made.parent.exists():
            made = made.parent
        run._created, run._made = True, made if not made.exists() else None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise (output_error(e, path) or e) from None
        run._marker = {"format": _FORMAT, "kind": kind, "started": False, "version": _version(),
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
                       "pid": os.getpid(), "options": dict(cli_options or {})}
        write_json(path / MARKER, run._marker)
        if config is not None:
            run.write_config(config)
        return run

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write config.yaml (what ``--resume`` replays); subclasses call it after the files it presumes."""
        text = yaml.safe_dump(dict(config), sort_keys=False).encode()
        write_bytes(self.path / "config.yaml", lambda f: f.write(text))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, kind: str | None = None, writing: bool = True) -> RunDir:
        """An existing run to continue (``--resume``); refuses a folder that holds none, or a run of another kind.

        ``writing=False`` only reads it (its config, its options): no writability check.
        """
        path = Path(path)
        found = _inspect(path)
        kinds = (kind,) if kind else cls.KINDS
        what = " or ".join(_command(k) for k in kinds) if kinds else "autoprune"
        if found.kind is None:
            raise OutputError(f"{path} is not a run of {what} (no {MARKER} or config.yaml); start one without "
                              "--resume.")
        if kinds and found.kind not in kinds:
            hint = _resume(found.kind, path)
            raise OutputError(f"{path} is a run of {_command(found.kind)}, not of {what}"
                              + (f"; continue it with {hint}." if hint else ", and has nothing to resume."))
        if writing:
            _check_writable(path)
        run = cls(path, found.kind)
        run._marker = found.marker
        return run

    def read_config(self) -> dict[str, Any]:
        """The run's config.yaml: what ``--resume`` replays."""
        file = self.path / "config.yaml"
        if not file.is_file():
            raise OutputError(f"{self.path} holds no config.yaml: it is not a run that can be resumed.")
        config = read_yaml(file, "Run configuration", hint="Restore it from a copy of the run.")
        if not isinstance(config, dict):
            raise CheckpointError(f"Run configuration {file} is damaged: it must be a mapping of settings, "
                                  f"but holds {type(config).__name__}. Restore it from a copy of the run.")
        return config

    @property
    def options(self) -> dict[str, Any]:
        """The command-line settings recorded when the run was created (empty for a run older than the marker)."""
        return dict((self._marker or {}).get("options", {}))

    @property
    def created(self) -> str | None:
        """When the run was created (ISO 8601, UTC), kept across ``--resume``: a resumed run's wall time counts from it.

        None for a run older than the marker or than this field (its "created" was local time without a zone).
        """
        value = (self._marker or {}).get("created")
        return value if isinstance(value, str) and "T" in value else None

    @property
    def started(self) -> bool:
        """Whether the run holds work worth resuming: it said so (:meth:`mark_started`), or a run inside it did."""
        return self._marker is None or bool(self._marker.get("started")) or _nested_started(self.path)

    def mark_started(self) -> None:
        """Record that the run holds work worth resuming (its first episode, trial or epoch is on disk)."""
        if self._marker is None or self._marker.get("started"):
            return
        self._marker = {**self._marker, "started": True}
        write_json(self.path / MARKER, self._marker)

    @contextmanager
    def cleanup_unless_started(self) -> Iterator[RunDir]:
        """Remove what this run wrote if the block fails before :meth:`mark_started`.

        A folder :meth:`create` made is removed (with the empty parents it made); a folder that existed
        is emptied, since create() found it empty or replaced the run in it. Nothing is removed once the
        run has started, nor for a run opened to resume.
        """
        try:
            yield self
        except BaseException:
            if self._created and not self.started:
                self._remove()
            raise

    def _remove(self) -> None:
        logger.info("removing %s: the run failed before its first result", self.path)
        try:
            if self._made is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                folder = self.path.parent
                while self._made in (folder, *folder.parents) and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                    folder = folder.parent
            else:
                for entry in self.path.iterdir():
                    _delete(entry)
        except OSError as e:  # the error being raised matters more; the marker still says "not started"
            logger.warning("could not remove %s after a failed start: %s", self.path, e)

    def log(self, message: str) -> None:
        """Append a timestamped line to the run's log.txt."""
        with open(self.path / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def write_outputs(self, files: Mapping[str, Callable[[BinaryIO], Any]]) -> None:
        """Write final outputs (name -> ``f(binary file)``) so that all of them are in place or none is."""
        write_together({self.path / name: write for name, write in files.items()})


def _delete(entry: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder tree."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _version() -> str:
    from . import __version__

    return __version__

