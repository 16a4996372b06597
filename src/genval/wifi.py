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

References:
    Badaracco et al., Eqs. (1)-(3); Benevedes and Thaler, arXiv:2506.00113.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

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
        n_events: N.
        n_unidentified: weight directions dropped as singular to working precision
            (near-duplicate members); :attr:`cov_reduced` is zero along them.
        messages: every warning issued by the fit, kept with the result.
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
        top = np.argsort(-np.abs(self.weights))[:3]
        top_txt = ", ".join(f"w[{k}]={self.weights[k]:+.4f}±{self.weight_std[k]:.4f}" for k in top)
        lines = [
            f"WeightFit(M={self.n_members}, N={self.n_events}, {status} in {self.n_iter} "
            f"Newton iterations, nll={self.nll:.10g}, |grad|={self.grad_norm:.2e},",
            f"          cond(V)={self.hessian_condition:.3g}, "
            f"effective rank={self.effective_rank:.2f}, sum(w)={self.weights.sum():.12f}, "
            f"sum|w|={self.abs_weight_sum:.4g},",
            f"          largest: {top_txt})",
        ]
        lines += [f"  warning: {m}" for m in self.messages]
        return "\n".join(lines)

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
                   "messages": lambda v: tuple(str(m) for m in v)}
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


def _hessian_terms(S: NDArray[np.float64], f: NDArray[np.float64]
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean of ``A_n = S_n / f_n`` and ``V = mean(A_n A_nᵀ)`` in one pass over the events."""
    inv_f = 1.0 / f
    A = S * inv_f[:, None]
    mean_a = (inv_f @ S) / S.shape[0]
    # A.T is Fortran-ordered: BLAS takes it without a copy.
    V = (A.T @ A) / S.shape[0]
    return mean_a, V


def _objective(f: NDArray[np.float64], w: NDArray[np.float64]) -> float:
    return float(-np.mean(np.log(f)) + w.sum())


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


def _solve_weights(S: NDArray[np.float64], w: NDArray[np.float64], tol: float, max_iter: int
                   ) -> Solution:
    """Minimise ``N·L(w) = −Σ log(S w) + N 1ᵀw`` (Eq. 1 times N) by exact damped Newton.

    The per-event ``tol`` becomes ``N·tol`` on the summed objective. The Hessian is float64 and
    fresh every step; directions singular to working precision (eigenvalues below ``RCOND``
    times the largest) are held at the start; once the decrement is below ``tol`` one more full
    step brings ``Σŵ = 1`` to rounding.
    """
    n_events, n_members = S.shape
    return minimize_convex(np.zeros(n_events), S, np.full(n_members, float(n_events)),
                           np.zeros(n_members), w,
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


def _sandwich_covariance(V: NDArray[np.float64], mean_a: NDArray[np.float64], n_events: int
                         ) -> _Sandwich:
    """``Cov = B V_r⁻¹ U_r V_r⁻¹ Bᵀ / N`` in the coordinates of ``Σ w = 1``, Eq. (2)."""
    n_members = V.shape[0]
    basis = sum_to_one_basis(n_members)
    V_r = basis.T @ V @ basis
    # U = Cov_n(g_n) with g_n = 1 − A_n, i.e. mean(A Aᵀ) − mean(A) mean(A)ᵀ = V − ā āᵀ.
    projected_mean = basis.T @ mean_a
    U_r = V_r - np.outer(projected_mean, projected_mean)
    V_r_inv, eig_v, n_unidentified = _truncated_inverse(V_r)
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


def _effective_rank(V: NDArray[np.float64]) -> float:
    """exp of the spectral entropy of the singular values of the rescaled F (Hessian factor)."""
    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(V), 0.0, None))
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def fit_weights(F: ArrayLike, *, log: bool = False, max_iter: int = 100, tol: float = 1e-14,
                w0: ArrayLike | None = None) -> WeightFit:
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

    Returns:
        :class:`WeightFit` with ŵ, Cov(ŵ) and diagnostics.

    Raises:
        InputError: malformed F (see :func:`prepare_density_matrix`), fewer than 2 members,
            fewer events than members, or ``max_iter < 1``.
        FitError: infeasible ``w0``.

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
    n_events, n_members = S.shape
    if n_members < 2:
        raise InputError(f"need at least 2 members for a w_i f_i ensemble, got {n_members}")
    if n_events <= n_members:
        raise InputError(f"need more events than members to fit the weights: N={n_events}, "
                         f"M={n_members}")
    solution = _solve_weights(S, _starting_weights(S, w0), tol, max_iter)
    w, f = solution.theta, solution.density
    # Newton iterations attempted: a failed line search counts its iteration.
    n_iter = solution.n_iter + int(solution.line_search_failed)
    decrement = 2.0 * solution.decrement / n_events  # gᵀ V⁻¹ g of the per-event L
    messages: list[str] = []
    if solution.line_search_failed:
        messages.append(f"line search failed at iteration {n_iter} (decrement {decrement:.3g})")

    mean_a, V = _hessian_terms(S, f)
    grad_norm = float(np.max(np.abs(1.0 - mean_a)))
    if not solution.converged:
        msg = (f"weight fit did not converge in {n_iter} Newton iterations: "
               f"|grad|={grad_norm:.3g}, last decrement {decrement:.3g}")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    sandwich = _sandwich_covariance(V, mean_a, n_events)
    if sandwich.warning is not None:
        messages.append(sandwich.warning)
        warnings.warn(sandwich.warning, IllConditionedWarning, stacklevel=2)
    return WeightFit(weights=w, cov=sandwich.cov, cov_reduced=sandwich.cov_reduced,
                     converged=solution.converged, n_iter=n_iter,
                     nll=_objective(f, w) - float(log_scale.mean()), grad_norm=grad_norm,
                     hessian_condition=sandwich.condition, effective_rank=_effective_rank(V),
                     n_events=n_events, n_unidentified=sandwich.n_unidentified,
                     messages=tuple(messages))
