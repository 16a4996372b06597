"""Small statistical helpers shared by the coverage study and the goodness-of-fit test."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["clopper_pearson"]


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
