"""Shared helpers of the pipeline stages: seeds, split access, saved members and fit."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval._atomic import atomic_write_bytes
from genval._optional import MissingDependencyError
from genval.config import Config
from genval.errors import GenvalError, GenvalWarning
from genval.io import read_events
from genval.members import KDEMembers, Members
from genval.rundir import RunDir, to_jsonable
from genval.splits import Splits

__all__ = ["Log", "quiet", "draw", "FigureSkippedWarning", "StageUnavailableError",
           "stage_seed", "split_events", "load_members", "load_fit", "FIT_ARRAYS",
           "resolve_device", "jsonable", "save_npz", "module", "is_paper_toy"]

Log = Callable[[str], None]
"""Receives one-line progress messages (the CLI prints them on stderr unless --quiet)."""


def quiet(_message: str) -> None:
    """A :data:`Log` that discards messages."""


class StageUnavailableError(GenvalError, RuntimeError):
    """A stage needs a genval module that this build does not include yet."""


def module(name: str, purpose: str) -> ModuleType:
    """Import ``name`` or raise :class:`StageUnavailableError` saying what needed it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise StageUnavailableError(f"{purpose} needs {name}, which this build of genval does "
                                    "not include yet") from exc


class FigureSkippedWarning(GenvalWarning):
    """A figure was not drawn (matplotlib is not installed); the run goes on without it."""


def draw(run: RunDir, stem: str, plot: Callable[..., Any], **kwargs: Any) -> None:
    """Call a :mod:`genval.plots` function, saving ``figures/STEM`` in the configured formats.

    Without matplotlib the figure is skipped with a :class:`FigureSkippedWarning` (recorded in
    the stage marker and the report) instead of failing a long run at its last step.
    """
    cfg = run.config()
    try:
        plot(**kwargs, save=run.dir("figures") / stem, formats=cfg.report.formats,
             dpi=cfg.report.dpi)
    except MissingDependencyError as exc:
        warnings.warn(f"figure {stem!r} skipped: {exc}", FigureSkippedWarning, stacklevel=2)


def stage_seed(config: Config, stage: str) -> int:
    """An independent seed per stage (or other purpose) derived from ``config.seed``.

    Keyed by a CRC of the name, so every purpose ("data", "split", ..., "figures") gets its
    own stream and adding a stage never shifts the others. Recorded in ``metadata.json``.
    """
    key = zlib.crc32(stage.encode("utf-8"))
    return int(np.random.SeedSequence([config.seed, key]).generate_state(1)[0])


def is_paper_toy(config: Config) -> bool:
    """Whether the run generates the paper's 2D Gaussian (then its numbers are comparable)."""
    gen = config.data.generate
    return config.data.path is None and gen.mean == [-0.5, 0.6] and gen.std == [0.25, 0.4]


def split_events(run: RunDir, name: str) -> tuple[NDArray[np.float64], list[str]]:
    """The events of split ``name`` and the feature names, from the run's recorded split."""
    table = read_events(run.root / "data" / "events.npz")
    splits = Splits.load(run.splits_path)
    if name == "test" and "test" not in splits.indices:
        test = read_events(run.root / "data" / "test_events.npz", table.names)
        return test.x, test.names
    return splits.take(table.x, name), table.names


def save_npz(path: Path, **arrays: Any) -> Path:
    """``np.savez`` through memory and an atomic rename: never a truncated ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    torch = module("torch", "device 'auto'")
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_members(run: RunDir) -> Members:
    """The members saved by the train stage."""
    cfg = run.config()
    models = run.root / "models"
    if cfg.members.kind == "kde":
        spec = json.loads((models / "kde.json").read_text(encoding="utf-8"))
        x_train, _ = split_events(run, "train")
        return KDEMembers(x_train, spec["n_members"], bandwidth=spec["bandwidth"],
                          seed=spec["seed"])
    flows = module("genval.flows", "members.kind: flow")
    device = run.metadata().get("device", {}).get("resolved", "cpu")
    return flows.FlowEnsemble.load(models / "ensemble.safetensors", device=device)


FIT_ARRAYS = ("weights", "cov", "cov_reduced")


def load_fit(run: RunDir) -> Any:
    """The :class:`genval.wifi.WeightFit` saved by the fit stage."""
    from genval.wifi import WeightFit

    meta = json.loads((run.root / "fit" / "fit.json").read_text(encoding="utf-8"))
    with np.load(run.root / "fit" / "fit.npz", allow_pickle=False) as arrays:
        values = {k: arrays[k] for k in FIT_ARRAYS}
    names = {f.name for f in dataclasses.fields(WeightFit)}
    values.update({k: (tuple(v) if k == "messages" else v) for k, v in meta.items()
                   if k in names and k not in values})
    return WeightFit(**values)


def jsonable(obj: Any) -> Any:
    """See :func:`genval.rundir.to_jsonable`."""
    return to_jsonable(obj)
