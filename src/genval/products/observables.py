"""Observables of a fitted w_i f_i ensemble with their errors, paper Eqs. (3) and (4).

An observable ``O = ∫ g(x) f(x) dx`` of the mixture is ``Ô = Σ_k ŵ_k Ô_k`` with member
integrals ``O_k = ∫ g f_k``. As in the paper's Appendix A, genval estimates them from ONE
common sample of the fitted mixture itself.

**Common sample.** Given the fit (ŵ, C = Cov ŵ of Eq. 2), draw ``x_1..x_n ~ f̂ = Σ ŵ_k f_k`` and
form the importance ratios ``r_jk = f_k(x_j) / f̂(x_j)`` and ``y_jk = g(x_j) r_jk``. Then
``Ô_k = ȳ_k = (1/n) Σ_j y_jk`` is unbiased for ``O_k`` (wherever f̂ > 0 on the support of
``g f_k``), and because ``Σ_k ŵ_k r_jk = 1`` event by event,

    Ô = Σ_k ŵ_k Ô_k = (1/n) Σ_j g(x_j),

the plain mean of g over the events generated from f̂ (App. A: 200k generated events).

**Error.** With the truth in the span, ``O* = w*ᵀ O``, write ``δ = ŵ − w*`` and
``ε = Ô_vec − O``. Then ``Ô − O* = δᵀ O + ŵᵀ ε``. Conditional on the weight-fit data (hence on ŵ
and C), ε has mean 0 and covariance ``Σ = Cov(y_j) / n``: a FULL M×M matrix, since every
member is estimated from the same events. The cross term has zero mean, so

    Var Ô = Oᵀ C O + E[ŵᵀ Σ ŵ],

the weight uncertainty (Eq. 3 applied to an integral) plus the Monte-Carlo error.
``ŵᵀ Σ ŵ = Var_f̂(g) / n`` is the ordinary error of the mean of g: it does not grow with
``Σ ŵ_k²``. Only O is unknown; its plug-in is biased by the noise,
``E[Ô_vecᵀ C Ô_vec] = Oᵀ C O + tr(C Σ)``. With the unbiased sample covariance
``Σ̂ = Σ_j (y_j − ȳ)(y_j − ȳ)ᵀ / (n (n − 1))`` genval reports

    σ² = [Ô_vecᵀ C Ô_vec − tr(C Σ̂)] + ŵᵀ Σ̂ ŵ,

unbiased given the fit; ``std_weights`` is the square root of the bracket (clipped at 0, which
it falls below only by noise) and ``std_mc`` that of the last term. ``tr(C Σ)`` is
``E_f̂[g² σ_f(x)² / f̂(x)²] / n`` up to the centring, with ``σ_f² = Fᵀ C F`` the band of Eq. (3):
it stays small even when C is huge along a weakly identified direction u, because
``uᵀ y_j = g_j uᵀF(x_j) / f̂(x_j)`` is small event by event for near-collinear members. Both
quadratic forms are evaluated with O and Σ̂ centred across members (C annihilates the common
mode, ``C 1 = 0``), which keeps the cancellations of near-collinear ensembles at rounding level.

**Per-member samples** (:func:`member_integrals`, kept for members whose mixture cannot be
sampled, e.g. with much negative mass) give independent ``Ô_k`` (diagonal Σ, variances
``v_k``); the same formula then reads ``Ôᵀ C Ô − Σ C_kk v_k + Σ ŵ_k² v_k``. Its Monte-Carlo
part grows with ``Σ ŵ_k²``: with Σ|ŵ| in the hundreds it swamps the weight error, which is why
it is no longer the default.

**Where f̂ < 0.** The sampler (:func:`genval.sampling.sample_mixture`) draws from
``max(f̂, 0) / Z₊`` with ``Z₊ = 1 + m₋`` (m₋: the negative mass ∫ max(−f̂, 0)), and accepts only
events with f̂ > 0, so the ratios are finite. Ô is then the mean of g over the events the
ensemble actually generates; it differs from the signed integral ``∫ g f̂`` by at most
``2 m₋ sup|g|``, a bias σ does not contain (keep m₋ small; the sampler measures it). Near a
zero crossing of f̂ the ratios ``f_k / f̂`` are unbounded (``∫ f_k² / f̂`` diverges), so the
weight part converges slowly there. An event with f̂ ≤ 0 at evaluation (possible only by
rounding or from a foreign sample) is an :class:`~genval.errors.InputError`.

References:
    Badaracco et al., Eqs. (3) and (4), Appendix A.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_rng
from genval.errors import InputError
from genval.identification import PRIOR_SHARE_FLAG
from genval.members import Members
from genval.row_scaling import scale_log_rows
from genval.sampling import sample_mixture
from genval.wifi import WeightFit

__all__ = [
    "DEFAULT_N_SAMPLES",
    "MemberIntegrals",
    "ObservableEstimate",
    "common_sample_integrals",
    "importance_ratios",
    "member_integrals",
    "estimate_observable",
    "observable",
]

DEFAULT_N_SAMPLES = 100_000
"""Events drawn from f(x; ŵ) by :func:`observable` when no size is given (App. A: 200k)."""

ObservableFunction = Callable[[NDArray[np.float64]], ArrayLike]


def _identity(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return x


@dataclass(frozen=True)
class MemberIntegrals:
    """Member integrals ``O_k = ∫ g f_k`` (M, P) and their Monte-Carlo error.

    Attributes:
        values: (M, P) the estimates ``Ô_k``.
        variances: (M, P) their variances (zero for exact integrals).
        covariance: (P, M, M) the full covariance of the vector ``(Ô_k)`` per observable, or
            None when the estimates are independent (then it is ``diag(variances)``).
        n_samples: events behind the estimates (per member for per-member samples, in all
            for a common sample; 0 for exact integrals).
    """

    values: NDArray[np.float64]
    variances: NDArray[np.float64]
    covariance: NDArray[np.float64] | None = None
    n_samples: int = 0

    @classmethod
    def exact(cls, values: ArrayLike) -> MemberIntegrals:
        """Known integrals without Monte-Carlo error."""
        arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if arr.shape[0] == 1 and arr.shape[1] > 1:
            arr = arr.T  # a plain (M,) vector means one observable
        return cls(values=arr, variances=np.zeros_like(arr))

    @property
    def mc_covariance(self) -> NDArray[np.float64]:
        """(P, M, M) covariance of ``(Ô_k)``: :attr:`covariance`, or the diagonal of the
        variances when the member estimates are independent."""
        if self.covariance is not None:
            return self.covariance
        return np.einsum("kp,kl->pkl", self.variances, np.eye(self.values.shape[0]))


@dataclass(frozen=True)
class ObservableEstimate:
    """``Ô ± σ`` for P observables, with the two parts of the variance kept apart.

    ``prior_share`` (P,) is the share of σ² that comes from the weight fit's ridge prior
    (directions the data do not identify, :mod:`genval.identification`); 0 for a plain fit.
    Above :data:`~genval.identification.PRIOR_SHARE_FLAG` the error is mostly the prior's and
    :attr:`flagged` is set.
    """

    value: NDArray[np.float64]
    std: NDArray[np.float64]
    std_weights: NDArray[np.float64]
    std_mc: NDArray[np.float64]
    prior_share: NDArray[np.float64] | None = None

    @property
    def flagged(self) -> NDArray[np.bool_]:
        """Observables whose σ is mostly the ridge prior's."""
        if self.prior_share is None:
            return np.zeros(self.value.shape, dtype=bool)
        return self.prior_share > PRIOR_SHARE_FLAG

    def covers(self, truth: ArrayLike, z: float = 1.0) -> NDArray[np.bool_]:
        """Whether ``|Ô − O*| < z σ`` for each observable, paper Eq. (4)."""
        return np.abs(self.value - np.asarray(truth, dtype=np.float64)) < z * self.std

    def __repr__(self) -> str:
        parts = ", ".join(f"{v:.6g} ± {s:.3g}" for v, s in zip(self.value, self.std, strict=True))
        return f"ObservableEstimate([{parts}])"


