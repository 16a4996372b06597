"""Weight directions the data identify weakly: leverage, a ridge toward the equal-weight mixture,
and the prior's share of the band (paper Eqs. 1–3).

**Why.** Members trained on one data set are nearly linearly dependent. Along the weakest
directions u of the reduced Hessian ``V_r`` (eigenvalue λ) the weight fit of Eq. (1) is decided by
a handful of tail events: the M−1 weight directions of 60 Gaussians jittered by 5 % act like
high-order Hermite terms, tiny in the bulk and large where only a few events lie. There the
maximum-likelihood ŵ is not in its asymptotic regime and the sandwich of Eq. (2) does not
describe it: measured on that ensemble (truth a mixture of the members, 50k events), the
unregularised ŵ lies 6–13 sandwich standard deviations from the truth along the weakest
directions, gains 40–280 in log-likelihood over the truth with 59 parameters (χ²/2 expects
≈ 30), and the Eq. (3) band covers the truth at the bulk in a few per cent of data sets. Holding
those directions at the start and giving them zero variance (an eigenvalue cut) hides the
problem instead and makes ŵ depend on the start.

**Leverage.** The diagnostic is the leverage of each event,
``h_n = a_nᵀ (N V_r)⁻¹ a_n`` with ``a_n = Bᵀ F_n / f̂_n`` (``Σ_n h_n = M − 1``). By
Cauchy–Schwarz ``h_n`` is the largest share, over every linear function of ŵ (the density at
any x, any observable), of that function's variance carried by event n alone; it is also
``σ²(x_n) / f̂(x_n)²``, the squared relative band of Eq. (3) at the event. Asymptotic normality
of an M-estimator needs ``max_n h_n → 0`` (Huber 1973); at ``h_n → 1`` an event is interpolated
by its own weight direction. Measured ``max_n h_n``: 0.998 on the 60 jittered Gaussians (50k
events), 0.06–0.2 on 10 bootstrap Gaussians (20k events, where the sandwich covers), 0.01 on
four well-separated Gaussians.

**Ridge.** Where the leverage summed over the *weak* directions (eigenvalue below
:func:`ridge_cap` = ``1/N``, where a prior of sd 1 would be at least as informative as the
data) exceeds :data:`MAX_LEVERAGE` (0.2: each weak direction informed by about five events or
more), the fit minimises Eq. (1) plus ``½ N τ ‖w − w̄‖²`` on ``Σ w = 1`` (w̄ = 1/M, the
equal-weight mixture): a Gaussian prior of standard deviation ``s = 1/√(N τ)`` per unit weight
direction, centred on the ensemble average. τ is the smallest value for which that leverage
with the ridge, ``h_n(τ) = a_nᵀ (N (V_r + τ))⁻¹ a_n`` summed over the weak directions, is at
most :data:`MAX_LEVERAGE` at the equal-weight reference and at the fitted weights, and at most
:func:`ridge_cap`, so the prior is never narrower than s₀ = :data:`PRIOR_STD` (any mixture with
non-negative weights lies within √2 of w̄). Strong directions with a high leverage (a member
that explains a few events, an isolated tail event) are Poisson-limited, not prior-limited: a
ridge could only help them with a large bias, and they are left alone. The penalised
objective is strictly convex, so ŵ does not depend on the starting point. The covariance is
the posterior one,

    C_r = (V_r + τ)⁻¹ (U_r + τ) (V_r + τ)⁻¹ / N ,

the sandwich of the penalised estimator plus the prior's term ``τ (V_r + τ)⁻² / N``, which is
the squared bias ``τ (V_r + τ)⁻¹ (w* − w̄)`` averaged over the prior: directions with λ ≪ τ get
the prior's variance s², never zero. The prior part's share of σ²(x) is reported per point
(:meth:`genval.wifi.WeightFit.density_band`); where it exceeds :data:`PRIOR_SHARE_FLAG` the band
is mostly the prior's, not the data's, and is flagged. Well-identified fits (no weak direction
with leverage above :data:`MAX_LEVERAGE`, every direction resolved) have τ = 0 and are the
plain maximum-likelihood fit. On the jittered ensemble a threshold of 0.5 instead of 0.2 left
the band covering 53 % at 4 and 6 sd (30 data sets); with 0.2, a first study gave 80 % and
57 %, the validation study (studies/results/validate.md, 30 refits) 67 % and 67 %.

**Input precision.** Independently of the leverage, directions whose eigenvalue is below
:func:`precision_floor` times the largest are not resolved by the input (float64 Gram rounding,
or the rounding of float32 log-densities): the fit leaves them out of its parameters, holds
them at w̄ and gives them the prior's variance (``1/(Nτ)``, or s₀² without ridge;
``WeightFit.n_unidentified``), instead of letting rounding noise move them.

References:
    Badaracco et al., Eqs. (1)–(3); P. J. Huber, Robust regression: asymptotics, conjectures
    and Monte Carlo, Ann. Statist. 1 (1973) 799 (leverage and asymptotic normality).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike, NDArray

from genval.errors import InputError
from genval.linalg import sum_to_one_basis
from genval.newton import NewtonOptions, Solution, minimize_convex

__all__ = [
    "MAX_LEVERAGE",
    "PRIOR_SHARE_FLAG",
    "PRIOR_STD",
    "Identification",
    "identify",
    "input_precision",
    "leverages",
    "members_precision",
    "precision_floor",
    "ridge_cap",
    "ridge_covariance",
    "solve_with_ridge",
]

MAX_LEVERAGE = 0.2
"""Largest leverage ``h_n`` along the weak directions accepted without more ridge: no single
event may carry more than a fifth of the variance of any linear function of ŵ there, i.e. each
is informed by at least about five events (module docstring)."""

PRIOR_STD = 1.0
"""The narrowest prior the ridge may impose, per unit weight direction: any mixture with
non-negative weights lies within √2 of the equal-weight one, so s₀ = 1 does not exclude it."""

PRIOR_SHARE_FLAG = 0.5
"""A band point is flagged when more than this share of σ²(x) comes from the ridge's prior."""

