"""Realistic near-collinear ensembles for tests, studies and benchmarks (issue: statistics on
ensembles whose Σ|ŵ| reaches the hundreds).

``jittered_toy_ensemble`` builds 60 Gaussian members jittered around the paper's 2D toy
(Badaracco et al., Eq. 6): means moved by ``jitter`` standard deviations, widths by
``jitter`` in log, correlations of about ``jitter``. The weight-fit events (20k) are drawn
from the members' equal-weight mixture, a truth that every member approximates as bootstrap
members do; the fitted ŵ (Eq. 1, plain maximum likelihood) then cancels between
near-duplicates: Σ|ŵ| = 410, Hessian condition 5e8 at the default seed, and f(x; ŵ) is
negative on ≈ 1e-4 of ∫|f|.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from genval.members import GaussianMembers, log_density_matrix
from genval.paper import PAPER_TOY_MEAN, PAPER_TOY_STD
from genval.wifi import WeightFit, fit_weights

__all__ = ["RealisticEnsemble", "jittered_members", "jittered_toy_ensemble",
           "ten_bootstrap_gaussians"]


@dataclass(frozen=True)
class RealisticEnsemble:
    """Members, their fitted weights and the fit events' ``log F``."""

    members: GaussianMembers
    fit: WeightFit
    log_f: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        return self.fit.weights


def _jittered(rng: np.random.Generator, n_members: int, jitter: float) -> GaussianMembers:
    """Gaussians around the paper's toy: means moved by ``jitter`` sd, widths by ``jitter`` in
    log, correlations of about ``jitter``."""
    mu, sd = np.asarray(PAPER_TOY_MEAN), np.asarray(PAPER_TOY_STD)
    means = mu + jitter * sd * rng.standard_normal((n_members, 2))
    covs = np.empty((n_members, 2, 2))
    for m in range(n_members):
        s = sd * np.exp(jitter * rng.standard_normal(2))
        rho = jitter * rng.standard_normal()
        covs[m] = [[s[0] ** 2, rho * s[0] * s[1]], [rho * s[0] * s[1], s[1] ** 2]]
    return GaussianMembers(means, covs)


@functools.lru_cache(maxsize=1)
def ten_bootstrap_gaussians() -> GaussianMembers:
    """Issue 10's collinear coverage case: 10 Gaussians fitted (closed form) to bootstrap
    replicas of one set of 80k toy events; their means differ by ~σ/√80k, so the weight fit
    cancels hundreds of units between them (Σ|ŵ| ≈ 600-5000)."""
    gen = np.random.default_rng(1)
    base = gen.normal(PAPER_TOY_MEAN, PAPER_TOY_STD, size=(80_000, 2))
    means, covs = [], []
    for _ in range(10):
        replica = base[gen.integers(0, len(base), len(base))]
        means.append(replica.mean(axis=0))
        covs.append(np.cov(replica, rowvar=False, bias=True))
    return GaussianMembers(np.array(means), np.array(covs))


def jittered_members(n_members: int = 60, jitter: float = 0.05, seed: int = 1
                     ) -> tuple[GaussianMembers, np.ndarray]:
    """Issue 10's weakly identified ensemble: Gaussians jittered by ``jitter`` (5 %: Hessian
    condition ~1e14 at 50k events) and a truth inside their span, Dirichlet(1) weights."""
    rng = np.random.default_rng(seed)
    members = _jittered(rng, n_members, jitter)
    return members, rng.dirichlet(np.ones(n_members))


def jittered_toy_ensemble(n_members: int = 60, jitter: float = 0.2, n_events: int = 20_000,
                          seed: int = 1) -> RealisticEnsemble:
    """The near-collinear ensemble described in the module docstring (about 1 s)."""
    rng = np.random.default_rng(seed)
    members = _jittered(rng, n_members, jitter)
    counts = rng.multinomial(n_events, np.full(n_members, 1 / n_members))
    x = np.concatenate([members.sample(int(c), k, rng) for k, c in enumerate(counts)])
    log_f = log_density_matrix(members, x)
    with warnings.catch_warnings():  # ill-conditioned by construction: that is the point
        warnings.simplefilter("ignore")
        # The plain maximum-likelihood fit, without the ridge on weakly identified directions
        # (which would bring Σ|ŵ| to ~40): the sampler must cope with whatever weights it gets.
        fit = fit_weights(log_f, log=True, max_leverage=None)
    return RealisticEnsemble(members, fit, log_f)