def _evaluate(g: ObservableFunction | None, x: NDArray[np.float64], where: str
              ) -> NDArray[np.float64]:
    """``g(x)`` as a finite (n, P) array."""
    values = np.asarray((_identity if g is None else g)(x), dtype=np.float64)
    values = values.reshape(len(x), -1)
    if not np.all(np.isfinite(values)):
        raise InputError(f"the observable is not finite on {where}")
    return values


def member_integrals(members: Members, g: ObservableFunction | None, n_per_member: int,
                     rng: np.random.Generator | int | None = None) -> MemberIntegrals:
    """Estimate ``O_k = ∫ g f_k`` from ``n_per_member`` samples of each member, independently.

    The fallback for a mixture that cannot be sampled (see the module docstring): its
    Monte-Carlo error enters ``Ô`` multiplied by ``Σ ŵ_k²``. Prefer
    :func:`common_sample_integrals`.

    Args:
        members: the density members.
        g: function of events (n, D) returning (n,) or (n, P); ``None`` means the first moment
            of every feature (``g(x) = x``).
        n_per_member: samples drawn from each member (at least 2, for the variance).
        rng: generator or seed.
    """
    if n_per_member < 2:
        raise InputError(f"n_per_member must be >= 2 to estimate the MC error, got {n_per_member}")
    gen = as_rng(rng)
    values, variances = [], []
    for k in range(members.n_members):
        draws = _evaluate(g, members.sample(n_per_member, k, gen), f"samples of member {k}")
        values.append(draws.mean(axis=0))
        variances.append(draws.var(axis=0, ddof=1) / n_per_member)
    return MemberIntegrals(values=np.array(values), variances=np.array(variances),
                           n_samples=int(n_per_member))


