"""Drawing the run's figures without letting a missing plotting library end a long run."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from genval._optional import MissingDependencyError
from genval.errors import GenvalWarning
from genval.rundir import RunDir

__all__ = ["FigureSkippedWarning", "draw"]


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
