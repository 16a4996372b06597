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

References:
    Badaracco et al., Eqs. (1)-(3); Benevedes and Thaler, arXiv:2506.00113.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_event_weights
from genval.errors import ConvergenceWarning, FitError, IllConditionedWarning, InputError
from genval.linalg import sum_to_one_basis
from genval.newton import NewtonOptions, Solution, minimize_convex
from genval.row_scaling import prepare_density_matrix

__all__ = ["WeightFit", "fit_weights", "prepare_density_matrix"]

#: Condition number of the reduced Hessian above which members are reported as near-duplicates.
ILL_CONDITIONED = 1e8
#: Hessian eigenvalues below this fraction of the largest are at the level of float64 rounding
#: of the Hessian itself: those weight directions are not identifiable from the data.
RCOND = 1e-12


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
        n_unidentified: weight directions dropped as singular to working precision
            (near-duplicate members); :attr:`cov_reduced` is zero along them.
        messages: every warning issued by the fit, kept with the result.
        n_effective: with event weights, the effective number of events ``(Σs)² / Σs²`` (the
            size of an unweighted sample as informative for a mean); None when unweighted.
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
    n_effective: float | None = None

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

        Evaluated in the reduced coordinates, ``σ² = ‖(F B) L‖²`` with ``C_r = L Lᵀ``, so it is
        non-negative by construction.
        """
        projected = self._check_members(np.asarray(F)) @ self.basis
        return np.sqrt(np.einsum("ij,ij->i", projected @ self.cov_reduced, projected))

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

        return {f.name: (list(self.messages) if f.name == "messages" else getattr(self, f.name))
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
                   "converged": bool, "n_iter": int, "n_events": int, "n_unidentified": int,
                   "messages": lambda v: tuple(str(m) for m in v),
                   "n_effective": lambda v: None if v is None else float(v)}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = convert.get(f.name, float)(data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"WeightFit.from_dict: missing field {f.name!r}")
        return cls(**values)


def _truncated_inverse(matrix: NDArray[np.float64], rcond: float = RCOND
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Pseudo-inverse of a symmetric PSD matrix, dropping eigenvalues below ``rcond · max``.

    Returns ``(inverse, eigenvalues, n_dropped)``. Near-duplicate members make the Hessian
    singular to working precision; their weight differences do not change the likelihood, so
    they carry no covariance.
    """
    values, vectors = np.linalg.eigh(matrix)
    keep = values > rcond * values[-1]
    kept = vectors[:, keep]
    return (kept / values[keep]) @ kept.T, values, int((~keep).sum())


@dataclass(frozen=True)
class _Terms:
    """The sums of Eq. (2) at ŵ, per unit (normalised) event weight.

    ``mean_a = mean(s̃ A)``, ``V = mean(s̃ A Aᵀ)`` (the Hessian of L) and ``W = mean(s̃² A Aᵀ)``
    (the second moment of the scores; ``W is V`` for unweighted events).
    """

    mean_a: NDArray[np.float64]
    V: NDArray[np.float64]
    W: NDArray[np.float64]


