"""genval: uncertainty-aware validation of generative models.

Train an ensemble of normalizing flows, combine the members into a w_i f_i mixture with a
frequentist covariance on the weights, produce more events with honest error bands, check
coverage, and run a calibrated learned likelihood-ratio goodness-of-fit test.

References:
    G. Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI"; S. Benevedes and J. Thaler, arXiv:2506.00113.
"""

from __future__ import annotations

import importlib
from typing import Any

from genval._version import __version__

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
    "conditional",
    "goodness_of_fit",
]

_SUBMODULES = {"errors", "members", "linalg", "sampling", "stats", "wifi", "products", "coverage",
               "gof", "flows", "config", "presets", "io", "splits", "rundir", "plots",
               "html_report", "paper", "cli", "pipeline", "newton", "row_scaling",
               "transforms", "conditional"}


def __getattr__(name: str) -> Any:
    # Submodules load lazily so that `import genval` stays cheap (torch loads only with flows).
    if name in _SUBMODULES:
        return importlib.import_module(f"genval.{name}")
    if name == "goodness_of_fit":
        return importlib.import_module("genval.gof").goodness_of_fit
    raise AttributeError(f"module 'genval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
