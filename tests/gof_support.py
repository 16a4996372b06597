"""Test support: small known-truth instances and an independent reference weight fit.

``quick_fit`` is an independent (scipy) implementation of the w_i f_i fit of Eq. (1)-(2) with
the sandwich covariance, so the GoF tests do not depend on genval.wifi; test_wifi compares
against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
from numpy.typing import NDArray

from genval.members import GaussianMembers


@dataclass
class QuickFit:
    weights: NDArray[np.float64]
    cov: NDArray[np.float64]


def trust_exact_weights(F: NDArray[np.float64]) -> scipy.optimize.OptimizeResult:
    """Minimise L(w) = −mean log(F w) + Σ w (Eq. 1) with scipy ``trust-exact``."""
    n, m = F.shape

    def fun(w: NDArray[np.float64]) -> float:
        f = F @ w
        return np.inf if np.any(f <= 0) else float(-np.log(f).mean() + w.sum())

    def jac(w: NDArray[np.float64]) -> NDArray[np.float64]:
        return -(F / (F @ w)[:, None]).mean(axis=0) + 1.0

    def hess(w: NDArray[np.float64]) -> NDArray[np.float64]:
        r = F / (F @ w)[:, None]
        return r.T @ r / n

    result = scipy.optimize.minimize(fun, np.full(m, 1.0 / m), jac=jac, hess=hess,
                                     method="trust-exact", options={"gtol": 1e-12})
    # trust-exact may stop with "bad approximation" once it is at rounding level: judge it by
    # its gradient instead of its success flag.
    assert np.max(np.abs(jac(result.x))) < 1e-8, result
    return result


def quick_fit(F: NDArray[np.float64]) -> QuickFit:
    """ŵ from :func:`trust_exact_weights` with the sandwich Cov(ŵ) of Eq. (2)."""
    n = F.shape[0]
    w = trust_exact_weights(F).x
    r = F / (F @ w)[:, None]
    v = r.T @ r / n
    u = np.cov((1.0 - r).T, bias=True)
    vinv = np.linalg.pinv(v)
    return QuickFit(w, vinv @ u @ vinv / n)


def gaussian_ensemble(m: int, rng: np.random.Generator, spread: float = 0.3,
                      d: int = 2) -> GaussianMembers:
    """M Gaussian members around a common centre with varied means and widths."""
    means = spread * rng.standard_normal((m, d))
    variances = (0.6 + 0.4 * rng.random((m, d))) ** 2
    return GaussianMembers(means, variances)
