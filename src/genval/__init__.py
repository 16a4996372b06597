"""genval: uncertainty-aware validation of generative models.

Train an ensemble of normalizing flows, combine the members into a w_i f_i mixture with a
frequentist covariance on the weights, produce more events with honest error bands, check
coverage, and run a calibrated learned likelihood-ratio goodness-of-fit test.

``gv.run(events, config=...)`` runs every stage and returns a :class:`~genval.runs.Run`;
``gv.load_run(path)`` reads a run directory back into the same result objects.

References:
    G. Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI"; S. Benevedes and J. Thaler, arXiv:2506.00113.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from genval._version import __version__

# A library logs and lets the application decide what to show (genval._logging).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "errors",
    "members",
    "linalg",
    "sampling",
    "stats",
    "wifi",
    "products",
    "coverage",
    "gof",
    "flows",
    "config",
    "presets",
    "io",
    "splits",
    "rundir",
    "plots",
    "html_report",
    "paper",
    "cli",
    "pipeline",
    "newton",
    "row_scaling",
    "transforms",
    "identification",
    "goodness_of_fit",
    "adapters",
    "display",
    "runs",
    "run",
    "load_run",
    "Run",
    "compute",
    "conditional",
]

_SUBMODULES = {"errors", "members", "linalg", "sampling", "stats", "wifi", "products", "coverage",
               "gof", "flows", "config", "presets", "io", "splits", "rundir", "plots",
               "html_report", "paper", "cli", "pipeline", "newton", "row_scaling",
               "transforms", "adapters", "display", "runs", "identification", "compute",
               "conditional"}
_RUNS = {"run", "load_run", "Run"}


def __getattr__(name: str) -> Any:
    # Submodules load lazily so that `import genval` stays cheap (torch loads only with flows).
    if name in _SUBMODULES:
        return importlib.import_module(f"genval.{name}")
    if name == "goodness_of_fit":
        return importlib.import_module("genval.gof").goodness_of_fit
    if name in _RUNS:
        return getattr(importlib.import_module("genval.runs"), name)
    raise AttributeError(f"module 'genval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
