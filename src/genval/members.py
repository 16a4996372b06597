"""Density members: the M estimators that the w_i f_i ensemble combines.

The statistics of genval never call a density estimator in an inner loop: they work on the
member density matrix ``F[n, m] = f_m(x_n)`` computed once per event set. Anything that
implements :class:`Members` can be combined -- normalizing flows
(:class:`genval.flows.FlowEnsemble`), Gaussian KDEs on bootstrap replicas (:class:`KDEMembers`),
analytic Gaussians (:class:`GaussianMembers`) or user callables (:class:`CallableMembers`); the
paper notes that the framework is agnostic to the density estimator (Sec. 5).

**Conditional members** ``f_m(x | c)`` take the observed context ``c`` (C features per event,
e.g. a particle's energy) as input: ``log_prob(x, context=c)`` returns ``log f_m(x_n | c_n)``
for N pairs ``(x_n, c_n)`` and ``sample(n, member, rng, context=c)`` draws ``x | c``. Their
``n_context`` attribute says how many context features they take (0 or absent: unconditional
members, which refuse a context). Every ``f_m(· | c)`` is a density in x for each c, so the
rows ``F[n, m] = f_m(x_n | c_n)`` enter Eqs. (1)-(5) unchanged (the paper's conclusion: the same
test within each context). :class:`KDEMembers` (with ``context=``: the Nadaraya-Watson
conditional of a joint KDE), :class:`ConditionalGaussianMembers`, :class:`CallableMembers`
(``n_context=``) and :class:`genval.flows.FlowEnsemble` (``n_context=``) are conditional.

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

from genval._validation import as_context, as_event_weights, as_events, as_rng
from genval.errors import InputError

__all__ = [
    "Members",
    "KDEMembers",
    "GaussianMembers",
    "CallableMembers",
    "ConditionalGaussianMembers",
    "log_density_matrix",
    "density_matrix",
    "n_context_of",
    "check_context",
]


@runtime_checkable
class Members(Protocol):
    """What the ensemble core needs from a set of M density estimators on R^D.

    Conditional members also have ``n_context`` (C > 0, the number of context features) and
    need ``context`` (N, C) in both methods; unconditional members may omit the ``context``
    keyword (genval never passes it to them) or accept it and refuse anything but None.
    """

    @property
    def n_members(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        """Log-density of every member at ``x`` (N, D) (given ``context`` (N, C)):
        array (M, N), float64."""
        ...

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        """``n`` events (n, D) drawn from member ``member`` (row i given ``context[i]``)."""
        ...


def n_context_of(members: Members) -> int:
    """Context features C the members condition on (0: unconditional members)."""
    return int(getattr(members, "n_context", 0) or 0)


def check_context(n_context: int, context: ArrayLike | None, n_events: int, *,
                  name: str = "context", broadcast: bool = False
                  ) -> NDArray[np.float64] | None:
    """The context of ``n_events`` events for members with ``n_context`` context features.

    Returns None for unconditional members (``n_context = 0``) called without a context.

    Raises:
        InputError: a context for unconditional members, none for conditional ones, or a
            malformed context (see :func:`genval._validation.as_context`).
    """
    if n_context == 0:
        if context is not None:
            raise InputError("these members are unconditional (n_context = 0): they take no "
                             "context")
        return None
    if context is None:
        raise InputError(f"these members are conditional on {n_context} context feature(s): "
                         "pass context=(N, C) with the events")
    return as_context(context, n_events, n_context, name=name, broadcast=broadcast)


def log_density_matrix(members: Members, x: ArrayLike, context: ArrayLike | None = None
                       ) -> NDArray[np.float64]:
    """``log F`` with shape (N, M): ``log f_m(x_n)`` (``log f_m(x_n | c_n)`` with ``context``)
    for every event and member.

    Raises:
        InputError: if ``x`` is not a finite (N, D) array, the context does not match the
            members (see :func:`check_context`), or a member returns NaN or +inf.
    """
    events = as_events(x, n_features=members.n_features)
    ctx = check_context(n_context_of(members), context, events.shape[0])
    # Unconditional members are called exactly as before context existed (user members need
    # not know the keyword).
    log_f = np.asarray(members.log_prob(events) if ctx is None
                       else members.log_prob(events, context=ctx), dtype=np.float64)
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


def density_matrix(members: Members, x: ArrayLike, context: ArrayLike | None = None
                   ) -> NDArray[np.float64]:
    """``F`` with shape (N, M): ``f_m(x_n)`` (given ``context``). Prefer
    :func:`log_density_matrix` far in the tails."""
    return np.exp(log_density_matrix(members, x, context))


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

    **Conditional members** (``context``: the training events' contexts ``c_j``). Member m is
    the conditional density of the joint product-kernel KDE of ``(x, c)``,

        f_m(x | c) = Σ_j π_j(c) K_h(x − x_j),   π_j(c) = s_j K_g(c − c_j) / Σ_i s_i K_g(c − c_i),

    (the Nadaraya-Watson conditional density): an exact density in x for every c (the π_j sum to
    one), exactly sampled by picking centre j with probability ``π_j(c)`` and adding ``h z``.
    The bandwidth rules then act on the joint ``(x, c)`` replica (dimension D + C).

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
        context: optional (N, C) contexts of the training events: conditional members
            ``f_m(x | c)`` (None: unconditional, as before).
        context_bandwidth: the context kernels' bandwidth ``g``: a rule (default ``"scott"``)
            or a value (scalar or per context feature, in context units).

    Raises:
        InputError: bad events or contexts, ``n_members < 1``, a bad bandwidth, malformed or
            negative event weights, or a replica with fewer than two events of positive weight.
    """

    def __init__(self, x_train: ArrayLike, n_members: int, *, bandwidth: str | float | ArrayLike
                 = "scott", seed: int | None = 0, block_elements: int = 2**21,
                 event_weights: ArrayLike | None = None, context: ArrayLike | None = None,
                 context_bandwidth: str | float | ArrayLike = "scott") -> None:
        events = as_events(x_train, min_events=2)
        if n_members < 1:
            raise InputError(f"n_members must be >= 1, got {n_members}")
        n = events.shape[0]
        ctx = None if context is None else as_context(
            context, n, np.shape(context)[1] if np.ndim(context) == 2 else 1,
            name="training contexts")
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
        self._context_replicas: list[NDArray[np.float64]] = []
        # Log kernel weights per member (normalised to sum 1); None: equal weights.
        self._log_weights: list[NDArray[np.float64] | None] = []
        for m in range(n_members):
            picks = rng.integers(0, n, size=n)
            if s is not None:
                picks = picks[s[picks] > 0]
                if picks.size < 2:
                    raise InputError(f"bootstrap replica {m} holds {picks.size} events of "
                                     "positive weight: a KDE needs at least 2")
            self._replicas.append(events[picks])
            if ctx is not None:
                self._context_replicas.append(ctx[picks])
            self._log_weights.append(None if s is None else np.log(s[picks] / s[picks].sum()))
        self._block_elements = int(block_elements)
        if ctx is None:
            self._bandwidths = [_bandwidth(r, bandwidth, None if lw is None else np.exp(lw))
                                for r, lw in zip(self._replicas, self._log_weights, strict=True)]
            self._context_bandwidths: list[NDArray[np.float64]] = []
            return
        d = events.shape[1]
        self._bandwidths, self._context_bandwidths = [], []
        for r, rc, lw in zip(self._replicas, self._context_replicas, self._log_weights,
                             strict=True):
            joint = np.hstack([r, rc])
            kw = None if lw is None else np.exp(lw)
            h = (_bandwidth(joint, bandwidth, kw)[:d] if isinstance(bandwidth, str)
                 else _bandwidth(r, bandwidth))
            g = (_bandwidth(joint, context_bandwidth, kw)[d:] if isinstance(context_bandwidth, str)
                 else _bandwidth(rc, context_bandwidth))
            self._bandwidths.append(h)
            self._context_bandwidths.append(g)

    @property
    def n_members(self) -> int:
        return len(self._replicas)

    @property
    def n_features(self) -> int:
        return self._replicas[0].shape[1]

    @property
    def n_context(self) -> int:
        """Context features C of conditional members (0: unconditional)."""
        return self._context_replicas[0].shape[1] if self._context_replicas else 0

    @property
    def bandwidths(self) -> NDArray[np.float64]:
        """Per-member, per-feature bandwidths (M, D)."""
        return np.stack(self._bandwidths)

    @property
    def context_bandwidths(self) -> NDArray[np.float64]:
        """Per-member, per-context-feature bandwidths (M, C) of conditional members."""
        return (np.stack(self._context_bandwidths) if self._context_bandwidths
                else np.zeros((self.n_members, 0)))

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        ctx = check_context(self.n_context, context, events.shape[0])
        if ctx is not None:
            return self._conditional_log_prob(events, ctx)
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

    def _context_log_weights(self, m: int, ctx: NDArray[np.float64]) -> NDArray[np.float64]:
        """``log π_j(c_n)`` (n, n_centres) of member m: the centres' normalised weights."""
        g = self._context_bandwidths[m]
        return _log_kernel_weights(ctx / g, self._context_replicas[m] / g, self._log_weights[m])

    def _conditional_log_prob(self, events: NDArray[np.float64], ctx: NDArray[np.float64]
                              ) -> NDArray[np.float64]:
        out = np.empty((self.n_members, events.shape[0]))
        for m, (centres, h) in enumerate(zip(self._replicas, self._bandwidths, strict=True)):
            c = centres / h
            norm = -np.log(h).sum() - 0.5 * len(h) * np.log(2 * np.pi)
            rows = max(1, self._block_elements // len(c))
            for start in range(0, events.shape[0], rows):
                stop = start + rows
                log_pi = self._context_log_weights(m, ctx[start:stop])
                d2 = _squared_distances(events[start:stop] / h, c)
                out[m, start:start + len(log_pi)] = logsumexp(log_pi - 0.5 * d2, axis=1) + norm
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        gen = as_rng(rng)
        centres, h = self._replicas[member], self._bandwidths[member]
        ctx = check_context(self.n_context, context, int(n), broadcast=True)
        if ctx is not None:
            picks = np.empty(int(n), dtype=np.int64)
            rows = max(1, self._block_elements // len(centres))
            for start in range(0, int(n), rows):
                # Inverse-CDF pick of centre j with probability π_j(c_i), row by row.
                p = np.exp(self._context_log_weights(member, ctx[start:start + rows]))
                cdf = np.cumsum(p, axis=1)
                u = gen.random(len(p)) * cdf[:, -1]
                picks[start:start + len(p)] = np.minimum((cdf < u[:, None]).sum(axis=1),
                                                         len(centres) - 1)
            return centres[picks] + gen.standard_normal((int(n), self.n_features)) * h
        log_w = self._log_weights[member]
        picks = centres[gen.integers(0, len(centres), size=int(n)) if log_w is None
                        else gen.choice(len(centres), size=int(n), p=np.exp(log_w))]
        return picks + gen.standard_normal(picks.shape) * h


def _squared_distances(z: NDArray[np.float64], c: NDArray[np.float64]) -> NDArray[np.float64]:
    """``|z_i − c_j|²`` (n, m) through one GEMM, rounding below zero clamped."""
    d2 = (np.einsum("ij,ij->i", z, z)[:, None] + np.einsum("ij,ij->i", c, c)[None, :]
          - 2.0 * (z @ c.T))
    return np.maximum(d2, 0.0, out=d2)


def _log_kernel_weights(z: NDArray[np.float64], c: NDArray[np.float64],
                        log_w: NDArray[np.float64] | None) -> NDArray[np.float64]:
    """``log(s_j K(z_i − c_j) / Σ_l s_l K(z_i − c_l))`` in the log domain (no underflow far
    from every centre: the nearest centres then carry the weight)."""
    exponent = -0.5 * _squared_distances(z, c)
    if log_w is not None:
        exponent += log_w[None, :]
    return exponent - logsumexp(exponent, axis=1)[:, None]


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

    @property
    def n_context(self) -> int:
        """0: unconditional members (a context is refused)."""
        return 0

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        check_context(0, context, events.shape[0])
        out = np.empty((self.n_members, events.shape[0]))
        for m in range(self.n_members):
            z = solve_triangular(self._chol[m], (events - self.means[m]).T, lower=True,
                                 check_finite=False)
            out[m] = self._log_norm[m] - 0.5 * np.einsum("ij,ij->j", z, z)
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        check_context(0, context, int(n), broadcast=True)
        gen = as_rng(rng)
        z = gen.standard_normal((int(n), self.n_features))
        return self.means[member] + z @ self._chol[member].T


class ConditionalGaussianMembers:
    """Each member a normal ``x | c ~ N(μ_m(c), Σ_m(c))``: exact conditional densities and draws.

    A known-truth conditional ensemble for tests and studies (e.g. a detector response whose
    mean and resolution depend on the particle's energy). The mean and covariance are given
    as functions of the context, evaluated for all members at once.

    Args:
        mean: ``context (N, C) -> (M, N, D)``, the members' means at each context.
        cov: ``context (N, C) -> (M, N, D)`` diagonal variances or ``(M, N, D, D)`` full
            covariances at each context.
        n_members: M. n_features: D. n_context: C (>= 1).

    Raises:
        InputError: (when evaluated) functions returning the wrong shape, non-finite values or
            a covariance that is not positive definite.
    """

    def __init__(self, mean: Callable[[NDArray[np.float64]], ArrayLike],
                 cov: Callable[[NDArray[np.float64]], ArrayLike], *, n_members: int,
                 n_features: int, n_context: int) -> None:
        for name, value in (("n_members", n_members), ("n_features", n_features),
                            ("n_context", n_context)):
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self._mean, self._cov = mean, cov
        self._shape = (int(n_members), int(n_features), int(n_context))

    @property
    def n_members(self) -> int:
        return self._shape[0]

    @property
    def n_features(self) -> int:
        return self._shape[1]

    @property
    def n_context(self) -> int:
        return self._shape[2]

    def moments(self, context: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Means (M, N, D) and Cholesky factors (M, N, D, D) of every member at each context."""
        mu, factor = self._moments(as_context(context, np.shape(context)[0], self.n_context))
        if factor.ndim == 3:  # diagonal: standard deviations
            chol = np.zeros(factor.shape + (factor.shape[-1],))
            idx = np.arange(factor.shape[-1])
            chol[..., idx, idx] = factor
            return mu, chol
        return mu, factor

    def _moments(self, ctx: NDArray[np.float64]
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Means and either standard deviations (M, N, D) or Cholesky factors (M, N, D, D)."""
        m, d, n = self.n_members, self.n_features, ctx.shape[0]
        mu = np.asarray(self._mean(ctx), dtype=np.float64)
        if mu.shape != (m, n, d) or not np.all(np.isfinite(mu)):
            raise InputError(f"mean(context) must return finite values of shape {(m, n, d)}, "
                             f"got {mu.shape}")
        cov = np.asarray(self._cov(ctx), dtype=np.float64)
        if cov.shape == (m, n, d):
            if not np.all(np.isfinite(cov) & (cov > 0)):
                raise InputError("cov(context) returned non-positive or non-finite variances")
            return mu, np.sqrt(cov)
        if cov.shape != (m, n, d, d) or not np.all(np.isfinite(cov)):
            raise InputError(f"cov(context) must return finite variances {(m, n, d)} or "
                             f"covariances {(m, n, d, d)}, got {cov.shape}")
        try:
            return mu, np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as exc:
            raise InputError("every member covariance must be positive definite") from exc

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features, min_events=0)
        ctx = check_context(self.n_context, context, events.shape[0])
        assert ctx is not None
        mu, factor = self._moments(ctx)
        resid = events[None] - mu
        if factor.ndim == 3:  # diagonal covariances: no solve
            z = resid / factor
            log_det = np.log(factor).sum(axis=-1)
        else:
            z = np.linalg.solve(factor, resid[..., None])[..., 0]
            log_det = np.log(np.diagonal(factor, axis1=-2, axis2=-1)).sum(axis=-1)
        return (-0.5 * np.einsum("mnd,mnd->mn", z, z) - log_det
                - 0.5 * self.n_features * np.log(2 * np.pi))

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        if not 0 <= member < self.n_members:
            raise InputError(f"member {member} out of range 0..{self.n_members - 1}")
        ctx = check_context(self.n_context, context, int(n), broadcast=True)
        assert ctx is not None
        gen = as_rng(rng)
        mu, factor = self._moments(ctx)
        z = gen.standard_normal((int(n), self.n_features))
        if factor.ndim == 3:
            return mu[member] + factor[member] * z
        return mu[member] + np.einsum("nij,nj->ni", factor[member], z)


class CallableMembers:
    """Members given by user functions.

    Args:
        log_probs: one callable per member, ``x (N, D) -> log f(x) (N,)``; with ``n_context``
            ``(x (N, D), context (N, C)) -> log f(x | c) (N,)``.
        samplers: optional, one callable per member, ``(n, rng) -> (n, D)``; with
            ``n_context`` ``(n, rng, context (n, C)) -> (n, D)``, row i drawn given
            ``context[i]``. Without them :meth:`sample` raises.
        n_features: D.
        n_context: C, the context features of conditional members (0: unconditional).
    """

    def __init__(self, log_probs: Sequence[Callable[..., ArrayLike]],
                 n_features: int, samplers: Sequence[Callable[..., ArrayLike]] | None = None, *,
                 n_context: int = 0) -> None:
        if len(log_probs) < 1:
            raise InputError("need at least one member")
        if samplers is not None and len(samplers) != len(log_probs):
            raise InputError(f"{len(samplers)} samplers for {len(log_probs)} members")
        if int(n_context) != n_context or n_context < 0:
            raise InputError(f"n_context must be a non-negative integer, got {n_context!r}")
        self._log_probs = list(log_probs)
        self._samplers = None if samplers is None else list(samplers)
        self._n_features = int(n_features)
        self._n_context = int(n_context)

    @property
    def n_members(self) -> int:
        return len(self._log_probs)

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def n_context(self) -> int:
        return self._n_context

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features)
        ctx = check_context(self.n_context, context, events.shape[0])
        out = np.empty((self.n_members, events.shape[0]))
        for m, fn in enumerate(self._log_probs):
            raw = fn(events) if ctx is None else fn(events, ctx)
            values = np.asarray(raw, dtype=np.float64).reshape(-1)
            if values.shape != (events.shape[0],):
                raise InputError(f"member {m} returned {values.shape[0]} values for "
                                 f"{events.shape[0]} events")
            out[m] = values
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        if self._samplers is None:
            raise InputError("these CallableMembers were built without samplers")
        ctx = check_context(self.n_context, context, int(n), broadcast=True)
        fn = self._samplers[member]
        raw = fn(int(n), as_rng(rng)) if ctx is None else fn(int(n), as_rng(rng), ctx)
        draws = np.asarray(raw, dtype=np.float64)
        return as_events(draws.reshape(int(n), self.n_features), n_features=self.n_features,
                         min_events=0)
