"""Small statistical helpers shared by the coverage study, the goodness-of-fit test and the
figures: exact binomial (Clopper–Pearson) and exact Poisson (Garwood) intervals."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["clopper_pearson", "garwood_interval", "POISSON_CL"]

POISSON_CL = 0.6827
"""Two-sided level of the Poisson error bars on data points (the ±1σ-equivalent 68.27 %)."""


def clopper_pearson(k: ArrayLike, n: int, cl: float = 0.95) -> NDArray[np.float64]:
    """Exact (Clopper–Pearson) binomial interval for ``k`` successes out of ``n``.

    Args:
        k: number(s) of successes.
        n: number of trials (> 0).
        cl: two-sided confidence level.

    Returns:
        Array ``[..., 2]`` with the lower and upper bounds.
    """
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    successes = np.asarray(k, dtype=np.float64)
    alpha = 1.0 - cl
    lower = np.where(successes > 0, stats.beta.ppf(alpha / 2, successes, n - successes + 1), 0.0)
    upper = np.where(successes < n, stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes),
                     1.0)
    return np.stack([lower, upper], axis=-1)


def garwood_interval(n: ArrayLike, cl: float = POISSON_CL) -> NDArray[np.float64]:
    """Exact (Garwood) central interval on the mean of a Poisson variable observed as ``n``.

    ``[χ²_{α/2}(2n) / 2, χ²_{1−α/2}(2n + 2) / 2]`` with ``α = 1 − cl`` and lower bound 0 at
    ``n = 0``: the standard error bar of a histogram's counts (it covers at least ``cl`` for
    every mean, where ``√n`` gives a zero-width bar at 0 and under-covers at small n).

    Args:
        n: observed count(s), non-negative integers.
        cl: two-sided confidence level (default 68.27 %).

    Returns:
        Array ``[..., 2]`` with the lower and upper bounds.

    Raises:
        ValueError: a count is negative, not an integer, or not finite; ``cl`` not in (0, 1).
    """
    if not 0.0 < cl < 1.0:
        raise ValueError(f"cl must lie in (0, 1), got {cl}")
    counts = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(counts) & (counts >= 0) & (counts == np.round(counts))):
        raise ValueError("Poisson counts must be finite non-negative integers")
    alpha = 1.0 - cl
    lower = np.where(counts > 0, stats.chi2.ppf(alpha / 2, 2 * np.maximum(counts, 1)) / 2, 0.0)
    upper = stats.chi2.ppf(1 - alpha / 2, 2 * (counts + 1)) / 2
    return np.stack([lower, upper], axis=-1)
