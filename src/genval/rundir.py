"""The run directory: one folder holding a run's configuration, artifacts and provenance.

Layout::

    RUN/
      config.yaml          resolved configuration (every default written out)
      metadata.json        package versions, platform, seeds, device, data hash, stage timings
      data/splits.npz      split indices and their hash
      models/              member ensemble (safetensors + JSON)
      fit/                 weights, covariance and diagnostics of the w_i f_i fit
      samples/             oversampled events
      coverage/            coverage study results
      gof/                 GoF results (JSON) and null toys (npz), per variant
      figures/             PNG and PDF figures
      report.html          self-contained report
      .stages/STAGE.json   completion markers
      .lock                held while a process runs stages

A stage that finished leaves a marker; re-running skips it unless forced, so a killed run
resumes where it stopped. Re-running a stage removes the markers of the stages that depend on
it (:func:`dependents`), whose inputs it is about to replace. Every file is written
atomically (:mod:`genval._atomic`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np

from genval._atomic import atomic_write_json, atomic_write_text
from genval._logging import to_logger
from genval._paths import resolve_inside
from genval._version import __version__
from genval.config import Config, config_hash, dump_config, load_config
from genval.errors import ArtifactError

__all__ = ["STAGES", "DEPENDS", "READS", "dependents", "RunDirError", "StageOutcome", "RunDir",
           "package_versions", "to_jsonable"]

STAGES = ("split", "train", "fit", "sample", "coverage", "gof", "report")
"""Pipeline stages in execution order."""

DEPENDS: dict[str, tuple[str, ...]] = {
    "split": (),
    "train": ("split",),
    "fit": ("train",),
    "sample": ("fit",),
    "coverage": ("fit",),
    "gof": ("fit",),
    "report": ("fit",),
}
"""Stages each stage needs finished first."""

READS: dict[str, tuple[str, ...]] = {
    "report": ("split", "train", "fit", "sample", "coverage", "gof"),
}
"""Stages whose artifacts (or markers) a stage reads when they exist, without needing them.

