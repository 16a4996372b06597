"""The stages of a genval run, each reading and writing a :class:`~genval.rundir.RunDir`.

``split → train → fit → sample → coverage → gof → report`` (paper Steps 1–4), one module per
stage (``split_stage`` ... ``report_stage``). Each stage function takes the run directory,
reads what earlier stages wrote and writes its own artifacts, both through
:mod:`genval.pipeline.artifacts`; :func:`run_stage` adds the skip-if-finished bookkeeping and
:func:`run_pipeline` runs them all. Only the split stage sees the full event table: the others
read their own split, so the test events never reach training or the weight fit.

Warnings raised inside a stage are recorded (in the stage's marker and the report) and logged,
not lost: a long unattended run should say what went wrong in its artifacts.

The train, coverage and gof stages run their parallel work on the executor of
``compute.scheduler`` (:mod:`genval.compute`), opened once per :func:`run_pipeline` and only
when one of them has work to do; :func:`run_gof_part` and :func:`merge_gof_parts` split the
toys into array jobs without a Dask cluster.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval._validation import as_events
from genval.compute import Executor, open_executor
from genval.config import Config, with_overrides
from genval.errors import InputError
from genval.io import read_events
from genval.pipeline import artifacts
from genval.pipeline.artifacts import load_fit, load_members, split_events, split_weights
from genval.pipeline.coverage_stage import stage_coverage
from genval.pipeline.fit_stage import stage_fit
from genval.pipeline.gof_stage import merge_gof_parts, run_gof_part, stage_gof
from genval.pipeline.log import Log, to_logger
from genval.pipeline.report_stage import stage_report
from genval.pipeline.sample_stage import stage_sample
from genval.pipeline.seeds import stage_seed
from genval.pipeline.split_stage import stage_split
from genval.pipeline.train_stage import stage_train
from genval.rundir import STAGES, RunDir, StageOutcome

__all__ = [
    "STAGE_FUNCTIONS",
    "PARALLEL_STAGES",
    "run_stage",
    "run_pipeline",
    "stage_executor",
    "run_gof_part",
    "merge_gof",
    "stage_seed",
    "split_events",
    "split_weights",
    "load_members",
    "load_fit",
    "stage_split",
    "stage_train",
    "stage_fit",
    "stage_sample",
    "stage_coverage",
    "stage_gof",
    "stage_report",
]

STAGE_FUNCTIONS: dict[str, Callable[[RunDir], dict[str, Any]]] = {
    "split": stage_split, "train": stage_train, "fit": stage_fit, "sample": stage_sample,
    "coverage": stage_coverage, "gof": stage_gof, "report": stage_report,
}


PARALLEL_STAGES = ("train", "coverage", "gof")
"""Stages that run their work on the executor of ``compute.scheduler`` when one is open."""


def _recorded(stage: str, fn: Callable[[], dict[str, Any]], say: Log
              ) -> Callable[[], dict[str, Any]]:
    """``fn`` with the warnings it raises logged and kept in the stage's marker."""

    def work() -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = fn()
        messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        for message in messages:
            say(f"[{stage}] warning: {message}")
        return {**info, "warnings": messages} if messages else info

    return work


def run_stage(run: RunDir, stage: str, *, force: bool = False, log: Log | None = None,
              executor: Executor | None = None) -> StageOutcome:
    """Run one stage unless finished; warnings it raises are logged and kept in its marker.

    ``executor`` (an open :class:`~genval.compute.Executor`) runs the parallel work of
    :data:`PARALLEL_STAGES`; None runs it in this process. ``log`` receives the stage's
    messages; None: the ``genval`` logger (a recorded warning at WARNING level, the rest at
    INFO).
    """
    say = log or to_logger
    extra = {"executor": executor} if stage in PARALLEL_STAGES else {}

    def call() -> dict[str, Any]:
        return STAGE_FUNCTIONS[stage](run, log=say, **extra)

    return run.run_once(stage, _recorded(stage, call, say), force=force, log=log)


@contextmanager
def stage_executor(run: RunDir, config: Config, stages: Sequence[str], *, force: bool = False
                   ) -> Iterator[Executor | None]:
    """The executor of ``config.compute`` while ``stages`` run, opened only when one of the
    :data:`PARALLEL_STAGES` among them has work to do (a resumed run starts no cluster)."""
    pending = [s for s in stages if s in PARALLEL_STAGES and (force or not run.is_done(s))]
    if not pending or config.compute.scheduler == "local":
        yield None
        return
    with open_executor(config.compute.settings()) as executor:
        yield executor


