"""Density members: the M estimators that the w_i f_i ensemble combines.

The statistics of genval never call a density estimator in an inner loop: they work on the
member density matrix ``F[n, m] = f_m(x_n)`` computed once per event set. Anything that
implements :class:`Members` can be combined -- normalizing flows
(:class:`genval.flows.FlowEnsemble`), Gaussian KDEs on bootstrap replicas (:class:`KDEMembers`),
analytic Gaussians (:class:`GaussianMembers`) or user callables (:class:`CallableMembers`); the
paper notes that the framework is agnostic to the density estimator (Sec. 5).

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

from genval._validation import as_event_weights, as_events, as_rng
from genval.errors import InputError

__all__ = [
    "Members",
    "KDEMembers",
    "GaussianMembers",
    "CallableMembers",
    "log_density_matrix",
    "density_matrix",
]


@runtime_checkable
class Members(Protocol):
    """What the ensemble core needs from a set of M density estimators on R^D."""

    @property
    def n_members(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        """Log-density of every member at ``x`` (N, D): array (M, N), float64."""
        ...

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        """``n`` events (n, D) drawn from member ``member``."""
        ...


def log_density_matrix(members: Members, x: ArrayLike) -> NDArray[np.float64]:
    """``log F`` with shape (N, M): ``log f_m(x_n)`` for every event and member.

    Raises:
        InputError: if ``x`` is not a finite (N, D) array or a member returns NaN or +inf.
    """
    events = as_events(x, n_features=members.n_features)
    log_f = np.asarray(members.log_prob(events), dtype=np.float64)
    expected = (members.n_members, events.shape[0])
    if log_f.shape != expected:
        raise InputError(f"members.log_prob returned shape {log_f.shape}, expected {expected}")
    bad = np.isnan(log_f) | np.isposinf(log_f)
    if bad.any():
        m, n = np.argwhere(bad)[0]
        raise InputError(
            f"members.log_prob returned {int(bad.sum())} NaN/+inf values "
            f"(first: member {m}, event {n})"
        )
    return np.ascontiguousarray(log_f.T)


def density_matrix(members: Members, x: ArrayLike) -> NDArray[np.float64]:
    """``F`` with shape (N, M): ``f_m(x_n)``. Prefer :func:`log_density_matrix` far in the tails."""
    return np.exp(log_density_matrix(members, x))


def _bandwidth(replica: NDArray[np.float64], rule: str | float | ArrayLike,
               weights: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Per-feature Gaussian bandwidth for a replica of n events in D dimensions.

    With kernel ``weights`` (normalised to sum 1) the rules use the weighted standard
    deviation (unbiased for reliability weights) and the effective size ``1 / Σ weights²``.
    """
    n, d = replica.shape
    if isinstance(rule, str):
        if weights is None:
            std = replica.std(axis=0, ddof=1)
        else:
            n = 1.0 / float(weights @ weights)
            mean = weights @ replica
            std = np.sqrt((weights @ (replica - mean) ** 2) / max(1.0 - 1.0 / n, 1e-300))
        if rule == "scott":
            factor = n ** (-1.0 / (d + 4))
        elif rule == "silverman":
            factor = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        else:
            raise InputError(f"unknown bandwidth rule {rule!r}; use scott, silverman, a number")
        h = std * factor
    else:
        h = np.broadcast_to(np.asarray(rule, dtype=np.float64), (d,)).copy()
    bad = ~(np.isfinite(h) & (h > 0))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        with np.errstate(all="ignore"):
            lo, hi = replica[:, j].min(), replica[:, j].max()
        raise InputError(f"bandwidth must be finite and positive, got {h}: feature {j} of a "
                         f"member's bootstrap replica of {n} events spans [{lo:.6g}, {hi:.6g}] "
                         "(constant, or beyond float64 arithmetic); drop or rescale it")
    return h


