"""Realistic ensembles and targets for the validation study (``studies/validate.py``).

Members trained on one data set are nearly collinear (Σ|ŵ| in the hundreds, Hessian condition
numbers to 1e14): the statistics are validated on such ensembles, not on well-separated toys.

* :class:`GaussianMixtureMembers`: each member a Gaussian mixture (the members protocol of
  :mod:`genval.members`: ``log_prob``, ``sample``), with an EM fit (:func:`fit_mixture`) so that
  an ensemble is M mixtures fitted to bootstrap replicas of one training set
  (:func:`bootstrap_mixtures`).
* Targets (:data:`TARGETS`): the paper's 2D Gaussian toy (Badaracco et al., Eq. 6), a 2D target
  with a bimodal first feature and a skew-normal second feature (the "2D bimodal Gaussian with a
  heavy tail" of the paper's public code: two Gaussian modes at −0.7 and −0.3 of width 0.12, a
  skew-normal of location 1, scale 0.75 and shape 8), and a correlated 4D Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

from genval.paper import PAPER_TOY_MEAN, PAPER_TOY_STD

__all__ = ["TARGETS", "GaussianMixtureMembers", "Target", "bootstrap_mixtures", "fit_mixture"]


class GaussianMixtureMembers:
    """M members, each a mixture of C Gaussians: ``f_m = Σ_c π_mc N(μ_mc, Σ_mc)``.

    Args:
        weights: (M, C) component weights (rows sum to one).
        means: (M, C, D).
        covs: (M, C, D, D) positive definite.
    """

    def __init__(self, weights: NDArray[np.float64], means: NDArray[np.float64],
                 covs: NDArray[np.float64]) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covs = np.asarray(covs, dtype=np.float64)
        self._chol = np.linalg.cholesky(self.covs)

    @property
    def n_members(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[2]

    @property
    def member_means(self) -> NDArray[np.float64]:
        """Exact first moments (M, D)."""
        return np.einsum("mc,mcd->md", self.weights, self.means)

    def log_prob(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        events = np.asarray(x, dtype=np.float64)
        out = np.empty((self.n_members, len(events)))
        for m in range(self.n_members):
            out[m] = logsumexp(_component_log_densities(events, self.weights[m], self.means[m],
                                                        self._chol[m]), axis=1)
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        gen = np.random.default_rng(rng)
        comp = gen.choice(self.means.shape[1], size=int(n), p=self.weights[member])
        z = gen.standard_normal((int(n), self.n_features))
        return self.means[member, comp] + np.einsum("nij,nj->ni", self._chol[member, comp], z)


def _component_log_densities(x: NDArray[np.float64], weights: NDArray[np.float64],
                             means: NDArray[np.float64], chol: NDArray[np.float64]
                             ) -> NDArray[np.float64]:
    """``log π_c + log N(x; μ_c, L_c L_cᵀ)`` (N, C)."""
    d = x.shape[1]
    out = np.empty((len(x), len(weights)))
    for c in range(len(weights)):
        z = solve_triangular(chol[c], (x - means[c]).T, lower=True, check_finite=False)
        out[:, c] = (np.log(weights[c]) - np.log(np.diag(chol[c])).sum()
                     - 0.5 * d * np.log(2 * np.pi) - 0.5 * np.einsum("ij,ij->j", z, z))
    return out


Mixture = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def fit_mixture(x: NDArray[np.float64], n_components: int, rng: np.random.Generator,
                n_iter: int = 100, tol: float = 1e-6, reg: float = 1e-6,
                init: Mixture | None = None) -> Mixture:
    """Maximum-likelihood Gaussian mixture by EM (full covariances).

    Starts from ``init`` (weights, means, covs) or from k-means++ centres; stops when the mean
    log-likelihood gains less than ``tol`` per iteration. Returns
    ``(weights (C,), means (C, D), covs (C, D, D))``; ``reg`` times the feature variances is
    added to each covariance (keeps a component from collapsing on few events).
    """
    n, d = x.shape
    floor = reg * np.diag(np.var(x, axis=0))
    if init is not None:
        weights, means, covs = (np.array(part, dtype=np.float64) for part in init)
    else:
        centres = [x[rng.integers(n)]]
        for _ in range(1, n_components):
            dist = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
            centres.append(x[rng.choice(n, p=dist / dist.sum())])
        means = np.array(centres)
        covs = np.repeat(np.cov(x, rowvar=False)[None], n_components, axis=0)
        weights = np.full(n_components, 1.0 / n_components)
    previous = -np.inf
    for _ in range(n_iter):
        log_r = _component_log_densities(x, weights, means, np.linalg.cholesky(covs))
        total = logsumexp(log_r, axis=1)
        r = np.exp(log_r - total[:, None])
        nk = r.sum(0)
        weights = nk / n
        means = (r.T @ x) / nk[:, None]
        for c in range(n_components):
            dx = x - means[c]
            covs[c] = (r[:, c, None] * dx).T @ dx / nk[c] + floor
        log_likelihood = float(total.mean())
        if log_likelihood - previous < tol:
            break
        previous = log_likelihood
    return weights, means, covs


def bootstrap_mixtures(x_train: NDArray[np.float64], n_members: int, n_components: int,
                       seed: int) -> GaussianMixtureMembers:
    """``n_members`` mixtures, each fitted by EM to its own bootstrap replica of ``x_train``
    (the paper's Step 1 with Gaussian mixtures instead of flows).

    Every member's EM starts from the mixture fitted to the whole of ``x_train``: the members
    then differ by the bootstrap alone (as trained models of one data set do, once their
    optimisers agree on the mode), which makes them nearly collinear.
    """
    rng = np.random.default_rng(seed)
    start = fit_mixture(x_train, n_components, rng)
    fits = [fit_mixture(x_train[rng.integers(0, len(x_train), len(x_train))], n_components, rng,
                        init=start) for _ in range(n_members)]
    return GaussianMixtureMembers(*(np.array(part) for part in zip(*fits, strict=True)))


@dataclass(frozen=True)
class Target:
    """A training density: its sampler and where its bulk and its 4-sd tail lie along the first
    feature (the study's band points)."""

    name: str
    sample: Callable[[int, np.random.Generator], NDArray[np.float64]]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]


def _toy(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return rng.normal(PAPER_TOY_MEAN, PAPER_TOY_STD, size=(n, 2))


_SKEW_SHAPE = 8.0
_SKEW_DELTA = _SKEW_SHAPE / np.sqrt(1 + _SKEW_SHAPE ** 2)


def _bimodal_skew(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    upper = rng.random(n) < 0.5
    x1 = np.where(upper, -0.3, -0.7) + 0.12 * rng.standard_normal(n)
    z0, z1 = rng.standard_normal(n), rng.standard_normal(n)
    x2 = 1.0 + 0.75 * (_SKEW_DELTA * np.abs(z0) + np.sqrt(1 - _SKEW_DELTA ** 2) * z1)
    return np.column_stack([x1, x2])


_MEAN_4D = np.array([-0.5, 0.6, 0.2, -0.1])
_STD_4D = np.array([0.25, 0.4, 0.3, 0.5])
_CORR_4D = np.array([[1.0, 0.3, 0.0, 0.1], [0.3, 1.0, -0.2, 0.0],
                     [0.0, -0.2, 1.0, 0.25], [0.1, 0.0, 0.25, 1.0]])
_CHOL_4D = np.linalg.cholesky(_CORR_4D * np.outer(_STD_4D, _STD_4D))


def _gauss4(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return _MEAN_4D + rng.standard_normal((n, 4)) @ _CHOL_4D.T


_SKEW_MEAN = 1.0 + 0.75 * _SKEW_DELTA * np.sqrt(2 / np.pi)
_SKEW_STD = 0.75 * np.sqrt(1 - 2 * _SKEW_DELTA ** 2 / np.pi)

TARGETS: dict[str, Target] = {
    "toy": Target("the paper's 2D Gaussian (Eq. 6)", _toy, np.asarray(PAPER_TOY_MEAN),
                  np.asarray(PAPER_TOY_STD)),
    "bimodal": Target("2D bimodal Gaussian x skew-normal tail", _bimodal_skew,
                      np.array([-0.5, _SKEW_MEAN]), np.array([np.sqrt(0.12 ** 2 + 0.2 ** 2),
                                                              _SKEW_STD])),
    "gauss4d": Target("correlated 4D Gaussian", _gauss4, _MEAN_4D, _STD_4D),
}