def _hessian_terms(S: NDArray[np.float64], f: NDArray[np.float64],
                   s: NDArray[np.float64] | None = None) -> _Terms:
    """Mean of ``s̃_n A_n`` (``A_n = S_n / f_n``), ``V`` and ``W`` in one pass over the events.

    ``s`` are the event weights normalised to mean one (None: unweighted, ``W = V``).
    """
    inv_f = 1.0 / f
    n = S.shape[0]
    if s is None:
        A = S * inv_f[:, None]
        # A.T is Fortran-ordered: BLAS takes it without a copy.
        V = (A.T @ A) / n
        return _Terms((inv_f @ S) / n, V, V)
    A = S * inv_f[:, None]
    sA = A * s[:, None]
    # V = Σ s̃ A Aᵀ / N = (s̃ A)ᵀ A / N; W = Σ s̃² A Aᵀ / N = (s̃ A)ᵀ (s̃ A) / N.
    V = sA.T @ A / n
    return _Terms(((s * inv_f) @ S) / n, 0.5 * (V + V.T), (sA.T @ sA) / n)


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
                   s: NDArray[np.float64] | None = None) -> Solution:
    """Minimise ``N·L(w) = −Σ s̃ log(S w) + N 1ᵀw`` (Eq. 1 times N) by exact damped Newton.

    ``s`` are the event weights normalised to mean one (``Σ s̃ = N``; None: all one). The
    per-event ``tol`` becomes ``N·tol`` on the summed objective. The Hessian is float64 and
    fresh every step; directions singular to working precision (eigenvalues below ``RCOND``
    times the largest) are held at the start (with negative event weights, also directions of
    negative curvature: the step is Newton's on the positive part of the Hessian, a descent
    direction); once the decrement is below ``tol`` one more full step brings ``Σŵ = 1`` to
    rounding.
    """
    n_events, n_members = S.shape
    return minimize_convex(np.zeros(n_events), S, np.full(n_members, float(n_events)),
                           np.zeros(n_members), w, row_weights=s,
                           options=NewtonOptions(tol=tol * n_events, max_iter=max_iter,
                                                 hessian_dtype=np.float64, refresh=0.0,
                                                 rcond=RCOND, final_step=True))


@dataclass(frozen=True)
class _Sandwich:
    """Cov(ŵ) of Eq. (2) with the conditioning of the reduced Hessian it was built from."""

    cov: NDArray[np.float64]
    cov_reduced: NDArray[np.float64]
    condition: float
    n_unidentified: int
    warning: str | None


def _sandwich_covariance(terms: _Terms, n_events: int, hint: str = "") -> _Sandwich:
    """``Cov = B V_r⁻¹ U_r V_r⁻¹ Bᵀ / N`` in the coordinates of ``Σ w = 1``, Eq. (2).

    The scores are ``g_n = s̃_n (1 − A_n)``, ``Bᵀ g_n = −s̃_n Bᵀ A_n`` (``Bᵀ 1 = 0``), and
    ``U = Cov_n(g_n) = W − ā āᵀ`` in those coordinates; unweighted, ``W = V``.

    Raises:
        FitError: the reduced Hessian has a negative eigenvalue beyond rounding (negative
            event weights: ŵ is a saddle of the weighted likelihood, not a minimum).
    """
    n_members = terms.V.shape[0]
    basis = sum_to_one_basis(n_members)
    V_r = basis.T @ terms.V @ basis
    projected_mean = basis.T @ terms.mean_a
    W_r = V_r if terms.W is terms.V else basis.T @ terms.W @ basis
    U_r = W_r - np.outer(projected_mean, projected_mean)
    V_r_inv, eig_v, n_unidentified = _truncated_inverse(V_r)
    if eig_v[0] < -RCOND * abs(eig_v[-1]):
        raise FitError(
            f"the weighted likelihood of Eq. (1) is not convex at the fitted weights (smallest "
            f"Hessian eigenvalue {eig_v[0]:.3g}, largest {eig_v[-1]:.3g}), so ŵ is not a "
            f"minimum{hint}. With negative event weights L need not be convex, and it is "
            "unbounded below where the mixture vanishes at a negative-weight event; use more "
            "weight-fit events or fewer (or smaller) negative weights")
    condition = float(eig_v[-1] / eig_v[0]) if eig_v[0] > 0 else float("inf")
    cov_reduced = V_r_inv @ U_r @ V_r_inv / n_events
    cov_reduced = 0.5 * (cov_reduced + cov_reduced.T)
    cov = basis @ cov_reduced @ basis.T
    return _Sandwich(cov, cov_reduced, condition, n_unidentified,
                     _conditioning_message(V_r, basis, condition, n_unidentified))