class KDEMembers:
    """Each member a diagonal Gaussian KDE on its own bootstrap replica of the training events.

    With event weights, a replica resamples events uniformly with replacement and each drawn
    event keeps its weight (the bootstrap of a weighted sample: the replica's weighted
    distribution fluctuates as the sample's does); member m is then the weighted KDE
    ``Σ_j s_j K_h(x − x_j) / Σ_j s_j`` over its replica, and samples pick a centre with
    probability ``s_j / Σ s``. Negative weights are refused: a KDE with negative kernel weights
    is negative wherever they dominate (no log-density there) and cannot be sampled by picking
    centres; train flows (whose weighted NLL takes negative weights) instead.

    Args:
        x_train: training events (N, D).
        n_members: number of members M (bootstrap replicas).
        bandwidth: ``"scott"``, ``"silverman"`` (per feature, from each replica) or a value
            (scalar or per feature, in feature units).
        seed: seed of the bootstrap.
        block_elements: events × centres per block in :meth:`log_prob` (default 2^21, i.e.
            16 MiB of float64 temporaries), bounding memory whatever the sizes.
        event_weights: optional non-negative (N,) weights of the training events (None:
            unweighted). Events of weight zero are no centres.

    Raises:
        InputError: bad events, ``n_members < 1``, a bad bandwidth, malformed or negative
            event weights, or a replica with fewer than two events of positive weight.
    """

    def __init__(self, x_train: ArrayLike, n_members: int, *, bandwidth: str | float | ArrayLike
                 = "scott", seed: int | None = 0, block_elements: int = 2**21,
                 event_weights: ArrayLike | None = None) -> None:
        events = as_events(x_train, min_events=2)
        if n_members < 1:
            raise InputError(f"n_members must be >= 1, got {n_members}")
        n = events.shape[0]
        s = None
        if event_weights is not None:
            s = as_event_weights(event_weights, n, name="KDE event weights")
            if (s < 0).any():
                raise InputError(
                    f"KDE members need non-negative event weights ({int((s < 0).sum())} are "
                    "negative): a KDE with negative kernel weights is negative where they "
                    "dominate and cannot be sampled; use flow members, whose weighted NLL "
                    "takes negative weights")
        rng = np.random.default_rng(seed)
        self._replicas: list[NDArray[np.float64]] = []
        # Log kernel weights per member (normalised to sum 1); None: equal weights.
        self._log_weights: list[NDArray[np.float64] | None] = []
        for m in range(n_members):
            picks = rng.integers(0, n, size=n)
            if s is None:
                self._replicas.append(events[picks])
                self._log_weights.append(None)
                continue
            picks = picks[s[picks] > 0]
            if picks.size < 2:
                raise InputError(f"bootstrap replica {m} holds {picks.size} events of positive "
                                 "weight: a KDE needs at least 2")
            self._replicas.append(events[picks])
            self._log_weights.append(np.log(s[picks] / s[picks].sum()))
        self._bandwidths = [_bandwidth(r, bandwidth, None if lw is None else np.exp(lw))
                            for r, lw in zip(self._replicas, self._log_weights, strict=True)]
        self._block_elements = int(block_elements)

    @property
    def n_members(self) -> int:
        return len(self._replicas)

    @property
    def n_features(self) -> int:
        return self._replicas[0].shape[1]

    @property
    def bandwidths(self) -> NDArray[np.float64]:
        """Per-member, per-feature bandwidths (M, D)."""
        return np.stack(self._bandwidths)

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        out = np.empty((self.n_members, events.shape[0]))
        for m, (centres, h) in enumerate(zip(self._replicas, self._bandwidths, strict=True)):
            c = centres / h
            c_sq = np.einsum("ij,ij->i", c, c)
            log_w = self._log_weights[m]
            # Equal weights 1/n enter as -log n in the constant; others inside the logsumexp.
            norm = ((-np.log(len(c)) if log_w is None else 0.0) - np.log(h).sum()
                    - 0.5 * len(h) * np.log(2 * np.pi))
            rows = max(1, self._block_elements // len(c))
            for start in range(0, events.shape[0], rows):
                z = events[start:start + rows] / h
                # |z - c|^2 through one GEMM; clamp the rounding below zero.
                d2 = np.einsum("ij,ij->i", z, z)[:, None] + c_sq[None, :] - 2.0 * (z @ c.T)
                np.maximum(d2, 0.0, out=d2)
                exponent = -0.5 * d2 if log_w is None else log_w[None, :] - 0.5 * d2
                out[m, start:start + len(z)] = logsumexp(exponent, axis=1) + norm
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        gen = as_rng(rng)
        centres, h = self._replicas[member], self._bandwidths[member]
        log_w = self._log_weights[member]
        picks = centres[gen.integers(0, len(centres), size=int(n)) if log_w is None
                        else gen.choice(len(centres), size=int(n), p=np.exp(log_w))]
        return picks + gen.standard_normal(picks.shape) * h


class GaussianMembers:
    """Each member a multivariate normal ``N(mean_m, cov_m)``: exact densities, moments, samples.

    Useful as a known-truth ensemble for tests and coverage studies.

    Args:
        means: (M, D) member means.
        covs: (M, D, D) member covariances, or (M, D) diagonal variances.
    """

    def __init__(self, means: ArrayLike, covs: ArrayLike) -> None:
        mu = np.atleast_2d(np.asarray(means, dtype=np.float64))
        cov = np.asarray(covs, dtype=np.float64)
        if cov.ndim == 2:
            cov = np.stack([np.diag(c) for c in cov])
        if cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]):
            raise InputError(f"covs shape {cov.shape} does not match means {mu.shape}")
        try:
            self._chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as exc:
            raise InputError("every member covariance must be positive definite") from exc
        self.means = mu
        self.covs = cov
        self._log_norm = -np.log(np.diagonal(self._chol, axis1=1, axis2=2)).sum(axis=1) \
            - 0.5 * mu.shape[1] * np.log(2 * np.pi)

    @property
    def n_members(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        out = np.empty((self.n_members, events.shape[0]))
        for m in range(self.n_members):
            z = solve_triangular(self._chol[m], (events - self.means[m]).T, lower=True,
                                 check_finite=False)
            out[m] = self._log_norm[m] - 0.5 * np.einsum("ij,ij->j", z, z)
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        gen = as_rng(rng)
        z = gen.standard_normal((int(n), self.n_features))
        return self.means[member] + z @ self._chol[member].T


class CallableMembers:
    """Members given by user functions.

    Args:
        log_probs: one callable per member, ``x (N, D) -> log f(x) (N,)``.
        samplers: optional, one callable per member, ``(n, rng) -> (n, D)``; without them
            :meth:`sample` raises.
        n_features: D.
    """

    def __init__(self, log_probs: Sequence[Callable[[NDArray[np.float64]], ArrayLike]],
                 n_features: int, samplers: Sequence[Callable[[int, np.random.Generator],
                                                              ArrayLike]] | None = None) -> None:
        if len(log_probs) < 1:
            raise InputError("need at least one member")
        if samplers is not None and len(samplers) != len(log_probs):
            raise InputError(f"{len(samplers)} samplers for {len(log_probs)} members")
        self._log_probs = list(log_probs)
        self._samplers = None if samplers is None else list(samplers)
        self._n_features = int(n_features)

    @property
    def n_members(self) -> int:
        return len(self._log_probs)

    @property
    def n_features(self) -> int:
        return self._n_features

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        out = np.empty((self.n_members, events.shape[0]))
        for m, fn in enumerate(self._log_probs):
            values = np.asarray(fn(events), dtype=np.float64).reshape(-1)
            if values.shape != (events.shape[0],):
                raise InputError(f"member {m} returned {values.shape[0]} values for "
                                 f"{events.shape[0]} events")
            out[m] = values
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        if self._samplers is None:
            raise InputError("these CallableMembers were built without samplers")
        draws = np.asarray(self._samplers[member](int(n), as_rng(rng)), dtype=np.float64)
        return as_events(draws.reshape(int(n), self.n_features), n_features=self.n_features,
                         min_events=0)
