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

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genval.compute import Executor, open_executor
from genval.config import Config
from genval.pipeline.artifacts import load_fit, load_members, split_events
from genval.pipeline.coverage_stage import stage_coverage
from genval.pipeline.fit_stage import stage_fit
from genval.pipeline.gof_stage import merge_gof_parts, run_gof_part, stage_gof
from genval.pipeline.log import Log
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
    :data:`PARALLEL_STAGES`; None runs it in this process.
    """
    say = log or (lambda _msg: None)
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
                 stages: Sequence[str] = STAGES, log: Log | None = None) -> RunDir:
    """Run ``stages`` (default all) of ``config`` in ``run_dir`` (default ``config.run_dir``).

    Finished stages are skipped, so calling it again after a crash resumes; ``force`` re-runs
    every stage and lets a run directory of another configuration be overwritten. The
    parallel work runs where ``config.compute`` says (:func:`stage_executor`).
    """
    run = RunDir.create(run_dir if run_dir is not None else config.run_dir, config, force=force)
    with run.lock(), stage_executor(run, config, stages, force=force) as executor:
        for stage in stages:
            run_stage(run, stage, force=force, log=log, executor=executor)
    return run


def merge_gof(run: RunDir, *, log: Log | None = None) -> StageOutcome:
    """Complete the gof stage from its toy parts (:func:`merge_gof_parts`), as a stage run:
    the marker is written and the report marked stale. Take the run's lock around it."""
    say = log or (lambda _msg: None)
    return run.run_once("gof", _recorded("gof", lambda: merge_gof_parts(run, log=say), say),
                        force=True, log=log)
