"""Drawing the run's figures without letting a figure end a long run.

A figure is a view of results the stage has already computed (and saved): when it cannot be
drawn (matplotlib missing, values no figure can show, a bug in the drawing) the stage warns
with a :class:`FigureSkippedWarning`, recorded in its marker and shown in the report, and goes
on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from genval._optional import MissingDependencyError
from genval.errors import GenvalWarning
from genval.rundir import RunDir

__all__ = ["FigureSkippedWarning", "FigureSettingWarning", "draw", "figure_guard",
           "remove_figure"]


class FigureSkippedWarning(GenvalWarning):
    """A figure was not drawn (matplotlib is not installed, or drawing failed); the run goes
    on without it."""


class FigureSettingWarning(GenvalWarning):
    """A figure setting (``data.labels``, ``data.units``, ``report.log_y``, ``report.pairs``)
    names a feature the events do not have; that entry is ignored."""


@contextlib.contextmanager
def figure_guard(stem: str) -> Iterator[None]:
    """Turn an error raised while preparing or drawing figure ``stem`` into a warning."""
    try:
        yield
    except MissingDependencyError as exc:
        warnings.warn(f"figure {stem!r} skipped: {exc}", FigureSkippedWarning, stacklevel=3)
    except Exception as exc:  # noqa: BLE001 -- the stage's results are saved; say why, go on
        warnings.warn(f"figure {stem!r} skipped: {type(exc).__name__}: {exc}",
                      FigureSkippedWarning, stacklevel=3)


def draw(run: RunDir, stem: str, plot: Callable[..., Any], **kwargs: Any) -> None:
    """Call a :mod:`genval.plots` function, saving ``figures/STEM`` in the configured formats.

    Without matplotlib, or when drawing fails, the figure is skipped with a
    :class:`FigureSkippedWarning` (recorded in the stage marker and the report) instead of
    failing a long run at its last step.
    """
    cfg = run.config()
    with figure_guard(stem):
        plot(**kwargs, save=run.dir("figures") / stem, formats=cfg.report.formats,
             dpi=cfg.report.dpi)


def remove_figure(run: RunDir, stem: str) -> None:
    """Delete ``figures/STEM.*`` of an earlier run of the stage that no longer draws it."""
    for path in (run.root / "figures").glob(f"{stem}.*"):
        path.unlink(missing_ok=True)