_RIDGE_RTOL = 0.01  # relative resolution of the ridge's bisection


def input_precision(dtype: DTypeLike | object) -> float:
    """Machine epsilon of the type the densities were computed in (numpy or torch dtype).

    bfloat16 (``torch.bfloat16``) has 8 significant bits, ε = 2⁻⁷. Anything unrecognised counts
    as float64.
    """
    name = str(dtype).removeprefix("torch.")
    if name == "bfloat16":
        return 2.0 ** -7
    for candidate in (dtype, name):
        try:
            return float(np.finfo(np.dtype(candidate)).eps)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return float(np.finfo(np.float64).eps)


def members_precision(members: object) -> float:
    """:func:`input_precision` of the type a member set computes its log-densities in.

    Looks for ``members.dtype`` (flows: their torch dtype), then through wrappers that keep
    their members as ``.base`` (:class:`genval.transforms.TransformedMembers`); float64 when
    neither says.
    """
    for _ in range(8):  # wrappers of wrappers, bounded
        dtype = getattr(members, "dtype", None)
        if dtype is not None:
            return input_precision(dtype)
        members = getattr(members, "base", None)
        if members is None:
            break
    return float(np.finfo(np.float64).eps)


def precision_floor(precision: float, log_scale: float, n_members: int) -> float:
    """Eigenvalue ratio ``λ / λ_max`` of ``V_r`` below which a direction is not resolved.

    Two limits, whichever is larger: the float64 Gram product ``V = AᵀA / N`` resolves
    eigenvalues to about ``M ε₆₄ λ_max``; and densities computed in a type of relative
    precision ``δ = precision × max(1, log_scale)`` (log-densities of magnitude ``log_scale``
    carry an absolute error ``precision × |log f|``) perturb the singular values of ``A`` by
    about ``δ √M σ_max``, i.e. the eigenvalues by ``M δ² λ_max``. In float64 the first applies
    (1.3e-14 for M = 60); float32 log-densities of magnitude 5 give 5.4e-12.

    Args:
        precision: relative precision of the member densities (:func:`input_precision`).
        log_scale: typical magnitude of the log-densities (1 for linear densities).
        n_members: M.
    """
    gram = n_members * float(np.finfo(np.float64).eps)
    delta = float(precision) * max(1.0, float(log_scale))
    return max(gram, n_members * delta * delta)