def run_pipeline(config: Config, *, run_dir: str | Path | None = None, force: bool = False,
                 stages: Sequence[str] = STAGES, log: Log | None = None,
                 events: Any = None, test_events: Any = None,
                 features: Sequence[str] | None = None) -> RunDir:
    """Run ``stages`` (default all) of ``config`` in ``run_dir`` (default ``config.run_dir``).

    Finished stages are skipped, so calling it again after a crash resumes; ``force`` re-runs
    every stage and lets a run directory of another configuration be overwritten. The
    parallel work runs where ``config.compute`` says (:func:`stage_executor`).

    Args:
        config: the run's configuration.
        run_dir: the run directory (default ``config.run_dir``).
        force: re-run finished stages; replace a run of another config or other events.
        stages: the stages to run, in order.
        log: receives one-line stage messages; None: the ``genval`` logger.
        events: the events instead of ``data.path``: an event file (``FILE[:KEY]``, as
            ``data.path``) or an array (N, D) (or a table with ``columns``, e.g. a pandas
            DataFrame), kept in the run directory (:func:`artifacts.input_path`) with
            ``data.path`` pointing at it, so the run resumes from the same events.
        test_events: held-out test events in the same forms (as ``data.test_path``; the test
            split is then not cut from ``events``: ``splits.test`` becomes null). An array's
            columns are the events' features in order, named as they are.
        features: names of the arrays' features (default: a table's ``columns``, else
            ``data.features`` when it names D features, else ``x0, x1, ...``).

    Raises:
        RunDirError: the run directory holds a run of another config, or other in-memory
            events, and ``force`` is false.
    """
    root = Path(run_dir if run_dir is not None else config.run_dir)
    arrays: dict[str, tuple[Any, list[str]]] = {}
    overrides: dict[str, Any] = {}
    if isinstance(events, (str, os.PathLike)):
        overrides["data.path"] = os.fspath(events)
    elif events is not None:
        arrays["events"] = _event_array(events, features, config.data.features, "events")
        overrides["data.path"] = str(artifacts.input_path(root, "events").resolve())
        overrides["data.features"] = None  # the kept file holds exactly these features
    if test_events is not None:
        overrides["splits.test"] = None
        if isinstance(test_events, (str, os.PathLike)):
            overrides["data.test_path"] = os.fspath(test_events)
        else:
            # Columns in the events' order: named as the events are, unless named here.
            names = arrays["events"][1] if "events" in arrays else _source_names(
                with_overrides(config, overrides))
            arrays["test_events"] = _event_array(test_events, features, names, "test_events")
            overrides["data.test_path"] = str(artifacts.input_path(root, "test_events")
                                              .resolve())
    if overrides:
        config = with_overrides(config, overrides, skip_none=False)
    run = RunDir.create(root, config, force=force)
    with run.lock(), stage_executor(run, config, stages, force=force) as executor:
        for which, (x, names) in arrays.items():
            artifacts.save_input_events(run, which, x, names, replace=force)
        for stage in stages:
            run_stage(run, stage, force=force, log=log, executor=executor)
    return run


def merge_gof(run: RunDir, *, log: Log | None = None) -> StageOutcome:
    """Complete the gof stage from its toy parts (:func:`merge_gof_parts`), as a stage run:
    the marker is written and the report marked stale. Take the run's lock around it."""
    say = log or to_logger
    return run.run_once("gof", _recorded("gof", lambda: merge_gof_parts(run, log=say), say),
                        force=True, log=log)


def _event_array(given: Any, features: Sequence[str] | None, fallback: Sequence[str] | None,
                 which: str) -> tuple[NDArray[np.float64], list[str]]:
    """In-memory events as a checked (N, D) array and D feature names: ``features``, else the
    table's ``columns``, else ``fallback`` when it names D features, else ``x0, x1, ...``."""
    columns = getattr(given, "columns", None)
    x = as_events(given, min_events=1, name=which.replace("_", " "))
    d = x.shape[1]
    if features is not None:
        if len(features) != d:
            raise InputError(f"features names {len(features)} features but the {which} have {d}")
        return x, [str(f) for f in features]
    for names in (columns, fallback):
        if names is not None and len(names) == d:
            return x, [str(n) for n in names]
    return x, [f"x{i}" for i in range(d)]


def _source_names(config: Config) -> list[str]:
    """The feature names of the events ``config`` reads (the file is read once for them)."""
    data = config.data
    if data.path is not None:
        return read_events(data.files(), data.features, weight=data.weight,
                           selection=data.selection, aliases=data.aliases,
                           tree=data.tree).names
    return list(config.data.features or
                [f"x{i}" for i in range(len(config.data.generate.mean))])
