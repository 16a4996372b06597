"""The learned likelihood-ratio test statistic ``t = 2 (min NLL0 − min NLL1)``, Eq. (5).

Three variants (the paper's Fig. 2): the ensemble with uncertainty (φ profiled under
``N(ŵ, Cov ŵ)``), the ensemble with weights frozen at ŵ, and a single member. Both profiles are
minimised exactly by :func:`genval.newton.minimize_convex`; :class:`ProfileSettings` says how.

Rows of F and G are divided by the row maximum of F (:func:`genval.row_scaling.scale_rows`):
the per-event constant ``Σ log s_n`` is the same in both hypotheses and cancels in t, and tail
events no longer underflow.

References:
    Badaracco et al., Step 4, Eq. (5) and the paragraph after it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._settings import apply_overrides
from genval.errors import ConvergenceWarning, FitError, InputError, NegativeDensityWarning
from genval.gof.constraint import Constraint
from genval.newton import NewtonOptions, Solution, minimize_convex
from genval.row_scaling import ScaledRows, scale_rows

__all__ = ["LRStatistic", "ProfileSettings", "test_statistic", "statistic_from_rows",
           "profile_pair", "make_constraint", "Variant", "VARIANTS", "VARIANT_LABELS",
           "LAMBDA_NET", "BARRIER"]

Variant = Literal["ensemble", "frozen", "single"]
VARIANTS: tuple[str, ...] = ("ensemble", "frozen", "single")
#: What each variant means, in words (the paper's Fig. 2 legend).
VARIANT_LABELS: dict[str, str] = {
    "single": "single member",
    "frozen": "ensemble, weights frozen at ŵ (no uncertainty)",
    "ensemble": "ensemble with uncertainty",
}

#: λ_net of the weak ℓ2 penalty ``λ_net N ‖a‖²`` on the kernel coefficients.
LAMBDA_NET = 1e-6
#: Weight of each positivity check point's log-barrier term in both NLLs.
BARRIER = 1e-3


@dataclass(frozen=True)
class ProfileSettings:
    """How the two profiles of Eq. (5) are regularised and solved.

    Attributes:
        lam: λ_net of the ℓ2 penalty on the kernel coefficients.
        barrier: weight of each check point's log-barrier term (see ``F_ref`` in
            :func:`test_statistic`).
        tol: convergence tolerance on each NLL (Newton decrement, absolute).
        max_iter: Newton iteration cap per fit.
        hessian_dtype: float32 (fast) or float64 accumulation of the data Hessian.
        subsample_rows: while the alternative is far from its optimum, form its Hessian from
            about this many rows when there are more (every row that carries much of it, a
            stride through the others; see :mod:`genval.newton`); 0: every row always.
    """

    lam: float = LAMBDA_NET
    barrier: float = BARRIER
    tol: float = 1e-10
    max_iter: int = 100
    hessian_dtype: type = np.float32
    subsample_rows: int = 5000


@dataclass(frozen=True)
class PairSolution:
    """Both profiles on one data set (internal currency of the statistic and the toys)."""

    t: float
    null: Solution
    alt: Solution
    n_events: int

    @property
    def converged(self) -> bool:
        return self.null.converged and self.alt.converged

    @property
    def failure(self) -> str | None:
        """Why t of this pair is not to be used, in one line; None when both fits converged
        and t is finite."""
        reasons = [f"{name} fit {_stop_reason(sol)}"
                   for name, sol in (("null", self.null), ("alternative", self.alt))
                   if not sol.converged]
        if not np.isfinite(self.t):
            reasons.append(f"t = {self.t}")
        return "; ".join(reasons) if reasons else None


def _amplitude_start(density: NDArray[np.float64], g: NDArray[np.float64], n: int,
                     barrier: float) -> NDArray[np.float64]:
    """Warm start of the kernel amplitudes: 0, except for kernels far above the null.

    A kernel with no event near it and the null density s at its centre tiny next to its own
    value G there (a centre far outside the members' support: G / s reached 3e35 on Pythia
    multijet events) has its optimum where the barrier of weight μ balances the extended
    term, ``s + G a = μ G / N``, i.e. ``a = μ / N − s / G`` > 0. From a = 0 Newton only
    doubles ``s + G a`` per step (``log2(μ G / (N s))`` steps: 100 there, the iteration
    cap); starting each such kernel there instead costs nothing elsewhere (a ≥ 0 keeps every
    density positive, and μ / N is ~1e-7).
    """
    with np.errstate(divide="ignore"):
        ratio = np.max(g / density[:, None], axis=0)  # largest G / s over the check points
        return np.maximum(0.0, barrier / n - 1.0 / ratio)  # G = 0 at every point: a = 0


def _stop_reason(sol: Solution) -> str:
    """How a Newton fit stopped before its tolerance (one phrase)."""
    how = ("stalled: no descent at float64 precision" if sol.line_search_failed
           else "hit the iteration cap")
    return f"{how} (after {sol.n_iter} steps, Newton decrement {sol.decrement:.3g})"


def profile_pair(c: NDArray[np.float64], a: NDArray[np.float64], rank: int, u0: NDArray[np.float64],
                 *, n_ref: int = 0, settings: ProfileSettings = ProfileSettings(),
                 null_start: NDArray[np.float64] | None = None) -> PairSolution:
    """Profile NLL0 over u and NLL1 over (u, a) on row-scaled data; return t.

    Args:
        c: (N + n_ref,) null density at ŵ, ``F̃ ŵ`` (row-scaled): the events, then the
            positivity check points.
        a: (N + n_ref, rank + K) ``[F̃ T | G̃]``: whitened weight directions, then kernels.
        rank: number of whitened weight directions (0 for frozen / single member).
        u0: (rank,) whitened constraint centre.
        n_ref: the last ``n_ref`` rows are check points (e.g. the kernel centres) where both
            densities must stay positive: they enter both NLLs as ``−barrier · log f``.
        settings: penalty, barrier weight and solver settings.
        null_start: feasible start of the null (default u = 0, i.e. ŵ).
    """
    barrier, lam = settings.barrier, settings.lam
    # Hessians cost N p² against N p per gradient: reuse each while the decrement still falls
    # tenfold per step (measured best at M = 60, K = 100, N = 20k), and form the alternative's
    # from a row subsample during its damped phase.
    null_options = NewtonOptions(tol=settings.tol, max_iter=settings.max_iter,
                                 hessian_dtype=settings.hessian_dtype, refresh=0.1)
    alt_options = dataclasses.replace(null_options, subsample_rows=settings.subsample_rows)
    n = c.shape[0] - n_ref
    k = a.shape[1] - rank
    weights = None
    if n_ref:
        weights = np.ones(n + n_ref)
        weights[n:] = barrier
    q0 = np.ones(rank)
    null = minimize_convex(c, a[:, :rank], -u0, q0, null_start, row_weights=weights,
                           options=null_options)
    b1 = np.concatenate([-u0, np.full(k, float(n))])
    q1 = np.concatenate([q0, np.full(k, 2.0 * lam * n)])
    start = np.concatenate([null.theta, np.zeros(k)])  # the null optimum, a = 0
    a0 = _amplitude_start(null.density[n:], a[n:, rank:], n, barrier) if n_ref else np.zeros(k)
    alt = minimize_convex(c, a, b1, q1, np.concatenate([null.theta, a0]), row_weights=weights,
                          options=alt_options)
    # t from per-event log ratios (not a difference of two ~N-sized sums): accurate to ~1e-12.
    diff = a @ (alt.theta - start)
    logs = np.log1p(diff / null.density)
    log_ratio = logs.sum() if weights is None else weights @ logs
    t = 2.0 * (float(log_ratio) - alt.penalty + null.penalty)
    return PairSolution(t, null, alt, n)


class LRStatistic(float):
    """The value of t (a float) with the profiled fits attached.

    Attributes:
        variant: "ensemble", "frozen" or "single".
        nll0, nll1: minimised NLLs of Eq. (5) (absolute, constraint centred at z₀).
        phi0, phi1: profiled ensemble weights under H_φ and H_{φ,a}.
        a: profiled kernel coefficients (K,).
        converged: both fits met the tolerance.
        n_iter0, n_iter1: Newton iterations; decrement0/1: final Newton decrements.
        n_events: N.
        failure: None, or why t is not to be used, in one line: which fit stopped and how,
            t not finite, where the density comes closest to 0 (test event or kernel centre)
            and the largest kernel amplitudes.
    """

    variant: str
    nll0: float
    nll1: float
    phi0: NDArray[np.float64]
    phi1: NDArray[np.float64]
    a: NDArray[np.float64]
    converged: bool
    n_iter0: int
    n_iter1: int
    decrement0: float
    decrement1: float
    n_events: int
    failure: str | None

    def __new__(cls, t: float, **info: Any) -> LRStatistic:
        obj = super().__new__(cls, t)
        for key, value in info.items():
            setattr(obj, key, value)
        return obj

    @property
    def t(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        status = "converged" if self.converged else "NOT CONVERGED"
        if getattr(self, "failure", None):
            status += f", FAILED: {self.failure}"
        return (f"LRStatistic(t={float(self):.6g}, variant={self.variant!r}, N={self.n_events}, "
                f"NLL0={self.nll0:.6f}, NLL1={self.nll1:.6f}, K={self.a.size}, "
                f"iterations={self.n_iter0}+{self.n_iter1}, {status})")


def make_constraint(fit: Any, n_members: int, variant: str, member: int | None) -> Constraint:
    """The constraint of a variant: ensemble (ŵ, Cov), frozen ŵ, or one member."""
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "single":
        if member is None:
            if n_members != 1:
                raise InputError("variant='single' needs member=<index> when F has "
                                 f"{n_members} columns")
            member = 0
        if not 0 <= member < n_members:
            raise InputError(f"member {member} out of range for {n_members} members")
        return Constraint.frozen(np.eye(n_members)[member])
    if fit is None or not hasattr(fit, "weights"):
        raise InputError(f"variant={variant!r} needs a fit with .weights (and .cov)")
    w = np.asarray(fit.weights, dtype=np.float64)
    if w.shape != (n_members,):
        raise InputError(f"fit has {w.size} weights but F has {n_members} members")
    if variant == "frozen":
        return Constraint.frozen(w)
    return Constraint.from_fit(fit)


def feasible_start(c: NDArray[np.float64], a: NDArray[np.float64], box: float = 20.0
                   ) -> NDArray[np.float64]:
    """Whitened weights u with ``c + A u > 0`` on every row (max-margin LP), |u_i| ≤ box.

    Raises:
        FitError: if no such u exists within ``box`` standard deviations of ŵ.
    """
    import scipy.optimize

    n, r = a.shape
    # maximise s subject to c + A u ≥ s (row-scaled densities are ≤ 1, so s ≤ 1 bounds it)
    res = scipy.optimize.linprog(
        np.concatenate([np.zeros(r), [-1.0]]),
        A_ub=np.hstack([-a, np.ones((n, 1))]), b_ub=c,
        bounds=[(-box, box)] * r + [(None, 1.0)], method="highs")
    if res.status != 0 or res.x[-1] <= 0:
        raise FitError(f"no ensemble weights within {box:g} standard deviations of ŵ keep the "
                       f"mixture density positive at all {n} events and check points (best margin "
                       f"{res.x[-1] if res.x is not None else float('nan'):.3g}): Eq. (5) is "
                       "undefined for these data")
    return res.x[:r]


def negative_density_message(density: NDArray[np.float64], where: str = "test events") -> str:
    bad = np.flatnonzero(~(density > 0))
    return (f"the mixture density f(x; ŵ) is <= 0 on {bad.size} of {density.size} {where} "
            f"(rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}): signed weights make "
            "the null no density there, so Eq. (5) is undefined; refit the weights with these "
            "events in range of the ensemble, or remove them explicitly")


def test_statistic(F: ArrayLike, G: ArrayLike, fit: Any = None, *,
                   variant: Variant = "ensemble", member: int | None = None,
                   z0: ArrayLike | None = None, log: bool = False,
                   F_ref: ArrayLike | None = None, G_ref: ArrayLike | None = None,
                   settings: ProfileSettings | None = None, **overrides: Any) -> LRStatistic:
    """Learned likelihood-ratio statistic ``t = 2 [min NLL0 − min NLL1]`` of Eq. (5).

    NLL0(z) = −Σ log(F_n·φ) + ½ (z − z₀)ᵀ C_r⁻¹ (z − z₀), φ = ŵ + B z;
    NLL1(z, a) = −Σ log(F_n·φ + G_n·a) + N Σ a + λ_net N ‖a‖² + the same constraint.
    Both are convex and minimised exactly (damped Newton, float64, feasible line search; the
    alternative warm-started from the null optimum).

    Args:
        F: (N, M) member densities at the test events (log-densities with ``log=True``).
        G: (N, K) kernel densities, e.g. ``KernelBasis.pdf(x)`` (``log_pdf`` with ``log=True``).
        fit: the w_i f_i fit (``.weights``, ``.cov``); unused for ``variant="single"``.
        variant: "ensemble" (weights profiled under N(ŵ, Cov)), "frozen" (weights at ŵ) or
            "single" (one member; F with one column, or ``member`` selects a column).
        member: member index for ``variant="single"``.
        z0: constraint centre in the M − 1 coordinates of Σφ = 1 (default 0, i.e. at ŵ).
        log: F and G are log-densities (recommended: no underflow in the tails).
        F_ref, G_ref: member and kernel densities at positivity check points (normally the
            kernel centres; same ``log`` convention). The extended term rewards negative
            kernel amplitudes wherever no test event lies, and with only the weak ℓ2 penalty
            to stop it the exact optimum of Eq. (5) puts large negative mass there (t ~ 1e9
            when a kernel sits in an empty region). Requiring both densities to stay positive
            at the check points (a log-barrier of weight ``barrier`` per point, in both NLLs)
            keeps the alternative a density. Where f(x; ŵ) ≤ 0 at a check point the row
            keeps only the kernels (:meth:`Constraint.project_checks`).
            :func:`goodness_of_fit` always does this; without check points the statistic is
            Eq. (5) verbatim.
        settings: :class:`ProfileSettings` (default: λ_net = 1e-6, barrier 1e-3, tol 1e-10,
            100 iterations, float32 Hessian accumulation).
        **overrides: any :class:`ProfileSettings` field (``lam``, ``barrier``, ``tol``,
            ``max_iter``, ``hessian_dtype``, ``subsample_rows``), replacing the one in
            ``settings``.

    Returns:
        :class:`LRStatistic`, a float with the fits attached.

    Raises:
        InputError: malformed input (shapes, NaN/inf, negative densities, bad covariance).
        FitError: f(x; ŵ) ≤ 0 on some test events (possible with signed weights) and no
            weights on Σφ = 1 near ŵ make it positive (always for the frozen and single
            variants, which have no free weights).
        TypeError: an override that is no :class:`ProfileSettings` field.

    Warns:
        NegativeDensityWarning: f(x; ŵ) ≤ 0 on some test events but other weights make the
            density positive there: the null is profiled from such a point (max-margin LP).
        ConvergenceWarning: a fit stopped before its tolerance or t is not finite
            (``LRStatistic.failure`` says which fit, how, and where).
        IllConditionedWarning: Cov(ŵ) singular on Σφ = 1 beyond what the fit reported.

    References:
        Badaracco et al., Eq. (5).
    """
    profile = apply_overrides(settings or ProfileSettings(), overrides, "test_statistic")
    rows = scale_rows(F, G, log=log)
    constraint = make_constraint(fit, rows.f.shape[1], variant, member)
    ref = None
    if (F_ref is None) != (G_ref is None):
        raise InputError("give both F_ref and G_ref (densities at the check points) or neither")
    if F_ref is not None:
        ref = scale_rows(F_ref, G_ref, log=log)
        if ref.f.shape[1] != rows.f.shape[1] or ref.g.shape[1] != rows.g.shape[1]:
            raise InputError("F_ref and G_ref must have the columns of F and G")
    stat = statistic_from_rows(rows, constraint, variant, constraint.whiten(z0), ref=ref,
                               settings=profile)
    if stat.failure is not None:
        warnings.warn(f"the statistic of Eq. (5) is not to be used: {stat!r}",
                      ConvergenceWarning, stacklevel=2)
    return stat


def _null_density(c: NDArray[np.float64], constraint: Constraint, warn_negative: bool) -> bool:
    """Whether f(x; ŵ) ≤ 0 somewhere (then the null starts from an LP point); raise if fatal."""
    if np.all(c > 0):
        return False
    if constraint.rank == 0:
        raise FitError(negative_density_message(c))
    if warn_negative:
        msg = negative_density_message(c).split(", so Eq. (5)")[0]
        warnings.warn(f"{msg}; the null is profiled from a feasible φ on Σφ = 1 (max-margin "
                      "linear program) instead of from ŵ", NegativeDensityWarning, stacklevel=4)
    return True


def statistic_from_rows(rows: ScaledRows, constraint: Constraint, variant: str,
                        u0: NDArray[np.float64], *, ref: ScaledRows | None = None,
                        settings: ProfileSettings = ProfileSettings(),
                        warn_negative: bool = True) -> LRStatistic:
    """:func:`test_statistic` on row-scaled data with a prepared constraint.

    ``ref``: densities at the positivity check points (:meth:`Constraint.project_checks`:
    where f(x; ŵ) ≤ 0 already, the kernels there may not take more than the largest member
    density away).
    """
    n = rows.f.shape[0]
    c, a = constraint.project(rows)
    infeasible_at_hat = _null_density(c, constraint, warn_negative)
    n_ref = 0
    ref_log_s = np.zeros(0)
    if ref is not None:
        c_ref, a_ref = constraint.project_checks(ref)
        n_ref = c_ref.size
        c = np.concatenate([c, c_ref])
        a = np.concatenate([a, a_ref])
        ref_log_s = ref.log_s
    start = feasible_start(c, a[:, :constraint.rank]) if infeasible_at_hat else None
    pair = profile_pair(c, a, constraint.rank, u0, n_ref=n_ref, settings=settings,
                        null_start=start)
    # Absolute NLLs: the constraint's constant and the row scales added back.
    const = float(0.5 * u0 @ u0 - rows.log_s.sum()) - settings.barrier * float(ref_log_s.sum())
    w = np.ones(c.size)
    w[n:] = settings.barrier
    nll0 = -float(w @ np.log(pair.null.density)) + pair.null.penalty + const
    nll1 = -float(w @ np.log(pair.alt.density)) + pair.alt.penalty + const
    r, k = constraint.rank, rows.g.shape[1]
    failure = pair.failure
    if failure is not None:
        failure = f"{failure}; {_where(pair, n, r)}"
    return LRStatistic(
        pair.t, variant=variant, nll0=nll0, nll1=nll1,
        phi0=constraint.weights_at(pair.null.theta), phi1=constraint.weights_at(pair.alt.theta[:r]),
        a=pair.alt.theta[r:r + k].copy(), converged=pair.converged, n_iter0=pair.null.n_iter,
        n_iter1=pair.alt.n_iter, decrement0=pair.null.decrement, decrement1=pair.alt.decrement,
        n_events=n, failure=failure)


def _where(pair: PairSolution, n: int, rank: int) -> str:
    """Where a failed pair of fits went wrong: the row whose density came closest to 0 (a
    test event or a kernel centre, relative to the largest member density there) in each
    fit, and the largest kernel amplitudes."""
    parts = []
    for name, sol in (("null", pair.null), ("alternative", pair.alt)):
        density = np.where(np.isfinite(sol.density), sol.density, -np.inf)
        i = int(np.argmin(density))
        where = f"test event {i}" if i < n else f"kernel centre {i - n}"
        parts.append(f"{name} density smallest at {where} ({sol.density[i]:.3g})")
    amplitudes = pair.alt.theta[rank:]
    if amplitudes.size:
        top = np.argsort(-np.abs(np.nan_to_num(amplitudes, nan=np.inf)))[:3]
        parts.append("largest kernel amplitudes " + ", ".join(
            f"kernel {j}: {amplitudes[j]:.3g}" for j in top))
    return "; ".join(parts)


# The public name starts with "test": tell pytest it is not a test when a test module imports it.
test_statistic.__test__ = False  # type: ignore[attr-defined]