The report gathers whatever earlier stages wrote, including the warnings in their markers, so
re-running any of them makes the report stale.
"""


def dependents(stage: str) -> tuple[str, ...]:
    """``stage`` and every stage that needs or reads it, directly or transitively, in order.

    These are the stages whose results re-running ``stage`` makes stale (:data:`DEPENDS`,
    :data:`READS`); the others keep their markers.
    """
    stale = {_check_stage(stage)}
    grown = True
    while grown:
        grown = False
        for other in STAGES:
            inputs = set(DEPENDS[other]) | set(READS.get(other, ()))
            if other not in stale and inputs & stale:
                stale.add(other)
                grown = True
    return tuple(s for s in STAGES if s in stale)

_PACKAGES = ("numpy", "scipy", "torch", "safetensors", "pydantic", "PyYAML", "click", "tqdm",
             "matplotlib", "mplhep", "h5py", "pyarrow", "uproot", "awkward", "dask")


class RunDirError(ArtifactError):
    """A run directory that is missing, belongs to another config, or is used out of order."""


@dataclass(frozen=True)
class StageOutcome:
    """What :meth:`RunDir.run_once` did: ``ran`` (or skipped as already done) and its info."""

    stage: str
    ran: bool
    seconds: float
    info: dict[str, Any]


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` when absent), read from metadata without importing."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values and inf/NaN as strings.

    Strict JSON has no inf or NaN (``atomic_write_json`` refuses them); a Z beyond reach is
    legitimately infinite, so it is written as ``"inf"`` rather than failing the stage.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else str(value)
    return obj


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """A run directory (see the module docstring for the layout).

    Create one with :meth:`create` (writes the resolved config) or open an existing one with
    :meth:`open`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # --- layout ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metadata_path(self) -> Path:
        return self.root / "metadata.json"

    @property
    def splits_path(self) -> Path:
        return self.root / "data" / "splits.npz"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def dir(self, name: str) -> Path:
        """A subdirectory (``models``, ``fit``, ``samples``, ``coverage``, ``gof``, ``figures``,
        ``data``), created on first use."""
        if name not in ("data", "models", "fit", "samples", "coverage", "gof", "figures"):
            raise ValueError(f"unknown run-directory folder {name!r}")
        # A folder that is a symlink out of the run would take every artifact with it.
        path = resolve_inside(self.root, name, f"run-directory folder {name!r}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _marker(self, stage: str) -> Path:
        _check_stage(stage)
        return resolve_inside(self.root, Path(".stages") / f"{stage}.json", "stage marker")

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | os.PathLike[str], config: Config, *,
               force: bool = False) -> RunDir:
        """Start (or resume) a run in ``root`` with ``config``.

        An existing run with the same resolved config is resumed: its finished stages stay
        finished. One with a different config is refused unless ``force``, which clears its
        stage markers (artifacts are overwritten as the stages re-run).

        Raises:
            RunDirError: if ``root`` holds a run of another config and ``force`` is false, or
                is a non-empty folder that is not a run directory.
        """
        run = cls(root)
        new_hash = config_hash(config)
        if run.config_path.is_file():
            old_hash = config_hash(load_config(run.config_path))
            if old_hash != new_hash and not force:
                raise RunDirError(f"{run.root} holds a run with a different configuration; use "
                                  "--force to overwrite it, or choose another run directory")
            if old_hash != new_hash:
                shutil.rmtree(run.root / ".stages", ignore_errors=True)
        elif run.root.is_dir() and any(run.root.iterdir()) and not force:
            raise RunDirError(f"{run.root} is a non-empty folder that is not a genval run "
                              "directory; choose another path or use --force")
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config_path, dump_config(config))
        meta = run.metadata() if run.metadata_path.is_file() else {}
        meta.update({
            "genval_version": __version__,
            "created": meta.get("created", _now()),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "config_hash": new_hash,
            "seed": config.seed,
            "device": _device_record(meta.get("device"), config.device),
        })
        meta.setdefault("stages", {})
        atomic_write_json(run.metadata_path, meta)
        return run

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> RunDir:
        """Open an existing run directory.

        Raises:
            RunDirError: if ``root`` has no ``config.yaml``.
        """
        run = cls(root)
        if not run.config_path.is_file():
            raise RunDirError(f"{run.root} is not a genval run directory (no config.yaml); "
                              "start one with `genval run CONFIG`")
        return run

    def config(self) -> Config:
        """The resolved configuration of this run."""
        return load_config(self.config_path)

    # --- metadata ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The parsed ``metadata.json``."""
        try:
            return json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"cannot read {self.metadata_path}: {exc}") from exc

    def update_metadata(self, **entries: Any) -> dict[str, Any]:
        """Merge ``entries`` into ``metadata.json`` (dicts merged one level deep) atomically."""
        meta = self.metadata()
        for key, value in entries.items():
            if isinstance(value, Mapping) and isinstance(meta.get(key), dict):
                meta[key] = {**meta[key], **value}
            else:
                meta[key] = value
        meta = to_jsonable(meta)
        atomic_write_json(self.metadata_path, meta)
        return meta

    # --- stages ------------------------------------------------------------------------------

    def _marker_record(self, stage: str) -> dict[str, Any] | None:
        """The parsed marker of ``stage``; None when absent or unreadable (a marker we cannot
        read proves nothing: the stage counts as not finished and runs again)."""
        marker = self._marker(stage)
        if not marker.is_file():
            return None
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` finished under this run's current configuration."""
        record = self._marker_record(stage)
        return record is not None and record.get("config_hash") == config_hash(self.config())

    def require(self, stage: str) -> None:
        """Raise :class:`RunDirError` unless every stage ``stage`` depends on has finished."""
        missing = [d for d in DEPENDS[_check_stage(stage)] if not self.is_done(d)]
        if missing:
            raise RunDirError(f"stage {stage!r} needs {missing} to have finished first; run "
                              f"`genval {missing[0]} {self.root}` (or `genval run`)")

    def invalidate(self, stage: str) -> list[str]:
        """Remove the markers of ``stage`` and of the stages that depend on it.

        Only :func:`dependents` lose their markers: re-drawing the samples, say, leaves the GoF
        toys (which never read them) finished. Returns the stages whose marker was removed.
        """
        removed = []
        for later in dependents(stage):
            marker = self._marker(later)
            if marker.exists():
                marker.unlink()
                removed.append(later)
        return removed

    def mark_done(self, stage: str, *, seconds: float, info: Mapping[str, Any] | None = None
                  ) -> None:
        """Write the completion marker of ``stage`` and its timing into the metadata."""
        record = {"stage": stage, "finished": _now(), "seconds": round(seconds, 3),
                  "config_hash": config_hash(self.config()), "genval_version": __version__,
                  "info": to_jsonable(dict(info or {}))}
        self.update_metadata(stages={stage: {"finished": record["finished"],
                                             "seconds": record["seconds"]}})
        atomic_write_json(self._marker(stage), record)

    def run_once(self, stage: str, fn: Callable[[], Mapping[str, Any] | None], *,
                 force: bool = False, log: Callable[[str], None] | None = None) -> StageOutcome:
        """Run ``fn`` as ``stage`` unless it already finished (or ``force``), then mark it done.

        Args:
            stage: one of :data:`STAGES`.
            fn: does the work and writes the artifacts; may return a JSON-able info dict.
            force: re-run even if finished.
            log: receives one-line progress messages; None: the ``genval`` logger.

        Raises:
            RunDirError: if a stage it depends on has not finished.
        """
        say = log or to_logger
        if not force and self.is_done(stage):
            record = self._marker_record(stage) or {}
            say(f"[{stage}] already done ({record.get('finished')}); skipping (use --force)")
            return StageOutcome(stage, False, 0.0, record.get("info", {}))
        self.require(stage)
        # The inputs of the stages that depend on this one are about to change: re-run them.
        self.invalidate(stage)
        say(f"[{stage}] running")
        start = time.perf_counter()
        info = dict(fn() or {})
        seconds = time.perf_counter() - start
        self.mark_done(stage, seconds=seconds, info=info)
        say(f"[{stage}] done in {seconds:.1f} s")
        return StageOutcome(stage, True, seconds, info)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``RUN/.lock`` while stages run, so two processes never write one run at once.

        A lock left by a process that was killed is taken over when that process no longer
        exists on this host; a lock from another host must be removed by hand.

        Raises:
            RunDirError: if another live process holds the lock.
        """
        path = self.root / ".lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder is not None and _alive(holder):
                    raise RunDirError(
                        f"{self.root} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')}; if that run is "
                        f"gone, delete {path}") from None
                path.unlink(missing_ok=True)  # stale: its owner was killed
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        """The marker of ``stage`` (finished, seconds, config_hash, info), or None if absent.

        A marker of another configuration is returned too: :meth:`is_done` says whether it
        counts.
        """
        return self._marker_record(stage)

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds ``RUN/.lock`` (pid, host, since), or None when no process does; a lock
        left by a killed process on this host counts as free."""
        holder = _read_lock(self.root / ".lock")
        return holder if holder is not None and _alive(holder) else None

    def stage_info(self, stage: str) -> dict[str, Any] | None:
        """The info dict ``stage`` recorded in its marker, or None if it has not finished."""
        record = self._marker_record(stage)
        return None if record is None else dict(record.get("info", {}))

    def status(self) -> dict[str, bool]:
        """Which stages have finished."""
        return {s: self.is_done(s) for s in STAGES}


def _device_record(previous: Any, requested: str) -> dict[str, str]:
    """The device entry of the metadata: the device now requested, and the one it resolved to
    as long as the request is unchanged (the stages that use a device record it again)."""
    record = {"requested": requested}
    if isinstance(previous, dict) and previous.get("requested") == requested \
            and "resolved" in previous:
        record["resolved"] = str(previous["resolved"])
    return record


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # vanished or half-written: treat as stale


def _alive(holder: Mapping[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot check a process on another machine: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise RunDirError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return stage