def importance_ratios(log_f: ArrayLike, weights: ArrayLike) -> NDArray[np.float64]:
    """``r_jk = f_k(x_j) / f̂(x_j)`` (n, M) from ``log F`` at events drawn from ``f̂ = F ŵ``.

    Rows are scaled by their maximum first (:func:`genval.row_scaling.scale_log_rows`): the
    ratio is invariant to it and nothing underflows in the tails.

    Raises:
        InputError: f̂ is not positive and finite at every event.
    """
    lf = np.asarray(log_f, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if lf.ndim != 2 or w.shape != (lf.shape[1],):
        raise InputError(f"log F {lf.shape} does not match {w.size} weights")
    if lf.shape[0] < 2:
        raise InputError(f"a common sample needs at least 2 events, got {lf.shape[0]}")
    scaled, _ = scale_log_rows(lf)
    f_hat = scaled @ w
    bad = ~(np.isfinite(f_hat) & (f_hat > 0))
    if bad.any():
        raise InputError(f"f(x; ŵ) is not positive at {int(bad.sum())} of {bad.size} sample "
                         "events: importance ratios f_k / f̂ need f̂ > 0 at every event (draw "
                         "the sample from f(x; ŵ) with these weights)")
    return scaled / f_hat[:, None]


def common_sample_integrals(x: ArrayLike, log_f: ArrayLike, weights: ArrayLike,
                            g: ObservableFunction | None = None) -> MemberIntegrals:
    """Member integrals from one sample of ``f(x; ŵ)`` by importance ratios, full covariance.

    ``Ô_k = (1/n) Σ_j g(x_j) f_k(x_j) / f̂(x_j)`` and the unbiased sample covariance of the
    vector ``(Ô_k)`` (module docstring); ``ŵᵀ Ô_vec`` is the plain mean of g.

    Args:
        x: (n, D) events drawn from ``f̂ = Σ ŵ_k f_k`` (e.g. ``sample_mixture(...).x``).
        log_f: (n, M) ``log f_k(x_j)`` (``sample_mixture(...).log_f``).
        weights: (M,) the ŵ the events were drawn with.
        g: function of events (n, D) returning (n,) or (n, P); ``None``: first moments.
    """
    events = np.asarray(x, dtype=np.float64)
    ratios = importance_ratios(log_f, weights)
    if len(events) != len(ratios):
        raise InputError(f"{len(events)} events but log F has {len(ratios)} rows")
    values_g = _evaluate(g, events, "the common sample")
    n = len(events)
    means, covs = [], []
    for p in range(values_g.shape[1]):
        y = values_g[:, p, None] * ratios
        mean = y.mean(axis=0)
        y -= mean  # centred first: the covariance of near-collinear members is a small difference
        covs.append(y.T @ y / (n * (n - 1.0)))
        means.append(mean)
    cov = np.array(covs)
    return MemberIntegrals(values=np.array(means).T, variances=np.diagonal(cov, 0, 1, 2).T.copy(),
                           covariance=cov, n_samples=n)


def estimate_observable(fit: WeightFit, integrals: MemberIntegrals) -> ObservableEstimate:
    """Combine member integrals into ``Ô ± σ`` (unbiased variance, see the module docstring).

    ``std_weights = sqrt(Ôᵀ C Ô − tr(C Σ̂))`` (clipped at 0), ``std_mc = sqrt(ŵᵀ Σ̂ ŵ)``, with Σ̂
    the full Monte-Carlo covariance of the member integrals (diagonal for independent ones).
    """
    values = integrals.values
    if values.shape[0] != fit.n_members:
        raise InputError(f"{values.shape[0]} member integrals for {fit.n_members} members")
    sigma = integrals.mc_covariance
    estimate = fit.weights @ values
    # C 1 = 0: centre across members so the quadratic forms do not carry the common mode.
    centred = values - values.mean(axis=0)
    sigma_c = sigma - sigma.mean(axis=1, keepdims=True)
    sigma_c = sigma_c - sigma_c.mean(axis=2, keepdims=True)

    def debiased(cov: NDArray[np.float64]) -> NDArray[np.float64]:
        """``Ôᵀ C Ô − tr(C Σ̂)`` per observable (module docstring)."""
        return (np.einsum("kp,kl,lp->p", centred, cov, centred)
                - np.einsum("kl,plk->p", cov, sigma_c))

    var_weights = debiased(fit.cov)
    var_mc = np.einsum("k,pkl,l->p", fit.weights, sigma, fit.weights)
    std_weights = np.sqrt(np.clip(var_weights, 0.0, None))
    std_mc = np.sqrt(np.clip(var_mc, 0.0, None))
    std = np.hypot(std_weights, std_mc)
    prior_share = np.zeros_like(std)
    if getattr(fit, "cov_prior_reduced", None) is not None:
        prior_share = np.clip(np.divide(debiased(fit.cov_prior), std ** 2,
                                        out=np.zeros_like(std), where=std > 0), 0.0, 1.0)
    return ObservableEstimate(value=estimate, std=std, std_weights=std_weights, std_mc=std_mc,
                              prior_share=prior_share)


def observable(members: Members, fit: WeightFit, g: ObservableFunction | None = None, *,
               n_samples: int | None = None, rng: np.random.Generator | int | None = None,
               n_per_member: int | None = None) -> ObservableEstimate:
    """``Ô ± σ`` for ``∫ g f̂`` (default: the first moment of each feature), MC error included.

    By default ``n_samples`` (:data:`DEFAULT_N_SAMPLES`) events are drawn from ``f(x; ŵ)`` and
    every member integral is an importance estimate from that one sample
    (:func:`common_sample_integrals`). ``n_per_member`` instead samples each member on its
    own (:func:`member_integrals`, the fallback when f̂ cannot be sampled).
    """
    if n_per_member is not None:
        if n_samples is not None:
            raise InputError("give n_samples (common sample) or n_per_member, not both")
        return estimate_observable(fit, member_integrals(members, g, n_per_member, rng))
    n = DEFAULT_N_SAMPLES if n_samples is None else int(n_samples)
    drawn = sample_mixture(members, fit.weights, n, as_rng(rng))
    return estimate_observable(fit, common_sample_integrals(drawn.x, drawn.log_f,
                                                            fit.weights, g))
