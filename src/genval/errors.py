"""Exception and warning hierarchy of genval.

Errors are raised for input that cannot give a meaningful number; warnings are issued (and
recorded on result objects) when a number is produced but deserves a caveat. In the test suite
warnings are errors, so every warning a code path can emit is exercised by a test.
"""

from __future__ import annotations

__all__ = [
    "GenvalError",
    "InputError",
    "OutputPathError",
    "FitError",
    "ArtifactError",
    "GenvalWarning",
    "ConvergenceWarning",
    "IllConditionedWarning",
    "NegativeDensityWarning",
]


class GenvalError(Exception):
    """Base class of every error raised by genval."""


class InputError(GenvalError, ValueError):
    """Input data or arguments that cannot be used (non-finite, wrong shape, too few events)."""


class OutputPathError(InputError):
    """An output path that would leave the run directory (absolute, ``..``, a symlink out)."""


class FitError(GenvalError, RuntimeError):
    """A fit that cannot produce a trustworthy result (infeasible start, singular problem)."""


class ArtifactError(GenvalError, OSError):
    """A saved artifact that is missing, truncated, corrupted or not a genval file."""


class GenvalWarning(UserWarning):
    """Base class of every warning issued by genval."""


class ConvergenceWarning(GenvalWarning):
    """An iterative solver stopped before its convergence criterion was met."""


class IllConditionedWarning(GenvalWarning):
    """A matrix is close to singular (near-duplicate ensemble members, degenerate kernels)."""


class NegativeDensityWarning(GenvalWarning):
    """A signed mixture is non-positive somewhere it is evaluated."""
