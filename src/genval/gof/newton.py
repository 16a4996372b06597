"""Exact damped-Newton solver for the convex profile objectives of Eq. (5).

Both profiles of the test statistic have the form

    NLL(θ) = −Σ_n log(c_n + A_n·θ) + bᵀθ + ½ Σ_j q_j θ_j²,      c + Aθ > 0,

with a positive diagonal ``q`` (the whitened Gaussian constraint and the ℓ2 penalty on the
kernel coefficients), so NLL is strictly convex on its (convex) domain. The solver is damped
Newton in float64 with a backtracking line search that never leaves the domain. The data-term
Hessian ``Aᵀ diag(1/f²) A`` costs N p² and dominates; it is formed once (in float32 when
asked, solved in float64) and reused while it still gives fast convergence (a chord / lagged
Newton method), and refreshed when progress slows. The minimiser does not depend on the
Hessian used: convergence is declared on the Newton decrement ``gᵀ H⁻¹ g / 2`` computed from the
exact float64 gradient, which bounds the distance of NLL to its minimum.

References:
    Boyd & Vandenberghe, Convex Optimization, Sec. 9.5 (Newton decrement, feasible line search).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from genval.errors import FitError
from genval.subnormal import count_subnormal, flush_subnormal

__all__ = ["Solution", "minimize_convex"]

_ARMIJO = 1e-4
_SLOW = 0.25  # refresh the Hessian when the decrement shrinks by less than this factor


@dataclass(frozen=True)
class Solution:
    """Result of :func:`minimize_convex`.

    Attributes:
        theta: minimiser (p,).
        density: ``c + Aθ`` at the minimiser (N,).
        penalty: ``bᵀθ + ½ Σ q θ²`` at the minimiser.
        converged: whether the Newton decrement fell below ``tol``.
        n_iter: Newton iterations taken.
        n_hessian: Hessian evaluations (each costs N p²).
        decrement: ``gᵀ H⁻¹ g / 2`` at exit (an estimate of NLL − min NLL).
        grad_norm: max-norm of the gradient at exit.
    """

    theta: NDArray[np.float64]
    density: NDArray[np.float64]
    penalty: float
    converged: bool
    n_iter: int
    n_hessian: int
    decrement: float
    grad_norm: float


def _factor(h: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
    try:
        return scipy.linalg.cho_factor(h, lower=True, check_finite=False)[0], True
    except np.linalg.LinAlgError:
        return h, False


def _solve(h: NDArray[np.float64], chol: tuple[NDArray[np.float64], bool],
           g: NDArray[np.float64]) -> NDArray[np.float64]:
    factor, ok = chol
    if ok:
        return scipy.linalg.cho_solve((factor, True), g, check_finite=False)
    # Rounding made the (positive definite) Hessian indefinite: solve on its positive part.
    vals, vecs = np.linalg.eigh(h)
    vals = np.maximum(vals, 1e-12 * max(vals.max(), 1e-300))
    return vecs @ ((vecs.T @ g) / vals)


def _gram_floor(dtype: type) -> float:
    """Entries of a Gram operand below this are zeroed: every pairwise product stays normal."""
    return float(np.sqrt(np.finfo(dtype).tiny))


def _hessian(a: NDArray[np.floating], r: NDArray[np.float64], q: NDArray[np.float64],
             dtype: type, stride: int = 1, a_cast: NDArray[np.floating] | None = None
             ) -> NDArray[np.float64]:
    """``Aᵀ diag(r²) A + diag(q)``, optionally from every ``stride``-th row only.

    A row-subsampled Hessian (scaled up) is a cheap preconditioner for the damped phase; its
    diagonal is raised to the exact one (computed in O(N p)), which keeps it positive definite
    and restores directions carried by a few events (tail kernels) that the subsample missed.
    ``a_cast`` is ``a`` already converted to ``dtype`` with its subnormals flushed (converted
    once per fit, not per call).
    """
    source = a_cast if a_cast is not None and a_cast.dtype == dtype else a
    sub = source[::stride] if stride > 1 else source
    rs = (r[::stride] if stride > 1 else r).astype(dtype, copy=False)
    ar = (sub if sub.dtype == dtype else sub.astype(dtype)) * rs[:, None]
    # No subnormal may reach the GEMM, as operand or as product: Intel cores run it 10-100x
    # slower (genval.subnormal). Entries |A r| < floor = sqrt(tiny) (1.1e-19 in float32) are
    # zeroed, so every product of two entries is 0 or normal. By Cauchy-Schwarz this moves H_jk
    # by < floor·sqrt(N H_kk) <= floor·sqrt(N/q_j)·sqrt(H_jj H_kk), i.e. < 1e-16 of
    # sqrt(H_jj H_kk) since q >= 2λN (λ = 1e-6): far below float32 rounding (6e-8). And this
    # Hessian only preconditions: the minimiser comes from the exact float64 gradient.
    # Entries of the flushed cast are 0 or >= floor, so times r >= 1 they stay so: only rows
    # with r < 1 (barrier rows, f > 1) need a pass; other sources are flushed whole, an O(N p)
    # pass before the O(N p²) product.
    floor = _gram_floor(dtype)
    if source is a_cast:
        low_r = rs < 1
        if low_r.any():
            ar[low_r] = flush_subnormal(ar[low_r], tiny=floor)
    else:
        flush_subnormal(ar, tiny=floor)
    h = (ar.T @ ar).astype(np.float64)  # numpy dispatches X.T @ X to a symmetric rank-k update
    if stride > 1:
        h *= a.shape[0] / sub.shape[0]
        # float32 squares of entries below 1.1e-19 are subnormal: flushed (same bound as
        # above). In float64 the GoF's entries are 0 or >= ~1e-60 (row-scaled densities are
        # flushed below 1.2e-38 at the source, genval.gof.profile), so squares stay normal.
        exact = (r * r) @ (a * a) if a.dtype == np.float64 else \
            (flush_subnormal((r * r).astype(np.float32))
             @ flush_subnormal(a * a)).astype(np.float64)
        diag = np.diag(h)
        h[np.diag_indices_from(h)] = np.maximum(diag, exact)
    h[np.diag_indices_from(h)] += q
    return h


def minimize_convex(c: NDArray[np.float64], a: NDArray[np.floating], b: NDArray[np.float64],
                    q: NDArray[np.float64], theta0: NDArray[np.float64] | None = None, *,
                    tol: float = 1e-10, max_iter: int = 100,
                    hessian_dtype: type = np.float32, refresh: float = 0.25,
                    subsample_rows: int = 0,
                    row_weights: NDArray[np.float64] | None = None) -> Solution:
    """Minimise ``−Σ_n w_n log(c + Aθ)_n + bᵀθ + ½ Σ q θ²`` exactly (w_n = 1 by default).

    Args:
        c: (N,) offsets, the density at θ = 0 (float64).
        a: (N, p) design matrix (may be a column slice of a larger array), float64 (float32
            works but cannot reach tight tolerances: not used for the statistic).
        b: (p,) linear coefficients.
        q: (p,) positive diagonal of the quadratic term.
        theta0: feasible start (default 0).
        tol: stop when the Newton decrement ``gᵀH⁻¹g/2`` is below ``tol`` (absolute, in NLL
            units).
        max_iter: iteration cap; on reaching it ``converged`` is False.
        hessian_dtype: accumulation type of the data Hessian (float32 halves its cost; the
            solve and every gradient stay float64, so the minimiser is unaffected).
        refresh: re-form the Hessian when the decrement shrank by less than this factor
            since the last step (0: plain Newton, a fresh Hessian every step).
        subsample_rows: when > 0 and N is larger, form the Hessian from about this many rows
            while the decrement exceeds 1 (damped phase); full Hessians afterwards.
        row_weights: optional positive (N,) weights of the log terms (small weights turn rows
            into a log-barrier that keeps the density positive there).

    Returns:
        :class:`Solution`.

    Raises:
        FitError: if the start is infeasible (``c + Aθ0 ≤ 0`` somewhere).
    """
    n, p = a.shape
    theta = np.zeros(p) if theta0 is None else np.array(theta0, dtype=np.float64)
    low = a.dtype == np.float32
    if low and count_subnormal(a):
        # float32 products with subnormal operands are 10-100x slower on Intel cores; entries
        # below 1.2e-38 change c + Aθ by < 1.2e-38 |θ|₁, far below float32 rounding of it.
        a = flush_subnormal(a, out=np.empty_like(a))  # the caller's array is left alone

    def cast32(v: NDArray[np.float64]) -> NDArray[np.float32]:
        return flush_subnormal(v.astype(np.float32))  # O(N) or O(p): same bound as above

    def prod(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return (a @ cast32(v)).astype(np.float64) if low else a @ v

    def rprod(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return (cast32(v) @ a).astype(np.float64) if low else v @ a

    f = c + prod(theta) if p else c.copy()
    bad = ~(f > 0)
    if bad.any():
        raise FitError(f"infeasible start: density <= 0 at {int(bad.sum())} of {n} events "
                       f"(first at row {int(np.flatnonzero(bad)[0])})")

    def penalty(th: NDArray[np.float64]) -> float:
        return float(b @ th + 0.5 * (q * th) @ th)

    if p == 0:
        return Solution(theta, f, 0.0, True, 0, 0, 0.0, 0.0)
    sqrt_w = None if row_weights is None else np.sqrt(row_weights)
    dtype = hessian_dtype
    stride = max(1, n // subsample_rows) if subsample_rows > 0 else 1
    h = chol = None
    casts: dict[type, NDArray[np.floating]] = {}
    prev_dec = np.inf
    n_hess = n_full = 0
    converged = False
    dec = grad_norm = np.inf
    it = 0
    for it in range(max_iter + 1):  # noqa: B007 -- `it` is reported
        r = 1.0 / f
        g = -rprod(r if row_weights is None else row_weights * r) + b + q * theta
        grad_norm = float(np.abs(g).max())
        step = None
        if h is not None:
            step = -_solve(h, chol, g)
            dec = float(-g @ step)
        if h is None or not np.isfinite(dec) or dec < 0 or dec > refresh * prev_dec:
            use_stride = stride if (stride > 1 and prev_dec > 1.0 and dec > 1.0) else 1
            if use_stride == 1:
                n_full += 1
                if dtype != np.float64 and n_full > 6:
                    dtype = np.float64  # float32 Hessian no longer good enough: go exact
            if dtype != a.dtype and dtype not in casts:
                # reused by every later Hessian; flushed once here, see _hessian
                casts[dtype] = flush_subnormal(a.astype(dtype), tiny=_gram_floor(dtype))
            h = _hessian(a, r if sqrt_w is None else sqrt_w * r, q, dtype, use_stride,
                         casts.get(dtype))
            chol = _factor(h)
            n_hess += 1
            step = -_solve(h, chol, g)
            dec = float(-g @ step)
        if 0.5 * dec <= tol:
            converged = True
            break
        if it == max_iter:
            break
        prev_dec = dec
        a_step = prod(step)
        # Largest step keeping every density positive, then Armijo backtracking.
        shrink = a_step < 0
        alpha = 1.0
        if shrink.any():
            alpha = min(1.0, 0.99 * float(np.min(-f[shrink] / a_step[shrink])))
        slope = -dec
        lin = b @ step
        while True:
            # NLL(θ + α d) − NLL(θ), accumulated as differences so that it stays accurate
            # when both values are ~N and the change is ~1e-12.
            logs = np.log1p(alpha * a_step * r)
            delta = (-(logs.sum() if row_weights is None else row_weights @ logs) + alpha * lin
                     + float(q @ (alpha * theta * step + 0.5 * alpha**2 * step * step)))
            if delta <= _ARMIJO * alpha * slope:
                break
            alpha *= 0.5
            if alpha < 1e-14:
                break
        if alpha < 1e-14:
            break  # no descent possible at float64 precision: report as not converged
        theta = theta + alpha * step
        f = f + alpha * a_step
    f = c + prod(theta)  # without the rounding accumulated over the steps
    return Solution(theta, f, penalty(theta), converged, it, n_hess, 0.5 * dec, grad_norm)