def leverages(V: NDArray[np.float64], A: NDArray[np.float64], ridge: float = 0.0
              ) -> NDArray[np.float64]:
    """``h_n = a_nᵀ (N (V_r + τ))⁻¹ a_n`` per event (N,), ``a_n = Bᵀ A_n``.

    Args:
        V: Hessian ``mean(A_n A_nᵀ)`` (M, M).
        A: ``A_n = F_n / f̂_n`` (N, M).
        ridge: τ; with τ = 0, directions of zero eigenvalue are left out.
    """
    basis = sum_to_one_basis(V.shape[0])
    values, vectors = np.linalg.eigh(basis.T @ V @ basis)
    rotated = A @ (basis @ vectors)
    return _leverage_from_squares(rotated * rotated, values, ridge)


def _leverage_from_squares(squares: NDArray[np.float64], eigenvalues: NDArray[np.float64],
                           ridge: float, n_events: int | None = None) -> NDArray[np.float64]:
    """``h_n`` from the squared rotated scores; ``n_events`` is N when ``squares`` holds only
    some of the events' rows."""
    n_events = squares.shape[0] if n_events is None else n_events
    curvature = np.clip(eigenvalues, 0.0, None) + ridge
    inverse = np.divide(1.0, n_events * curvature, out=np.zeros_like(curvature),
                        where=curvature > 0)
    return squares @ inverse


def ridge_cap(n_events: int) -> float:
    """The largest ridge, ``1 / (N s₀²)`` with s₀ = :data:`PRIOR_STD`: the prior is never
    narrower than s₀ per unit weight direction."""
    return 1.0 / (n_events * PRIOR_STD ** 2)


@dataclass(frozen=True)
class Identification:
    """How well the data identify each weight direction at one set of weights.

    Attributes:
        directions: (M, r) orthonormal weight directions (in ``1⊥``) resolved at the input's
            precision; the others are held at the equal-weight mixture.
        eigenvalues: eigenvalues of the Hessian restricted to ``directions`` (r,), ascending.
        floor: the precision floor (ratio to the largest eigenvalue), :func:`precision_floor`.
        ridge: the smallest τ ≥ 0 meeting the leverage criterion on the resolved directions.
        criterion: the criterion's ``max_n h_n`` over the weak directions (eigenvalue below
            :func:`ridge_cap`) at the ridge given as ``ridge_at_least``, before it was raised.
        leverage: ``max_n h_n(τ)`` over every resolved direction: the largest share of any
            estimate's variance that one event carries.
        weak_leverage: ``max_n h_n(τ)`` over the weak directions (what the criterion bounds).
        n_unresolved: directions of ``1⊥`` not in ``directions`` (M − 1 − r).
    """

    directions: NDArray[np.float64]
    eigenvalues: NDArray[np.float64]
    floor: float
    ridge: float
    criterion: float
    leverage: float
    weak_leverage: float
    n_unresolved: int

    @property
    def n_regularised(self) -> int:
        """Directions where the prior carries more information than the data: the unresolved
        ones and the resolved ones whose eigenvalue is below τ."""
        return self.n_unresolved + int((self.eigenvalues < self.ridge).sum())


