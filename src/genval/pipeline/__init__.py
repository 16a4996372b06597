"""The stages of a genval run, each reading and writing a :class:`~genval.rundir.RunDir`.

``split → train → fit → sample → coverage → gof → report`` (paper Steps 1–4), one module per
stage (``split_stage`` ... ``report_stage``). Each stage function takes the run directory,
reads what earlier stages wrote and writes its own artifacts, both through
:mod:`genval.pipeline.artifacts`; :func:`run_stage` adds the skip-if-finished bookkeeping and
:func:`run_pipeline` runs them all. Only the split stage sees the full event table: the others
read their own split, so the test events never reach training or the weight fit.

Warnings raised inside a stage are recorded (in the stage's marker and the report) and logged,
not lost: a long unattended run should say what went wrong in its artifacts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genval.config import Config
from genval.pipeline.artifacts import load_fit, load_members, split_events, split_weights
from genval.pipeline.coverage_stage import stage_coverage
from genval.pipeline.fit_stage import stage_fit
from genval.pipeline.gof_stage import stage_gof
from genval.pipeline.log import Log
from genval.pipeline.report_stage import stage_report
from genval.pipeline.sample_stage import stage_sample
from genval.pipeline.seeds import stage_seed
from genval.pipeline.split_stage import stage_split
from genval.pipeline.train_stage import stage_train
from genval.rundir import STAGES, RunDir, StageOutcome

__all__ = [
    "STAGE_FUNCTIONS",
    "run_stage",
    "run_pipeline",
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


def run_stage(run: RunDir, stage: str, *, force: bool = False, log: Log | None = None
              ) -> StageOutcome:
    """Run one stage unless finished; warnings it raises are logged and kept in its marker."""
    say = log or (lambda _msg: None)

    def work() -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = STAGE_FUNCTIONS[stage](run, log=say)
        messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        for message in messages:
            say(f"[{stage}] warning: {message}")
        return {**info, "warnings": messages} if messages else info

    return run.run_once(stage, work, force=force, log=log)


def run_pipeline(config: Config, *, run_dir: str | Path | None = None, force: bool = False,
                 stages: Sequence[str] = STAGES, log: Log | None = None) -> RunDir:
    """Run ``stages`` (default all) of ``config`` in ``run_dir`` (default ``config.run_dir``).

    Finished stages are skipped, so calling it again after a crash resumes; ``force`` re-runs
    every stage and lets a run directory of another configuration be overwritten.
    """
    run = RunDir.create(run_dir if run_dir is not None else config.run_dir, config, force=force)
    with run.lock():
        for stage in stages:
            run_stage(run, stage, force=force, log=log)
    return run
