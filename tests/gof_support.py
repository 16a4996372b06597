"""Test support: small known-truth instances and independent reference implementations.

``quick_fit`` is an independent (scipy) implementation of the w_i f_i fit of Eq. (1)-(2) with
the sandwich covariance, so the GoF tests do not depend on genval.wifi; test_wifi compares
against it. ``reference_t`` is an independent (scipy) implementation of the statistic of
Eq. (5).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pytest
import scipy.optimize
from numpy.typing import NDArray

from genval.linalg import sum_to_one_basis
from genval.members import GaussianMembers, log_density_matrix

T = TypeVar("T")

if TYPE_CHECKING:
    from genval.gof import KernelBasis


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


def reference_t(F, G, fit, variant, z0, lam=1e-6, F_ref=None, G_ref=None, barrier=1e-3,
                equilibrate=False):
    """t of Eq. (5) in the paper's coordinates (z, a), solved by scipy trust-exact.

    An implementation independent of genval.gof (no whitening, no row scaling, no Newton).
    Returns ``(t, nll0, nll1)``.

    With check points, their rows join the data with weight ``barrier`` (log-barrier).
    ``equilibrate`` solves in coordinates scaled by each column's largest entry (the same
    optimum): trust-exact fails on columns spanning 30 orders of magnitude (real events).
    """
    n, m = F.shape
    wts = np.ones(n)
    if F_ref is not None:
        F, G = np.vstack([F, F_ref]), np.vstack([G, G_ref])
        wts = np.concatenate([wts, np.full(len(F_ref), barrier)])
    w = fit.weights
    if variant == "ensemble":
        B = sum_to_one_basis(m)
        cinv = np.linalg.inv(B.T @ fit.cov @ B)
        A = F @ B
        p = m - 1
    else:
        A, cinv, p = np.zeros((len(F), 0)), np.zeros((0, 0)), 0
        z0 = np.zeros(0)
    c = F @ w
    k = G.shape[1]

    def make(with_a):
        X = np.hstack([A, G]) if with_a else A

        def parts(theta):
            z, a = theta[:p], theta[p:]
            f = c + X @ theta
            pen = 0.5 * (z - z0) @ cinv @ (z - z0)
            grad_pen = np.concatenate([cinv @ (z - z0), n + 2 * lam * n * a])
            hess_pen = np.zeros((len(theta), len(theta)))
            hess_pen[:p, :p] = cinv
            hess_pen[p:, p:] = 2 * lam * n * np.eye(len(a))
            if with_a:
                pen = pen + n * a.sum() + lam * n * a @ a
            return f, X, pen, grad_pen, hess_pen

        def fun(theta):
            f, _, pen, _, _ = parts(theta)
            return np.inf if np.any(f <= 0) else float(-wts @ np.log(f) + pen)

        def jac(theta):
            f, X_, _, gp, _ = parts(theta)
            return -((wts / f) @ X_) + gp[:len(theta)]

        def hess(theta):
            f, X_, _, _, hp = parts(theta)
            r = X_ * (np.sqrt(wts) / f)[:, None]
            return r.T @ r + hp

        return fun, jac, hess

    def solve(with_a, start):
        fun, jac, hess = make(with_a)
        if start.size == 0:
            return fun(start)
        columns = np.hstack([A, G]) if with_a else A
        s = np.abs(columns).max(axis=0) if equilibrate else np.ones(start.size)
        s = np.where(s > 0, s, 1.0)
        res = scipy.optimize.minimize(lambda u: fun(u / s), start * s, jac=lambda u: jac(u / s) / s,
                                      hess=lambda u: hess(u / s) / np.outer(s, s),
                                      method="trust-exact", options={"gtol": 1e-9, "maxiter": 1000})
        return res.fun

    nll0 = solve(False, np.zeros(p))
    nll1 = solve(True, np.zeros(p + k))
    return 2.0 * (nll0 - nll1), nll0, nll1


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, failing (not hanging the suite) when it takes longer than ``seconds``."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- re-raised below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no result within {seconds} s")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


def small_gof_problem() -> tuple[GaussianMembers, QuickFit, KernelBasis,
                                 NDArray[np.float64]]:
    """The GoF tests' small known-truth instance: 4 Gaussian members, equal true weights, ŵ
    on 2000 events, 8 kernels of σ = 0.4 and 400 test events (seed 42)."""
    from genval.gof import KernelBasis
    from genval.sampling import sample_mixture

    rng = np.random.default_rng(42)
    members = gaussian_ensemble(4, rng)
    truth = np.full(4, 0.25)
    fit = quick_fit(np.exp(log_density_matrix(members, sample_mixture(members, truth, 2000,
                                                                       rng).x)))
    basis = KernelBasis.from_events(sample_mixture(members, truth, 300, rng).x, 8, 0.4,
                                    seed=rng)
    return members, fit, basis, sample_mixture(members, truth, 400, rng).x