def _conditioning_message(V_r: NDArray[np.float64], basis: NDArray[np.float64],
                          condition: float, n_unidentified: int) -> str | None:
    """The IllConditionedWarning text for near-duplicate members, or None."""
    if n_unidentified:
        return (f"the Hessian of the weight fit is singular to working precision (condition "
                f"number {condition:.3g}) along {n_unidentified} direction(s): members "
                f"{_near_duplicates(V_r, basis)} are (near-)duplicates. Weight differences along "
                "those directions do not change the likelihood, are held at the starting point, "
                "and carry no covariance; consider removing duplicated members")
    if condition > ILL_CONDITIONED:
        return (f"ill-conditioned weight fit (condition number of the Hessian {condition:.3g}): "
                f"members {_near_duplicates(V_r, basis)} are nearly linearly dependent, so their "
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


def _effective_rank(V: NDArray[np.float64]) -> float:
    """exp of the spectral entropy of the singular values of the rescaled F (Hessian factor)."""
    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(V), 0.0, None))
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def fit_weights(F: ArrayLike, *, log: bool = False, max_iter: int = 100, tol: float = 1e-14,
                w0: ArrayLike | None = None, event_weights: ArrayLike | None = None
                ) -> WeightFit:
    """Fit the w_i f_i weights by damped Newton and compute their sandwich covariance.

    Minimises paper Eq. (1) with λ = 1 in float64 with the exact solver of
    :func:`genval.newton.minimize_convex`. Each Newton step solves ``V Δ = −∇L``; a
    backtracking (Armijo) line search starts from the largest step that keeps every
    ``F_n · w > 0`` (times 0.99), so no clamping and no restarts are needed.

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

    Returns:
        :class:`WeightFit` with ŵ, Cov(ŵ) and diagnostics.

    Raises:
        InputError: malformed F (see :func:`prepare_density_matrix`) or ``event_weights``
            (wrong length, NaN/inf, ``Σ s ≤ 0``), fewer than 2 members, fewer events than
            members, or ``max_iter < 1``.
        FitError: infeasible ``w0``; with negative event weights, a fit that ends at a saddle
            of the (then non-convex) likelihood.

    Warns:
        IllConditionedWarning: near-duplicate members (condition number of ``V_r`` above 1e8);
            the members involved are named. Directions singular to working precision
            (eigenvalues below ``RCOND`` times the largest) are not identifiable: Newton steps
            and the covariance are restricted to the identifiable subspace.
        ConvergenceWarning: the iteration cap was reached.

    References:
        Badaracco et al., Eqs. (1) and (2).
    """
    if max_iter < 1:
        raise InputError(f"max_iter must be at least 1, got {max_iter}")
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
    solution = _solve_weights(S, _starting_weights(S, w0), tol, max_iter, s)
    w, f = solution.theta, solution.density
    # Newton iterations attempted: a failed line search counts its iteration.
    n_iter = solution.n_iter + int(solution.line_search_failed)
    decrement = 2.0 * solution.decrement / n_events  # gᵀ V⁻¹ g of the per-event L
    messages: list[str] = []
    if solution.line_search_failed:
        messages.append(f"line search failed at iteration {n_iter} (decrement {decrement:.3g})")

    terms = _hessian_terms(S, f, s)
    grad_norm = float(np.max(np.abs(1.0 - terms.mean_a)))
    if not solution.converged:
        msg = (f"weight fit did not converge in {n_iter} Newton iterations: "
               f"|grad|={grad_norm:.3g}, last decrement {decrement:.3g}")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    sandwich = _sandwich_covariance(terms, n_events, _curvature_hint(S, f, s, rows))
    if sandwich.warning is not None:
        messages.append(sandwich.warning)
        warnings.warn(sandwich.warning, IllConditionedWarning, stacklevel=2)
    return WeightFit(weights=w, cov=sandwich.cov, cov_reduced=sandwich.cov_reduced,
                     converged=solution.converged, n_iter=n_iter,
                     nll=_objective(f, w, s) - float(log_scale.mean() if s is None
                                                     else (s @ log_scale) / n_events),
                     grad_norm=grad_norm, hessian_condition=sandwich.condition,
                     effective_rank=_effective_rank(terms.V), n_events=n_events,
                     n_unidentified=sandwich.n_unidentified, messages=tuple(messages),
                     n_effective=None if s is None else float(s.sum() ** 2 / (s @ s)))
