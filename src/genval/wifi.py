"""The w_i f_i ensemble: maximum-likelihood mixture weights with a sandwich covariance.

Given the member density matrix ``F[n, k] = f_k(x_n)`` on the weight-fit events, the weights
minimise the extended negative log-likelihood of paper Eq. (1) with λ = 1::

    L(w) = −(1/N) Σ_n log(F_n · w) + Σ_k w_k .

``L`` is convex on ``{w : F w > 0}``, with gradient ``1 − mean_n(F_n / f_n)`` and Hessian
``V = mean_n(F_n F_nᵀ / f_n²)``. At the optimum ``mean_n(F_nk / f_n) = 1`` for every k, hence
``V ŵ = 1`` and ``Σ ŵ = 1`` exactly: the λ = 1 term is the extended-likelihood normalisation and
no explicit constraint is needed. Weights may be negative.

The sandwich covariance of Eq. (2), ``Cov = V⁻¹ U V⁻¹ / N`` with ``U = Cov_n(∇ℓ_n)``, is
singular along ``1`` by construction (the total is exactly one). It is computed in the M−1
coordinates ``z`` of the hyperplane ``Σ w = 1`` (``w = ŵ + B z``, B from
:func:`genval.linalg.sum_to_one_basis`): ``C_r = V_r⁻¹ U_r V_r⁻¹ / N`` with ``V_r = Bᵀ V B`` and
``U_r = Bᵀ U B``; then ``Cov = B C_r Bᵀ``. No jitter is ever added. (At the exact optimum
``U = V − 1 1ᵀ`` so ``U_r = V_r`` and ``C_r = V_r⁻¹ / N``; the general form is kept so that the
covariance stays a sandwich if the fit stops short of the optimum.)

**Event weights.** Weighted events (Monte-Carlo weights ``s_n``, possibly negative) enter as
``L(w) = −Σ_n s_n log(F_n · w) / Σ_n s_n + Σ_k w_k``: still ``Σ ŵ = 1`` at the optimum, and the
same estimator up to a common scale of the weights (the weights are normalised to mean one,
``s̃ = s N / Σ s``). The sandwich then no longer collapses: with ``A_n = F_n / f_n``,
``V = mean(s̃ A Aᵀ)`` (the Hessian) and ``U = mean(s̃² A Aᵀ) − ā āᵀ`` with ``ā = mean(s̃ A)``
(the per-event scores ``s̃_n (1 − A_n)``, centred), ``U_r ≠ V_r`` once the weights vary, and the
covariance is the full ``V_r⁻¹ U_r V_r⁻¹ / N``. With every ``s_n = 1`` it is the unweighted
result. With negative weights L is no longer convex everywhere: the fit checks that its Hessian
at ŵ is positive definite (a minimum, not a saddle) and raises :class:`FitError` otherwise.

**Weakly identified directions** (:mod:`genval.identification`). Where some event's leverage
``h_n = a_nᵀ (N V_r)⁻¹ a_n`` exceeds ``MAX_LEVERAGE`` (a direction decided by a handful of
events, where the maximum-likelihood ŵ is not Gaussian and the sandwich does not describe it), or
some eigenvalue of ``V_r`` is below the input's precision, the fit adds the ridge
``½ N τ ‖w − w̄‖²`` toward the equal-weight mixture, τ the smallest that meets both, and reports
the posterior covariance ``(V_r + τ)⁻¹ (U_r + τ) (V_r + τ)⁻¹ / N`` (the prior's variance along
directions the data do not fix, never zero). τ = 0 otherwise: well-identified fits are the plain
maximum-likelihood fit with the sandwich above.

References:
    Badaracco et al., Eqs. (1)-(3); Benevedes and Thaler, arXiv:2506.00113.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_event_weights
from genval.errors import ConvergenceWarning, FitError, IllConditionedWarning, InputError
from genval.identification import (
    MAX_LEVERAGE,
    PRIOR_SHARE_FLAG,
    PRIOR_STD,
    Identification,
    identify,
    input_precision,
    precision_floor,
    ridge_covariance,
    solve_with_ridge,
)
from genval.linalg import sum_to_one_basis
from genval.newton import NewtonOptions, Solution, minimize_convex
from genval.row_scaling import prepare_density_matrix

__all__ = ["DensityBand", "WeightFit", "fit_weights", "prepare_density_matrix"]

#: Condition number of the reduced Hessian above which members are reported as near-duplicates.
ILL_CONDITIONED = 1e8
#: The eigenvalue cut of fits saved before the cut came from the input's precision.
LEGACY_RCOND = 1e-12
#: Rounds of "fit, then raise the ridge to what the leverage at ŵ asks" before giving up.
_MAX_RIDGE_ROUNDS = 6


@dataclass(frozen=True, repr=False)
class WeightFit:
    """Result of :func:`fit_weights`.

    Attributes:
        weights: ŵ (M,), summing to one; individual weights may be negative.
        cov: sandwich covariance Cov(ŵ) (M, M) of Eq. (2); ``1ᵀ Cov 1 = 0`` exactly.
        cov_reduced: ``C_r = Bᵀ Cov B`` (M−1, M−1) in the coordinates of ``Σ w = 1``.
        converged: whether the Newton iteration met its tolerance.
        n_iter: Newton iterations taken.
        nll: L(ŵ) of Eq. (1) (per event, including the ``Σ w`` term).
        grad_norm: max-norm of the gradient of L at exit.
        hessian_condition: condition number of the reduced Hessian ``V_r``.
        effective_rank: effective rank (exp of the spectral entropy) of the columns of F,
            rows scaled by ``1 / f̂`` (the Hessian's factor); M for independent members.
        n_events: N (events of non-zero weight when event weights were given).
        n_unidentified: weight directions not resolved at the input's precision (eigenvalue of
            ``V_r`` below :attr:`precision_floor` times the largest; near-duplicate members):
            set by the ridge's prior alone, with its variance (fits saved before the prior
            existed held them at the start with zero variance).
        messages: every warning issued by the fit, kept with the result.
        ridge: τ of the ridge ``½ N τ ‖w − w̄‖²`` toward the equal-weight mixture (0: the plain
            maximum-likelihood fit of Eq. 1), :mod:`genval.identification`.
        cov_prior_reduced: the prior's part of :attr:`cov_reduced`, ``τ (V_r + τ)⁻² / N``
            (None when τ = 0).
        n_regularised: directions where the prior carries more information than the data
            (eigenvalue of ``V_r`` below τ).
        leverage: largest leverage ``max_n h_n`` of a weight-fit event at ŵ, with the ridge:
            the largest share of any estimate's variance that one event carries.
        precision_floor: eigenvalue ratio below which ``V_r`` is not resolved by the input
            (:func:`genval.identification.precision_floor`).
        n_effective: with event weights, the effective number of events ``(Σs)² / Σs²`` (the
            size of an unweighted sample as informative for a mean); None when unweighted.
        unsupported: members the weight-fit events do not support (the likelihood of Eq. (1)
            has no maximum with them: it grows without bound as their weight goes negative);
            their weights are fixed at 0 with no variance and the fit warns.
    """

    weights: NDArray[np.float64]
    cov: NDArray[np.float64]
    cov_reduced: NDArray[np.float64]
    converged: bool
    n_iter: int
    nll: float
    grad_norm: float
    hessian_condition: float
    effective_rank: float
    n_events: int
    n_unidentified: int = 0
    messages: tuple[str, ...] = field(default=())
    ridge: float = 0.0
    cov_prior_reduced: NDArray[np.float64] | None = None
    n_regularised: int = 0
    leverage: float = float("nan")
    precision_floor: float = LEGACY_RCOND
    n_effective: float | None = None
    unsupported: tuple[int, ...] = field(default=())

    @property
    def n_members(self) -> int:
        return int(self.weights.shape[0])

    @property
    def basis(self) -> NDArray[np.float64]:
        """Orthonormal basis B (M, M−1) of ``1⊥`` in which :attr:`cov_reduced` is expressed."""
        return sum_to_one_basis(self.n_members)

    @property
    def abs_weight_sum(self) -> float:
        """``Σ|ŵ_k|``: 1 for non-negative weights; large values mean cancelling weights of
        near-duplicate members, and the exact sampler accepts ``1/Σ|ŵ|`` of its proposals."""
        return float(np.abs(self.weights).sum())

    @property
    def weight_std(self) -> NDArray[np.float64]:
        """Standard error of each weight, ``sqrt(diag Cov)``."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    @property
    def cov_prior(self) -> NDArray[np.float64]:
        """The ridge prior's part of :attr:`cov` (M, M): zero for a plain fit."""
        if self.cov_prior_reduced is None:
            return np.zeros_like(self.cov)
        return self.basis @ self.cov_prior_reduced @ self.basis.T

    @property
    def prior_std(self) -> float:
        """The prior's standard deviation per unit weight direction around the equal-weight
        mixture: ``1/√(N τ)`` with a ridge, s₀ (``PRIOR_STD``) when only unresolved directions
        have a prior, inf for a plain fit. Compare it with how far the truth may lie from equal
        weights: the prior's share of the band is only honest if it covers that."""
        if self.ridge > 0:
            return float(1.0 / np.sqrt(self.n_events * self.ridge))
        return PRIOR_STD if self.n_unidentified and self.cov_prior_reduced is not None \
            else float("inf")

    @cached_property
    def _band_factors(self) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        """``B Q √Λ`` for :attr:`cov_reduced` (and its prior part): ``σ² = ‖F B Q √Λ‖²``."""
        basis = self.basis

        def factor(cov: NDArray[np.float64]) -> NDArray[np.float64]:
            values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
            return basis @ (vectors * np.sqrt(np.clip(values, 0.0, None)))

        prior = None if self.cov_prior_reduced is None else factor(self.cov_prior_reduced)
        return factor(self.cov_reduced), prior

    def _check_members(self, F: NDArray[np.float64]) -> NDArray[np.float64]:
        arr = np.asarray(F, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_members:
            raise InputError(f"F must have shape (N, {self.n_members}), got {arr.shape}")
        return arr

    def density(self, F: ArrayLike) -> NDArray[np.float64]:
        """Mixture density ``f̂(x_n) = F_n · ŵ`` (N,) at events with member densities F (N, M)."""
        return self._check_members(np.asarray(F)) @ self.weights

    def density_std(self, F: ArrayLike) -> NDArray[np.float64]:
        """Predictive standard deviation ``σ(x_n) = sqrt(F_nᵀ Cov F_n)`` (N,), paper Eq. (3).

        Evaluated through a factor of the reduced covariance, ``σ² = ‖F B L‖²`` with
        ``C_r = L Lᵀ`` (from its eigendecomposition), so it is non-negative by construction and
        stays accurate when C_r spans many orders of magnitude (a ridge's prior variance along
        directions that barely change f).
        """
        return self.density_band(F).std

    def density_band(self, F: ArrayLike) -> DensityBand:
        """σ(x) of Eq. (3) with the share of σ² that comes from the ridge's prior (N,).

        The share is ``F_nᵀ C_prior F_n / σ²``: 0 without ridge; above
        :data:`~genval.identification.PRIOR_SHARE_FLAG` the band at that point is mostly the
        prior's (directions the data do not identify), and :attr:`DensityBand.flagged` is set.
        """
        arr = self._check_members(np.asarray(F))
        total, prior = self._band_factors
        variance = _squared_norms(arr @ total)
        if prior is None:
            share = np.zeros_like(variance)
        else:
            prior_variance = _squared_norms(arr @ prior)
            share = np.clip(np.divide(prior_variance, variance, out=np.zeros_like(variance),
                                      where=variance > 0), 0.0, 1.0)
        return DensityBand(std=np.sqrt(variance), prior_share=share)

    def __repr__(self) -> str:
        status = "converged" if self.converged else "NOT converged"
        events = (f"N={self.n_events}" if self.n_effective is None
                  else f"N={self.n_events} weighted, N_eff={self.n_effective:.4g}")
        top = np.argsort(-np.abs(self.weights))[:3]
        top_txt = ", ".join(f"w[{k}]={self.weights[k]:+.4f}±{self.weight_std[k]:.4f}" for k in top)
        lines = [
            f"WeightFit(M={self.n_members}, {events}, {status} in {self.n_iter} "
            f"Newton iterations, nll={self.nll:.10g}, |grad|={self.grad_norm:.2e},",
            f"          cond(V)={self.hessian_condition:.3g}, "
            f"effective rank={self.effective_rank:.2f}, sum(w)={self.weights.sum():.12f}, "
            f"sum|w|={self.abs_weight_sum:.4g},",
            f"          largest: {top_txt})",
        ]
        if self.ridge > 0:
            lines.insert(2, f"          ridge τ={self.ridge:.3g} toward equal weights (prior sd "
                            f"{self.prior_std:.3g}) on {self.n_regularised} direction(s), "
                            f"leverage {self.leverage:.2f},")
        if self.unsupported:
            lines.insert(2, f"          members {list(self.unsupported)} without support in "
                            "the data: weight fixed at 0,")
        lines += [f"  warning: {m}" for m in self.messages]
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # notebook display, genval.display
        from genval.display import weight_fit_html

        return weight_fit_html(self)

    def to_dict(self) -> dict[str, object]:
        """Every field by name; arrays stay numpy arrays, ``messages`` becomes a list.

        The schema of a saved fit (``fit/fit.npz`` and ``fit/fit.json`` of a run directory);
        :meth:`from_dict` inverts it.
        """
        import dataclasses

        return {f.name: (list(getattr(self, f.name)) if f.name in ("messages", "unsupported")
                         else getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> WeightFit:
        """The fit that :meth:`to_dict` described; keys that are not fields are ignored.

        Raises:
            KeyError: a field without a default is missing.
        """
        import dataclasses

        convert = {"weights": lambda v: np.asarray(v, dtype=np.float64),
                   "cov": lambda v: np.asarray(v, dtype=np.float64),
                   "cov_reduced": lambda v: np.asarray(v, dtype=np.float64),
                   "cov_prior_reduced": lambda v: (None if v is None
                                                   else np.asarray(v, dtype=np.float64)),
                   "converged": bool, "n_iter": int, "n_events": int, "n_unidentified": int,
                   "n_regularised": int, "messages": lambda v: tuple(str(m) for m in v),
                   "n_effective": lambda v: None if v is None else float(v),
                   "unsupported": lambda v: tuple(int(k) for k in np.atleast_1d(v))}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = convert.get(f.name, float)(data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"WeightFit.from_dict: missing field {f.name!r}")
        return cls(**values)


@dataclass(frozen=True)
class DensityBand:
    """σ(x) of Eq. (3) at a set of points and the share of σ² that the ridge's prior carries.

    Attributes:
        std: σ(x_n) (N,).
        prior_share: ``σ²_prior / σ²`` in [0, 1] (N,); 0 for a fit without ridge.
    """

    std: NDArray[np.float64]
    prior_share: NDArray[np.float64]

    @property
    def flagged(self) -> NDArray[np.bool_]:
        """Points whose band is mostly the prior's (share above
        :data:`~genval.identification.PRIOR_SHARE_FLAG`)."""
        return self.prior_share > PRIOR_SHARE_FLAG


def _squared_norms(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.einsum("ij,ij->i", rows, rows)


def _truncated_inverse(matrix: NDArray[np.float64], rcond: float
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Pseudo-inverse of a symmetric PSD matrix, dropping eigenvalues below ``rcond · max``.

    Returns ``(inverse, eigenvalues, n_dropped)``. Only used without ridge, where every
    eigenvalue is above the precision floor (``rcond``), so nothing is dropped in practice.
    """
    values, vectors = np.linalg.eigh(matrix)
    keep = values > rcond * values[-1]
    kept = vectors[:, keep]
    return (kept / values[keep]) @ kept.T, values, int((~keep).sum())


@dataclass(frozen=True)
class _Terms:
    """The sums of Eq. (2) at ŵ, per unit (normalised) event weight.

    ``A_n = S_n / f_n`` (N, M), ``mean_a = mean(s̃ A)``, ``V = mean(s̃ A Aᵀ)`` (the Hessian of L)
    and ``W = mean(s̃² A Aᵀ)`` (the second moment of the scores; ``W is V`` for unweighted
    events).
    """

    A: NDArray[np.float64]
    mean_a: NDArray[np.float64]
    V: NDArray[np.float64]
    W: NDArray[np.float64]


def _hessian_terms(S: NDArray[np.float64], f: NDArray[np.float64],
                   s: NDArray[np.float64] | None = None) -> _Terms:
    """``A``, the mean of ``s̃_n A_n``, ``V`` and ``W`` in one pass over the events.

    ``s`` are the event weights normalised to mean one (None: unweighted, ``W = V``).
    """
    inv_f = 1.0 / f
    n = S.shape[0]
    A = S * inv_f[:, None]
    if s is None:
        # A.T is Fortran-ordered: BLAS takes it without a copy.
        V = (A.T @ A) / n
        return _Terms(A, (inv_f @ S) / n, V, V)
    sA = A * s[:, None]
    # V = Σ s̃ A Aᵀ / N = (s̃ A)ᵀ A / N; W = Σ s̃² A Aᵀ / N = (s̃ A)ᵀ (s̃ A) / N.
    V = sA.T @ A / n
    return _Terms(A, ((s * inv_f) @ S) / n, 0.5 * (V + V.T), (sA.T @ sA) / n)


def _objective(f: NDArray[np.float64], w: NDArray[np.float64],
               s: NDArray[np.float64] | None = None) -> float:
    """L of Eq. (1) per unit event weight; ``s`` normalised to mean one (None: unweighted)."""
    logs = np.log(f)
    return float(-(np.mean(logs) if s is None else (s @ logs) / len(s)) + w.sum())


def _near_duplicates(V_r: NDArray[np.float64], basis: NDArray[np.float64], count: int = 4
                     ) -> list[int]:
    """Members that dominate the weakest direction of the reduced Hessian."""
    _, vectors = np.linalg.eigh(V_r)
    direction = basis @ vectors[:, 0]
    return [int(k) for k in np.argsort(-np.abs(direction))[:count]]


def _starting_weights(S: NDArray[np.float64], w0: ArrayLike | None) -> NDArray[np.float64]:
    """``w0`` (default uniform ``1/M``), checked to give a positive density at every event."""
    n_members = S.shape[1]
    w = (np.full(n_members, 1.0 / n_members) if w0 is None
         else np.asarray(w0, dtype=np.float64).reshape(n_members).copy())
    f = S @ w
    if not np.all(f > 0):
        raise FitError(f"starting weights give a non-positive density on {int((f <= 0).sum())} "
                       "events")
    return w


def _solve_weights(S: NDArray[np.float64], w: NDArray[np.float64], tol: float, max_iter: int,
                   rcond: float, s: NDArray[np.float64] | None = None) -> Solution:
    """Minimise ``N·L(w) = −Σ s̃ log(S w) + N 1ᵀw`` (Eq. 1 times N) by exact damped Newton.

    ``s`` are the event weights normalised to mean one (``Σ s̃ = N``; None: all one). The
    per-event ``tol`` becomes ``N·tol`` on the summed objective. The Hessian is float64 and
    fresh every step; directions below the input's precision floor (``rcond`` times the largest
    eigenvalue) are left out of a step (with negative event weights, also directions of
    negative curvature: the step is Newton's on the positive part of the Hessian, a descent
    direction; the fit then continues on the resolved directions, see :func:`fit_weights`);
    once the decrement is below ``tol`` one more full step brings ``Σŵ = 1`` to rounding.
    """
    n_events, n_members = S.shape
    return minimize_convex(np.zeros(n_events), S, np.full(n_members, float(n_events)),
                           np.zeros(n_members), w, row_weights=s,
                           options=NewtonOptions(tol=tol * n_events, max_iter=max_iter,
                                                 hessian_dtype=np.float64, refresh=0.0,
                                                 rcond=rcond, final_step=True))


@dataclass(frozen=True)
class _Sandwich:
    """Cov(ŵ) of Eq. (2) (posterior with a ridge) and the conditioning of ``V_r``."""

    cov: NDArray[np.float64]
    cov_reduced: NDArray[np.float64]
    cov_prior_reduced: NDArray[np.float64] | None
    condition: float


def _sandwich_covariance(terms: _Terms, n_events: int, ident: Identification) -> _Sandwich:
    """``Cov = B V_r⁻¹ U_r V_r⁻¹ Bᵀ / N`` in the coordinates of ``Σ w = 1``, Eq. (2).

    The scores are ``g_n = s̃_n (1 − A_n)``, ``Bᵀ g_n = −s̃_n Bᵀ A_n`` (``Bᵀ 1 = 0``), and
    ``U = Cov_n(g_n) = W − ā āᵀ`` in those coordinates; unweighted, ``W = V``. With a ridge or
    unresolved directions, the posterior of :func:`genval.identification.ridge_covariance`.
    """
    n_members = terms.V.shape[0]
    basis = sum_to_one_basis(n_members)
    V_r = basis.T @ terms.V @ basis
    eig_v = np.linalg.eigvalsh(V_r)
    condition = float(eig_v[-1] / eig_v[0]) if eig_v[0] > 0 else float("inf")
    cov_prior = None
    if ident.ridge > 0 or ident.n_unresolved:
        cov_reduced, cov_prior = ridge_covariance(terms.V, terms.mean_a, ident.directions,
                                                  ident.ridge, n_events, W=terms.W)
    else:
        projected_mean = basis.T @ terms.mean_a
        W_r = V_r if terms.W is terms.V else basis.T @ terms.W @ basis
        U_r = W_r - np.outer(projected_mean, projected_mean)
        V_r_inv, _, _ = _truncated_inverse(V_r, ident.floor)
        cov_reduced = V_r_inv @ U_r @ V_r_inv / n_events
        cov_reduced = 0.5 * (cov_reduced + cov_reduced.T)
    cov = basis @ cov_reduced @ basis.T
    return _Sandwich(cov, cov_reduced, cov_prior, condition)


def _conditioning_message(V: NDArray[np.float64], condition: float, ident: Identification,
                          n_events: int, trigger: float, max_leverage: float | None,
                          labels: NDArray[np.int64] | None = None) -> str | None:
    """The IllConditionedWarning text for near-duplicate members or weak directions, or None.
    ``labels``: the caller's index of each column of V (members left out of the fit)."""
    basis = sum_to_one_basis(V.shape[0])
    V_r = basis.T @ V @ basis
    names = (lambda members: members) if labels is None else (
        lambda members: [int(labels[k]) for k in members])
    parts = []
    if ident.n_unresolved:
        prior = (1.0 / np.sqrt(n_events * ident.ridge)) if ident.ridge > 0 else PRIOR_STD
        parts.append(
            f"the Hessian of the weight fit is not resolved at the input's precision (condition "
            f"number {condition:.3g}, floor {ident.floor:.2g}) along {ident.n_unresolved} "
            f"direction(s): members {names(_near_duplicates(V_r, basis))} are "
            "(near-)duplicates. Weight "
            "differences along those directions do not change the likelihood: they are held at "
            f"the equal-weight mixture with the prior's variance (sd {prior:.3g}); consider "
            "removing duplicated members")
    if ident.ridge > 0:
        capped = ("" if max_leverage is None or ident.weak_leverage <= max_leverage * 1.02
                  else f" The prior is at its narrowest (sd {PRIOR_STD:g}) and the leverage "
                       f"stays {ident.weak_leverage:.2f}: more weight-fit events are needed.")
        parts.append(
            f"weakly identified weights: single events carry up to {trigger:.2f} of an "
            f"estimate's variance along weak directions (leverage above {max_leverage}): they "
            "are decided by a handful of events, where the sandwich of Eq. (2) does not hold. "
            "The fit adds a ridge toward the equal-weight mixture (a Gaussian prior of sd "
            f"{1.0 / np.sqrt(n_events * ident.ridge):.3g} per unit weight direction, "
            f"τ = {ident.ridge:.3g}); the prior dominates {ident.n_regularised} of "
            f"{V_r.shape[0]} directions. Cov(ŵ) includes the prior's variance; "
            "WeightFit.density_band reports its share of σ(x)." + capped)
    if parts:
        return " ".join(parts)
    if condition > ILL_CONDITIONED:
        return (f"ill-conditioned weight fit (condition number of the Hessian {condition:.3g}): "
                f"members {names(_near_duplicates(V_r, basis))} are nearly linearly dependent, "
                "so their "
                "weights are poorly determined and their errors large")
    return None


def _curvature_hint(S: NDArray[np.float64], f: NDArray[np.float64],
                    s: NDArray[np.float64] | None, rows: NDArray[np.int64] | None) -> str:
    """Where the negative curvature comes from: the negative-weight event with the largest
    ``|s̃_n| ‖A_n‖²`` (its contribution to the Hessian), as a row of the caller's input."""
    if s is None or rows is None or not (s < 0).any():
        return ""
    negative = np.flatnonzero(s < 0)
    a = S[negative] / f[negative, None]
    worst = int(np.argmax(-s[negative] * np.einsum("ij,ij->i", a, a)))
    return (f" (largest negative contribution: event {int(rows[negative[worst]])}, weight "
            f"{s[negative[worst]]:.3g} of a mean 1, mixture density there "
            f"{f[negative[worst]] / np.median(f):.3g} of the median)")


def _check_curvature(V: NDArray[np.float64], hint: str) -> None:
    """Raise when the reduced Hessian at ŵ has a negative eigenvalue beyond rounding (negative
    event weights: ŵ is a saddle of the weighted likelihood, not a minimum)."""
    basis = sum_to_one_basis(V.shape[0])
    eig_v = np.linalg.eigvalsh(basis.T @ V @ basis)
    if eig_v[0] < -LEGACY_RCOND * abs(eig_v[-1]):
        raise FitError(
            f"the weighted likelihood of Eq. (1) is not convex at the fitted weights (smallest "
            f"Hessian eigenvalue {eig_v[0]:.3g}, largest {eig_v[-1]:.3g}), so ŵ is not a "
            f"minimum{hint}. With negative event weights L need not be convex, and it is "
            "unbounded below where the mixture vanishes at a negative-weight event; use more "
            "weight-fit events or fewer (or smaller) negative weights")


def _effective_rank(V: NDArray[np.float64]) -> float:
    """exp of the spectral entropy of the singular values of the rescaled F (Hessian factor)."""
    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(V), 0.0, None))
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _input_floor(F: ArrayLike, log: bool, precision: float | None, n_members: int) -> float:
    """:func:`~genval.identification.precision_floor` for the caller's F."""
    if precision is None:
        precision = input_precision(getattr(F, "dtype", np.float64))
    scale = 1.0
    if log:
        values = np.asarray(F)
        finite = values[np.isfinite(values)]
        scale = float(np.sqrt(np.mean(np.square(finite, dtype=np.float64)))) if finite.size \
            else 1.0
    return precision_floor(precision, scale, n_members)


@dataclass(frozen=True)
class _Rounds:
    """The outcome of :func:`_fit_with_ridge`."""

    solution: Solution
    terms: _Terms
    identification: Identification
    trigger: float
    n_iter: int
    settled: bool


def _fit_with_ridge(S: NDArray[np.float64], start: NDArray[np.float64], tol: float,
                    max_iter: int, floor: float, max_leverage: float | None,
                    s: NDArray[np.float64] | None = None,
                    rows: NDArray[np.int64] | None = None) -> _Rounds:
    """Eq. (1) on the resolved directions, with the smallest ridge the leverage asks for.

    The equal-weight reference decides which directions are resolved at the input's precision
    and a first τ (the leverage there). With neither (well-identified ensembles) the first round
    is the plain maximum-likelihood fit from ``start``, unique, so independent of ``start``.
    Each round's ŵ is checked: τ is raised (never lowered) to what its leverage asks and
    directions found unresolved there are dropped, until nothing changes (τ to 2 %). Ridge
    rounds start from the previous round's ŵ (the first from the reference); their minimum is
    unique too. ``s``: normalised event weights (the leverage is then ``s̃_n²`` times that of
    an unweighted event); with negative ones, a round that ends at a saddle raises.
    """
    n_members = S.shape[1]
    reference = np.full(n_members, 1.0 / n_members)
    terms = _hessian_terms(S, S @ reference, s)
    ident = identify(terms.V, terms.A, floor, max_leverage, row_weights=s)
    directions, ridge, trigger = ident.directions, ident.ridge, ident.criterion
    plain = ridge == 0.0 and not ident.n_unresolved
    warm = None  # rounds after the first start from the previous round's ŵ
    n_iter = 0
    settled = False
    for _ in range(_MAX_RIDGE_ROUNDS):
        solution = (_solve_weights(S, start, tol, max_iter, floor, s) if plain
                    else solve_with_ridge(S, directions, ridge, tol, max_iter, warm,
                                          row_weights=s))
        n_iter += solution.n_iter + int(solution.line_search_failed)
        terms = _hessian_terms(S, solution.density, s)
        if s is not None and (s < 0).any():
            _check_curvature(terms.V, _curvature_hint(S, solution.density, s, rows))
        ident = identify(terms.V, terms.A, floor, max_leverage, directions=directions,
                         ridge_at_least=ridge, row_weights=s)
        trigger = max(trigger, ident.criterion)
        if ident.ridge <= ridge * 1.02 and ident.directions.shape[1] == directions.shape[1]:
            settled = True
            break
        directions, ridge, plain = ident.directions, ident.ridge, False
        warm = solution.theta
    return _Rounds(solution, terms, ident, trigger, n_iter, settled)


def fit_weights(F: ArrayLike, *, log: bool = False, max_iter: int = 100, tol: float = 1e-14,
                w0: ArrayLike | None = None, event_weights: ArrayLike | None = None,
                max_leverage: float | None = MAX_LEVERAGE, precision: float | None = None
                ) -> WeightFit:
    """Fit the w_i f_i weights by damped Newton and compute their sandwich covariance.

    Minimises paper Eq. (1) with λ = 1 in float64 with the exact solver of
    :func:`genval.newton.minimize_convex`. Each Newton step solves ``V Δ = −∇L``; a
    backtracking (Armijo) line search starts from the largest step that keeps every
    ``F_n · w > 0`` (times 0.99), so no clamping and no restarts are needed.

    Weight directions the data identify only through a handful of events (leverage above
    ``max_leverage``) or not at all at the input's precision get a ridge toward the
    equal-weight mixture and the prior's variance (:mod:`genval.identification`); ŵ then does
    not depend on ``w0``.

    Args:
        F: (N, M) member densities ``f_k(x_n)`` on the weight-fit events (or log-densities
            with ``log=True``, which avoids underflow far in the tails).
        log: interpret ``F`` as log-densities.
        max_iter: Newton iteration cap; a fit that hits it warns and is marked not converged.
        tol: stop when half the squared Newton decrement ``gᵀ V⁻¹ g / 2`` (the predicted
            decrease of L, per event) falls below ``tol``; one more full step is then taken.
        w0: starting weights (default uniform ``1/M``); must give ``F w0 > 0``.
        event_weights: optional (N,) per-event weights ``s_n`` (Monte-Carlo weights, finite,
            possibly negative, with ``Σ s > 0``). The likelihood becomes
            ``−Σ s_n log f_n / Σ s + Σ w`` and the covariance the general sandwich with
            ``U = Cov_n(s_n ∇ℓ_n)``; only their ratios matter. Events of weight zero are
            dropped. None (default): every event counts once.
        max_leverage: largest leverage of an event accepted without ridge (default
            :data:`~genval.identification.MAX_LEVERAGE`); None: the plain maximum-likelihood
            fit wherever the input resolves the Hessian.
        precision: relative precision of the member densities (machine epsilon of the type
            they were computed in, e.g. 1.2e-7 for float32 flows returned as float64); default:
            that of F's dtype. Sets the precision floor of the Hessian's eigenvalues.

    Returns:
        :class:`WeightFit` with ŵ, Cov(ŵ) and diagnostics.

    Raises:
        InputError: malformed F (see :func:`prepare_density_matrix`) or ``event_weights``
            (wrong length, NaN/inf, ``Σ s ≤ 0``), fewer than 2 members, fewer events than
            members, ``max_iter < 1`` or ``max_leverage`` outside (0, 1].
        FitError: infeasible ``w0``; with negative event weights, a fit that ends at a saddle
            of the (then non-convex) likelihood.

    Warns:
        IllConditionedWarning: near-duplicate members (condition number of ``V_r`` above 1e8;
            the members involved are named), and any fit with a ridge (weakly identified
            directions: why, the prior's size, how many directions it dominates).
        ConvergenceWarning: the iteration cap was reached.

    References:
        Badaracco et al., Eqs. (1) and (2).
    """
    if max_iter < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
    if max_leverage is not None and not 0.0 < max_leverage <= 1.0:
        raise InputError(f"max_leverage must be in (0, 1], got {max_leverage}")
    S, log_scale = prepare_density_matrix(F, log=log)
    s = rows = None
    if event_weights is not None:
        raw = as_event_weights(event_weights, S.shape[0], name="event_weights")
        # A zero weight removes the event from every sum: drop it (it must not constrain F w > 0).
        used = raw != 0
        rows = np.flatnonzero(used)
        S, log_scale, raw = S[used], log_scale[used], raw[used]
        s = raw * (raw.size / raw.sum())  # normalised to mean one; sum checked positive above
    n_events, n_members = S.shape
    if n_members < 2:
        raise InputError(f"need at least 2 members for a w_i f_i ensemble, got {n_members}")
    if n_events <= n_members:
        raise InputError(f"need more events than members to fit the weights: N={n_events}, "
                         f"M={n_members}")
    full_members = n_members
    keep = np.arange(n_members)
    unsupported: list[int] = []
    while True:
        # Members without support in the data (the likelihood grows without bound along a
        # direction that gives them a negative weight) are taken out one by one and the fit
        # repeated on the others (_recession_direction).
        S_kept = S if not unsupported else S[:, keep]
        floor = _input_floor(F, log, precision, keep.size)
        start = _starting_weights(S_kept, w0 if not unsupported else None)
        rounds = _fit_with_ridge(S_kept, start, tol, max_iter, floor, max_leverage, s, rows)
        if _stationary(rounds) or keep.size <= 2:
            break
        direction = _recession_direction(S_kept, s)
        if direction is None:
            break
        dropped = int(keep[int(np.argmin(direction))])
        unsupported.append(dropped)
        keep = keep[keep != dropped]
    S, n_members = S_kept, keep.size
    solution, ident, terms = rounds.solution, rounds.identification, rounds.terms
    w, f = solution.theta, solution.density
    n_iter = rounds.n_iter
    decrement = 2.0 * solution.decrement / n_events  # gᵀ V⁻¹ g of the per-event L
    messages: list[str] = []
    if solution.line_search_failed:
        messages.append(f"line search failed at iteration {n_iter} (decrement {decrement:.3g})")
    converged = solution.converged
    if converged and not _stationary(rounds):
        # Σŵ = 1 holds at every stationary point of Eq. (1): a fit that ended elsewhere did not
        # find the maximum (there may be none), whatever its decrement said.
        converged = False
        msg = (f"the weight fit stopped away from a maximum of the likelihood of Eq. (1): "
               f"Σŵ = {float(w.sum()):.6g} (1 at any maximum), Σ|ŵ| = "
               f"{float(np.abs(w).sum()):.3g}; the weights are not an estimate")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    if unsupported:
        msg = (f"member(s) {sorted(unsupported)} have no support among the {n_events} weight-fit "
               "events: the likelihood of Eq. (1) grows without bound when they get a negative "
               "weight (the mixture's density rises at every event and turns negative where "
               "they have mass and no event lies), so it has no maximum with them. Their "
               "weights are fixed at 0 (no variance) and the others are fitted without them; "
               "check that these members describe the data at all, or fit on more events")
        messages.append(msg)
        warnings.warn(msg, IllConditionedWarning, stacklevel=2)

    gradient = 1.0 - terms.mean_a
    if ident.ridge > 0 or ident.n_unresolved:
        # the penalised objective's gradient along the fitted directions (Σ w = 1 exactly)
        gradient = ident.directions.T @ (gradient + ident.ridge * (w - 1.0 / n_members))
    grad_norm = float(np.max(np.abs(gradient)))
    if not solution.converged:
        msg = (f"weight fit did not converge in {n_iter} Newton iterations: "
               f"|grad|={grad_norm:.3g}, last decrement {decrement:.3g}")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    if not rounds.settled:
        msg = (f"the ridge did not settle in {_MAX_RIDGE_ROUNDS} rounds: the largest leverage "
               f"of the weak directions at ŵ is {ident.weak_leverage:.2f} with "
               f"τ = {ident.ridge:.3g}")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    sandwich = _sandwich_covariance(terms, n_events, ident)
    warning = _conditioning_message(terms.V, sandwich.condition, ident, n_events,
                                    rounds.trigger, max_leverage, labels=keep)
    if warning is not None:
        messages.append(warning)
        warnings.warn(warning, IllConditionedWarning, stacklevel=2)
    cov, cov_reduced, cov_prior_reduced = (sandwich.cov, sandwich.cov_reduced,
                                           sandwich.cov_prior_reduced)
    if unsupported:
        w, cov, cov_reduced, cov_prior_reduced = _embed(keep, full_members, w, sandwich)
    return WeightFit(weights=w, cov=cov, cov_reduced=cov_reduced,
                     converged=converged, n_iter=n_iter,
                     nll=_objective(f, w, s) - float(log_scale.mean() if s is None
                                                     else (s @ log_scale) / n_events),
                     grad_norm=grad_norm, hessian_condition=sandwich.condition,
                     effective_rank=_effective_rank(terms.V), n_events=n_events,
                     n_unidentified=ident.n_unresolved, messages=tuple(messages),
                     ridge=ident.ridge, cov_prior_reduced=cov_prior_reduced,
                     n_regularised=ident.n_regularised, leverage=ident.leverage,
                     precision_floor=floor,
                     n_effective=None if s is None else float(s.sum() ** 2 / (s @ s)),
                     unsupported=tuple(sorted(unsupported)))


def _stationary(rounds: _Rounds) -> bool:
    """Whether the fit ended at a stationary point of its objective.

    With a ridge or unresolved directions the weights are parametrised on ``Σ w = 1`` and the
    penalised objective is bounded below: Newton's decrement is the certificate. The plain fit
    of Eq. (1) has ``Σŵ = ŵ · mean(A) = 1`` at every stationary point (module docstring); where
    the likelihood has no maximum its iterates run off along a direction of growth with
    ``Σ w ≠ 1``, and a decrement computed on the directions the Hessian still resolves there
    can look converged.
    """
    w = rounds.solution.theta
    if rounds.identification.ridge > 0 or rounds.identification.n_unresolved:
        return True
    scale = max(1.0, float(np.abs(w).sum()))
    return bool(np.isfinite(w).all() and abs(float(w.sum()) - 1.0) <= 1e-8 * scale)


def _recession_direction(S: NDArray[np.float64], s: NDArray[np.float64] | None
                         ) -> NDArray[np.float64] | None:
    """A direction along which the likelihood of Eq. (1) grows without bound, or None.

    A direction ``d`` with ``Σ d = 0`` and ``S d ≥ 0`` at every event, ``> 0`` at some, raises
    the mixture's density at every event while keeping ``Σ w`` (the extended term) fixed: the
    likelihood has no maximum (Farkas: it has one exactly when ``1`` is a non-negative
    combination of the rows ``S_n``). Such a direction gives a negative weight to a member the
    events do not support (its density is below a sub-probability mixture of the others at
    every event), and the density turns negative where that member has mass. Found by a linear
    programme (HiGHS): maximise ``mean(S d)`` over ``|d_k| ≤ 1``; gains below 1e-9 (the
    solver's feasibility tolerance times the scale of S) count as none. Events of negative
    weight (a non-convex likelihood) are left to the curvature check: None.
    """
    from scipy.optimize import linprog

    if s is not None and (s < 0).any():
        return None
    n_events, n_members = S.shape
    rates = (S.sum(axis=0) if s is None else s @ S) / n_events
    result = linprog(-rates, A_ub=-S, b_ub=np.zeros(n_events), A_eq=np.ones((1, n_members)),
                     b_eq=np.zeros(1), bounds=(-1.0, 1.0), method="highs")
    if result.status != 0 or not -result.fun > 1e-6:
        return None
    return np.asarray(result.x, dtype=np.float64)


def _embed(keep: NDArray[np.int64], n_members: int, w: NDArray[np.float64], sandwich: _Sandwich
           ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                      NDArray[np.float64] | None]:
    """ŵ and its covariances of a fit on the members ``keep``, as those of all ``n_members``
    (the others at weight 0 with no variance); reduced covariances in the full basis."""
    embedding = np.zeros((n_members, keep.size))
    embedding[keep, np.arange(keep.size)] = 1.0
    basis = sum_to_one_basis(n_members)
    kept_basis = sum_to_one_basis(keep.size)

    def lift(reduced: NDArray[np.float64]) -> NDArray[np.float64]:
        full = embedding @ (kept_basis @ reduced @ kept_basis.T) @ embedding.T
        return 0.5 * (full + full.T)

    cov = lift(sandwich.cov_reduced)
    prior = (None if sandwich.cov_prior_reduced is None
             else basis.T @ lift(sandwich.cov_prior_reduced) @ basis)
    return embedding @ w, cov, basis.T @ cov @ basis, prior
