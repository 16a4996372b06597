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
from genval.subnormal import TINY32, exp_flushed, flush_subnormal

__all__ = ["WeightFit", "fit_weights", "prepare_density_matrix"]

#: Condition number of the reduced Hessian above which members are reported as near-duplicates.
ILL_CONDITIONED = 1e8
#: Hessian eigenvalues below this fraction of the largest are at the level of float64 rounding
#: of the Hessian itself: those weight directions are not identifiable from the data.
RCOND = 1e-12


def prepare_density_matrix(F: ArrayLike, *, log: bool = False, name: str = "F"
                           ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate a member density matrix and split it into row-scaled values and log-scales.

    Returns ``(S, c)`` with ``F[n, k] = exp(c[n]) · S[n, k]`` and ``max_k S[n, k] = 1``.
    Every quantity the fit needs (``F_n / f_n``, the Hessian, the covariance) is invariant to a
    per-row scale, so working with ``S`` avoids underflow far in the tails; only the value of
    the NLL needs ``c``.

    Args:
        F: (N, M) densities, or log-densities when ``log=True``.
        log: whether ``F`` holds log-densities (``-inf`` allowed, meaning density 0).
        name: what to call the matrix in error messages.

    Raises:
        InputError: wrong shape, NaN, +inf, negative densities, or a row where every member is 0.
    """
    arr = np.asarray(F, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2D array (N events, M members), got shape {arr.shape}")
    if log:
        row_max = arr.max(axis=1)  # NaN propagates into the row maximum
        suspicious = not np.all(np.isfinite(row_max))
    else:
        row_max_linear = arr.max(axis=1)
        suspicious = not (np.isfinite(row_max_linear).all() and arr.min() >= 0)
    if suspicious:  # one cheap pass above; the detailed diagnosis only on failure
        _diagnose(arr, log, name)
    if not log:
        with np.errstate(divide="ignore"):
            row_max = np.log(row_max_linear)
    dead = ~np.isfinite(row_max)
    if dead.any():
        rows = np.flatnonzero(dead)
        raise InputError(f"{rows.size} events have zero density under every member (first at "
                         f"event {rows[0]}): the mixture cannot describe them")
    # Entries below 1.2e-38 (float32's normal range) are set to 0: subnormal operands make
    # products 10-100x slower on Intel cores (genval.subnormal), and such an entry changes
    # f_n = S_n·w by < 1.2e-38 ‖w‖₁, 22 orders below the rounding of f_n (~1e-16 |w_k| at the
    # member with S_nk = 1); gradients and Hessians, sums of S/f and S Sᵀ/f², likewise.
    if log:
        scaled = arr - row_max[:, None]
        exp_flushed(scaled, out=scaled)
    else:
        scaled = flush_subnormal(arr / np.exp(row_max)[:, None], tiny=TINY32)
    return scaled, row_max


def _diagnose(arr: NDArray[np.float64], log: bool, name: str) -> None:
    """Raise :class:`InputError` describing the first kind of invalid entry in ``arr``."""
    nan = np.isnan(arr)
    if nan.any():
        raise InputError(f"{name} has {int(nan.sum())} NaN entries "
                         f"(first at event {np.argwhere(nan)[0][0]})")
    if np.isposinf(arr).any():
        raise InputError(f"{name} has {int(np.isposinf(arr).sum())} +inf entries")
    bad = np.isneginf(arr) | (arr < 0)
    if not log and bad.any():
        raise InputError(f"{name} has {int(bad.sum())} negative densities "
                         f"(first at event {np.argwhere(bad)[0][0]}): densities must be >= 0")


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


def _truncated_inverse(matrix: NDArray[np.float64], rcond: float = RCOND
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Pseudo-inverse of a symmetric PSD matrix, dropping eigenvalues below ``rcond · max``.

    Returns ``(inverse, eigenvalues, n_dropped)``. Near-duplicate members make the Hessian
    singular to working precision; their weight differences do not change the likelihood, so
    they are left where they start instead of being driven by rounding noise.
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


def fit_weights(F: ArrayLike, *, log: bool = False, max_iter: int = 100, tol: float = 1e-14,
                w0: ArrayLike | None = None) -> WeightFit:
    """Fit the w_i f_i weights by damped Newton and compute their sandwich covariance.

    Minimises paper Eq. (1) with λ = 1 in float64. Each Newton step solves ``V Δ = −∇L``; a
    backtracking (Armijo) line search starts from the largest step that keeps every
    ``F_n · w > 0`` (times 0.99), so no clamping and no restarts are needed.

    Args:
        F: (N, M) member densities ``f_k(x_n)`` on the weight-fit events (or log-densities
            with ``log=True``, which avoids underflow far in the tails).
        log: interpret ``F`` as log-densities.
        max_iter: Newton iteration cap; a fit that hits it warns and is marked not converged.
        tol: stop when half the squared Newton decrement ``gᵀ V⁻¹ g / 2`` (the predicted
            decrease of L) falls below ``tol``; one more full step is then taken.
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
    w = (np.full(n_members, 1.0 / n_members) if w0 is None
         else np.asarray(w0, dtype=np.float64).reshape(n_members).copy())
    f = S @ w
    if not np.all(f > 0):
        raise FitError(f"starting weights give a non-positive density on {int((f <= 0).sum())} "
                       "events")

    converged = False
    n_iter = 0
    messages: list[str] = []
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        mean_a, V = _hessian_terms(S, f)
        grad = 1.0 - mean_a
        step = _truncated_inverse(V)[0] @ -grad
        decrement = float(-grad @ step)
        slope = -decrement
        f_step = S @ step
        shrinking = f_step < 0
        alpha = 1.0
        if shrinking.any():
            alpha = min(1.0, 0.99 * float(np.min(f[shrinking] / -f_step[shrinking])))
        if decrement / 2 <= tol and alpha == 1.0:
            # Inside the quadratic region the predicted decrease is below the rounding of L,
            # so a line search would only see noise: take the full step and stop.
            w = w + step
            f = S @ w
            converged = True
            break
        current = _objective(f, w)
        while _objective(f + alpha * f_step, w + alpha * step) > current + 1e-4 * alpha * slope:
            alpha *= 0.5
            if alpha < 1e-12:
                messages.append(f"line search failed at iteration {n_iter} "
                                f"(decrement {decrement:.3g})")
                break
        w = w + alpha * step
        f = S @ w  # recomputed rather than updated, so rounding does not accumulate
        if alpha < 1e-12:
            break

    mean_a, V = _hessian_terms(S, f)
    grad = 1.0 - mean_a
    grad_norm = float(np.max(np.abs(grad)))
    if not converged:
        msg = (f"weight fit did not converge in {n_iter} Newton iterations: "
               f"|grad|={grad_norm:.3g}, last decrement {decrement:.3g}")
        messages.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)

    basis = sum_to_one_basis(n_members)
    V_r = basis.T @ V @ basis
    # U = Cov_n(g_n) with g_n = 1 − A_n, i.e. mean(A Aᵀ) − mean(A) mean(A)ᵀ = V − ā āᵀ.
    projected_mean = basis.T @ mean_a
    U_r = V_r - np.outer(projected_mean, projected_mean)
    V_r_inv, eig_v, n_unidentified = _truncated_inverse(V_r)
    condition = float(eig_v[-1] / eig_v[0]) if eig_v[0] > 0 else float("inf")
    if n_unidentified:
        msg = (f"the Hessian of the weight fit is singular to working precision (condition "
               f"number {condition:.3g}) along {n_unidentified} direction(s): members "
               f"{_near_duplicates(V_r, basis)} are (near-)duplicates. Weight differences along "
               "those directions do not change the likelihood, are held at the starting point, "
               "and carry no covariance; consider removing duplicated members")
    elif condition > ILL_CONDITIONED:
        msg = (f"ill-conditioned weight fit (condition number of the Hessian {condition:.3g}): "
               f"members {_near_duplicates(V_r, basis)} are nearly linearly dependent, so their "
               "weights are poorly determined and their errors large")
    if n_unidentified or condition > ILL_CONDITIONED:
        messages.append(msg)
        warnings.warn(msg, IllConditionedWarning, stacklevel=2)
    cov_reduced = V_r_inv @ U_r @ V_r_inv / n_events
    cov_reduced = 0.5 * (cov_reduced + cov_reduced.T)
    cov = basis @ cov_reduced @ basis.T

    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(V), 0.0, None))
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    effective_rank = float(np.exp(-(p * np.log(p)).sum()))

    nll = _objective(f, w) - float(log_scale.mean())
    return WeightFit(weights=w, cov=cov, cov_reduced=cov_reduced, converged=converged,
                     n_iter=n_iter, nll=nll, grad_norm=grad_norm, hessian_condition=condition,
                     effective_rank=effective_rank, n_events=n_events,
                     n_unidentified=n_unidentified, messages=tuple(messages))