def identify(V: NDArray[np.float64], A: NDArray[np.float64], floor: float,
             max_leverage: float | None = MAX_LEVERAGE, *,
             directions: NDArray[np.float64] | None = None, ridge_at_least: float = 0.0,
             row_weights: NDArray[np.float64] | None = None) -> Identification:
    """The resolved directions and the ridge τ the leverage criterion asks for (module
    docstring).

    Directions whose eigenvalue is below ``floor`` times the largest are dropped (held at the
    reference by the caller). τ is the smallest value ≥ ``ridge_at_least`` with
    ``max_n h_n(τ) ≤ max_leverage``, the leverage summed over the weak resolved directions
    (eigenvalue below :func:`ridge_cap`, where a prior of sd :data:`PRIOR_STD` would be at least
    as informative as the data; stronger directions are Poisson-limited, not prior-limited), found
    by bisection in log τ to 1 % and capped at :func:`ridge_cap`.

    Args:
        V: Hessian ``mean(A_n A_nᵀ)`` (M, M) at the weights considered.
        A: ``A_n = F_n / f̂_n`` (N, M) at the same weights (row-scaled densities over the
            mixture).
        floor: eigenvalue ratio below which directions are unresolved (:func:`precision_floor`).
        max_leverage: the criterion; None: no ridge.
        directions: (M, r) orthonormal directions in ``1⊥`` to consider (default: all, B).
        ridge_at_least: a ridge already in use (τ never decreases between rounds of a fit).
        row_weights: event weights normalised to mean one (``V = mean(s̃ A Aᵀ)``); an event's
            influence on ŵ is then ``s̃_n`` times its score, its leverage ``s̃_n²`` times.
    """
    if max_leverage is not None and not 0.0 < max_leverage <= 1.0:
        raise InputError(f"max_leverage must be in (0, 1], got {max_leverage}")
    n_events = A.shape[0]
    if directions is None:
        directions = sum_to_one_basis(V.shape[0])
    values, vectors = np.linalg.eigh(directions.T @ V @ directions)
    top = float(values[-1])
    if not top > 0.0:
        raise InputError("the Hessian of the weight fit is zero on the hyperplane Σw = 1: the "
                         "members are identical at every event")
    resolved = values >= floor * top
    values, kept = values[resolved], directions @ vectors[:, resolved]
    rotated = A @ kept
    if row_weights is not None:
        rotated *= row_weights[:, None]
    squares = rotated * rotated
    cap = ridge_cap(n_events)
    weak = values < cap
    ridge = float(ridge_at_least)
    criterion = float(_leverage_from_squares(squares[:, weak], values[weak], ridge)
                      .max(initial=0.0))
    if max_leverage is not None and criterion > max_leverage and ridge < cap:
        ridge = _bisect_ridge(squares[:, weak], values[weak], max_leverage,
                              low=max(ridge, floor * top), high=cap)
    weak_leverage = float(_leverage_from_squares(squares[:, weak], values[weak], ridge)
                          .max(initial=0.0))
    leverage = float(_leverage_from_squares(squares, values, ridge).max())
    return Identification(kept, values, float(floor), ridge, criterion, leverage, weak_leverage,
                          int(V.shape[0] - 1 - kept.shape[1]))


def _bisect_ridge(squares: NDArray[np.float64], values: NDArray[np.float64], target: float,
                  low: float, high: float) -> float:
    """Smallest τ in ``[low, high]`` (to ``_RIDGE_RTOL``) with ``max h_n(τ) ≤ target``; ``high``
    when even that does not reach it."""
    n_events = squares.shape[0]
    h_low = _leverage_from_squares(squares, values, low)
    if h_low.max() <= target:
        return low
    # h_n(τ) falls with τ: only events above the target at the low end can bind.
    squares = squares[h_low > target]

    def too_high(ridge: float) -> bool:
        return bool(_leverage_from_squares(squares, values, ridge, n_events).max() > target)

    if too_high(high):
        return high
    while high > low * (1.0 + _RIDGE_RTOL):
        middle = float(np.sqrt(low * high))
        if too_high(middle):
            low = middle
        else:
            high = middle
    return high


def solve_with_ridge(S: NDArray[np.float64], directions: NDArray[np.float64], ridge: float,
                     tol: float, max_iter: int, start: NDArray[np.float64] | None = None, *,
                     row_weights: NDArray[np.float64] | None = None) -> Solution:
    """Minimise ``−Σ log(S w) + ½ N τ ‖w − w̄‖²`` over ``w = w̄ + D y`` by exact damped Newton.

    ``D`` (the resolved ``directions``) spans part or all of the hyperplane ``Σ w = 1``, where
    the extended term ``N Σ w`` of Eq. (1) is the constant N (Eq. 1's optimum lies on it); the
    ridge is ``½ N τ ‖y‖²``, the solver's diagonal ``q``. The Hessian ``N (Dᵀ V D + τ)`` is
    positive definite on the resolved directions, so the minimiser is unique (the start only
    changes how fast it is reached); every direction left out keeps w̄ exactly.

    Args:
        S: row-scaled member densities (N, M).
        directions: (M, r) orthonormal directions in ``1⊥``.
        ridge: τ ≥ 0.
        tol, max_iter: as :func:`genval.wifi.fit_weights` (per-event tolerance).
        start: weights to start from, projected onto ``w̄ + span(D)`` (default w̄); must keep
            the density positive there (the previous round's ŵ does).
        row_weights: event weights normalised to mean one (weighted Eq. 1), or None.

    Returns:
        The solver's :class:`~genval.newton.Solution` with ``theta`` the weights (M,).
    """
    n_events, n_members = S.shape
    reference = np.full(n_members, 1.0 / n_members)
    rank = directions.shape[1]
    y0 = np.zeros(rank) if start is None else directions.T @ (start - reference)
    if start is not None and not np.all(S @ (reference + directions @ y0) > 0):
        y0 = np.zeros(rank)  # the projection left the feasible set: start at w̄
    solution = minimize_convex(S @ reference, S @ directions, np.zeros(rank),
                               np.full(rank, n_events * ridge), y0, row_weights=row_weights,
                               options=NewtonOptions(tol=tol * n_events, max_iter=max_iter,
                                                     hessian_dtype=np.float64, refresh=0.0,
                                                     final_step=True))
    return dataclasses.replace(solution, theta=reference + directions @ solution.theta)


def ridge_covariance(V: NDArray[np.float64], mean_a: NDArray[np.float64],
                     directions: NDArray[np.float64], ridge: float, n_events: int, *,
                     W: NDArray[np.float64] | None = None
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The posterior covariance in the coordinates of ``Σ w = 1`` (M−1, M−1) and its prior part.

    On the resolved directions D: ``C = H⁻¹ (U + τ) H⁻¹ / N`` with ``H = Dᵀ V D + τ`` and
    ``U = Dᵀ (W − ā āᵀ) D`` (the scores' covariance, ``W = V`` without event weights, else
    ``mean(s̃² A Aᵀ)``; at the ridge's optimum ``Dᵀ ā = τ y``);
    prior part ``τ H⁻² / N``. Each direction left out (unresolved: the data carry nothing there)
    has the prior's variance ``1 / (N τ)``, or s₀² (:data:`PRIOR_STD`) when τ = 0. The inverse
    goes through the eigendecomposition of ``Dᵀ V D`` (eigenvalues clipped at 0): no jitter.
    """
    basis = sum_to_one_basis(V.shape[0])
    values, vectors = np.linalg.eigh(directions.T @ V @ directions)
    projected_mean = directions.T @ mean_a
    second = V if W is None else W
    U = directions.T @ second @ directions - np.outer(projected_mean, projected_mean)
    inverse = (vectors / (np.clip(values, 0.0, None) + ridge)) @ vectors.T
    lift = basis.T @ directions  # (M−1, r): D in the coordinates of the hyperplane
    cov_data = lift @ (inverse @ U @ inverse / n_events) @ lift.T
    cov_prior = lift @ (ridge * (inverse @ inverse) / n_events) @ lift.T
    left_out = np.eye(basis.shape[1]) - lift @ lift.T
    if directions.shape[1] < basis.shape[1]:
        prior_variance = 1.0 / (n_events * ridge) if ridge > 0 else PRIOR_STD ** 2
        cov_prior = cov_prior + prior_variance * left_out
    cov_prior = 0.5 * (cov_prior + cov_prior.T)
    cov = cov_data + cov_prior
    return 0.5 * (cov + cov.T), cov_prior
