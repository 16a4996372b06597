"""Exact damped-Newton solver for the convex objectives of paper Eqs. (1) and (5).

The weight fit of Eq. (1) and both profiles of the test statistic of Eq. (5) have the form

    NLL(θ) = −Σ_n ω_n log(c_n + A_n·θ) + bᵀθ + ½ Σ_j q_j θ_j²,      c + Aθ > 0,

with row weights ω (1 by default; signed for weighted events) and a non-negative diagonal ``q``:

* Eq. (1) (:func:`genval.wifi.fit_weights`): ``c = 0``, ``A`` the row-scaled member densities,
  ``b = N·1``, ``q = 0``: the extended negative log-likelihood times N.
* Eq. (5) (:mod:`genval.gof.statistic`): ``q > 0`` carries the whitened Gaussian constraint and
  the ℓ2 penalty on the kernel coefficients.

NLL is convex on its (convex) domain when ω ≥ 0. Negative row weights (Monte-Carlo event
weights in Eq. 1) can make it non-convex: the Hessian ``Aᵀ diag(ω/f²) A`` is then formed as the
difference of the positive and negative rows' parts, and a factorisation with ``rcond`` steps on
its positive part only (a descent direction); the caller checks the curvature at the end. The
solver is damped Newton in float64 with a
backtracking (Armijo) line search that never leaves the domain. The data-term Hessian
``Aᵀ diag(ω/f²) A`` costs N p² and dominates; it is formed (in float32 when asked, solved in
float64) and reused while it still gives fast convergence (a chord / lagged Newton method), and
refreshed when progress slows. The minimiser does not depend on the Hessian used: convergence is
declared on the Newton decrement ``gᵀ H⁻¹ g / 2`` computed from the exact float64 gradient, which
bounds the distance of NLL to its minimum.

References:
    Badaracco et al., Eqs. (1) and (5); Boyd & Vandenberghe, Convex Optimization, Sec. 9.5
    (Newton decrement, feasible line search).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from genval.errors import FitError
from genval.subnormal import count_subnormal, flush_subnormal

__all__ = ["NewtonOptions", "Solution", "minimize_convex"]

_ARMIJO = 1e-4
_MIN_STEP = 1e-14  # line-search steps below this fraction of Newton's make no float64 progress


@dataclass(frozen=True)
class Solution:
    """Result of :func:`minimize_convex`.

    Attributes:
        theta: minimiser (p,).
        density: ``c + Aθ`` at the minimiser (N,).
        penalty: ``bᵀθ + ½ Σ q θ²`` at the minimiser.
        converged: whether the Newton decrement fell below ``tol``.
        n_iter: Newton steps taken (including the final full step of ``final_step=True``).
        n_hessian: Hessian evaluations (each costs N p²).
        decrement: ``gᵀ H⁻¹ g / 2`` at exit (an estimate of NLL − min NLL).
        grad_norm: max-norm of the gradient at exit.
        line_search_failed: the Armijo search found no descent at float64 precision (the
            iteration stopped there, not converged).
    """

    theta: NDArray[np.float64]
    density: NDArray[np.float64]
    penalty: float
    converged: bool
    n_iter: int
    n_hessian: int
    decrement: float
    grad_norm: float
    line_search_failed: bool = field(default=False)


@dataclass(frozen=True)
class _Objective:
    """The data of one NLL: ``−Σ ω log(c + Aθ) + bᵀθ + ½ Σ q θ²``."""

    c: NDArray[np.float64]
    a: NDArray[np.floating]
    b: NDArray[np.float64]
    q: NDArray[np.float64]
    row_weights: NDArray[np.float64] | None

    @property
    def low(self) -> bool:
        return self.a.dtype == np.float32

    def prod(self, v: NDArray[np.float64]) -> NDArray[np.float64]:
        """``A v`` in float64."""
        return (self.a @ _cast32(v)).astype(np.float64) if self.low else self.a @ v

    def rprod(self, v: NDArray[np.float64]) -> NDArray[np.float64]:
        """``vᵀ A`` in float64."""
        return (_cast32(v) @ self.a).astype(np.float64) if self.low else v @ self.a

    def gradient(self, theta: NDArray[np.float64], r: NDArray[np.float64]
                 ) -> NDArray[np.float64]:
        """``∇NLL`` at θ, given ``r = 1 / (c + Aθ)``."""
        wr = r if self.row_weights is None else self.row_weights * r
        return -self.rprod(wr) + self.b + self.q * theta

    def penalty(self, theta: NDArray[np.float64]) -> float:
        return float(self.b @ theta + 0.5 * (self.q * theta) @ theta)


def _cast32(v: NDArray[np.float64]) -> NDArray[np.float32]:
    """``v`` in float32 without subnormals: an O(N) or O(p) pass; entries below 1.2e-38 change
    ``c + Aθ`` by < 1.2e-38 |θ|₁, far below its float32 rounding."""
    return flush_subnormal(v.astype(np.float32))


def _gram_floor(dtype: type) -> float:
    """Entries of a Gram operand below this are zeroed: every pairwise product stays normal."""
    return float(np.sqrt(np.finfo(dtype).tiny))


#: A float32 Gram whose entries could exceed this is formed in float64 instead (float32's
#: largest number is 3.4e38).
_FLOAT32_GRAM_MAX = 1e37


def _row_sample(contrib: NDArray[np.float64], stride: int
                ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rows of a subsampled Hessian and their weights: every row whose share of the trace
    ``contrib`` exceeds ``stride`` times the mean (at most N / stride of them) exactly, and
    every ``stride``-th of the others, scaled up to stand for them all.

    A plain stride would drop rows that alone carry much of the Hessian: events or
    positivity check points near the boundary ``f → 0``, where ``r² = 1/f²`` is huge. Without
    them the Newton direction ignores the boundary, the feasible step dives towards it by 100x
    per iteration, and the fit ends up at densities of 1e-27 (below float64 resolution of
    ``c + Aθ``), then crawls back by a factor 2 per step (seen on 11 200 Pythia multijet events).
    """
    heavy = contrib > stride * contrib.mean()
    exact = np.flatnonzero(heavy)
    light = np.flatnonzero(~heavy)
    picked = light[::stride]
    rows = np.concatenate([exact, picked])
    weights = np.ones(rows.size)
    weights[exact.size:] = light.size / max(picked.size, 1)
    return rows, weights


def _hessian(a: NDArray[np.floating], r: NDArray[np.float64], q: NDArray[np.float64],
             dtype: type, stride: int = 1, a_cast: NDArray[np.floating] | None = None,
             row_norm2: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """``Aᵀ diag(r²) A + diag(q)``, optionally from a row subsample (``stride`` > 1).

    A row-subsampled Hessian (scaled up) is a cheap preconditioner for the damped phase: the
    rows that carry much of it are kept exactly and every ``stride``-th of the others
    (:func:`_row_sample`); its diagonal is raised to the exact one (computed in O(N p)), which
    keeps it positive definite and restores directions carried by a few events (tail kernels)
    that the subsample missed. ``a_cast`` is ``a`` already converted to ``dtype`` with its
    subnormals flushed (converted once per fit, not per call); ``row_norm2`` is ``‖A_n‖²``
    per row (once per fit). A float32 Gram that could overflow (entries beyond
    ``_FLOAT32_GRAM_MAX``: kernels far outside the members' support have row-scaled
    densities of 1e30 at their centres) is formed in float64.
    """
    norm2 = (a.astype(np.float64) ** 2).sum(axis=1) if row_norm2 is None else row_norm2
    contrib = r * r * norm2  # each row's share of the trace; every Gram entry is <= their sum
    rows, weights = (_row_sample(contrib, stride) if stride > 1
                     else (None, None))
    bound = float(contrib.sum()) * (float(weights.max()) if weights is not None else 1.0)
    if dtype != np.float64 and not bound < _FLOAT32_GRAM_MAX:
        dtype, a_cast = np.float64, None
    source = a_cast if a_cast is not None and a_cast.dtype == dtype else a
    if rows is not None and weights is not None:
        sub = source[rows]
        rs = (r[rows] * np.sqrt(weights)).astype(dtype)
    else:
        sub = source
        rs = r.astype(dtype, copy=False)
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
        # float32 squares of entries below 1.1e-19 are subnormal: flushed (same bound as
        # above). In float64 the GoF's entries are 0 or >= ~1e-60 (row-scaled densities are
        # flushed below 1.2e-38 at the source, genval.row_scaling), so squares stay normal.
        exact = (r * r) @ (a * a) if a.dtype == np.float64 else \
            (flush_subnormal((r * r).astype(np.float32))
             @ flush_subnormal(a * a)).astype(np.float64)
        diag = np.diag(h)
        h[np.diag_indices_from(h)] = np.maximum(diag, exact)
    h[np.diag_indices_from(h)] += q
    return h


class _Factor:
    """A factorised Hessian: Cholesky, or a truncated eigendecomposition.

    With ``rcond`` set, eigenvalues below ``rcond`` times the largest are dropped: directions
    singular to working precision (near-duplicate members in Eq. 1) do not change the objective,
    so Newton leaves them where they start instead of driving them by rounding noise.
    """

    def __init__(self, h: NDArray[np.float64], rcond: float | None) -> None:
        self.h = h
        self.eigen: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        self.cholesky: NDArray[np.float64] | None = None
        if rcond is not None:
            values, vectors = np.linalg.eigh(h)
            keep = values > rcond * values[-1]
            self.eigen = (vectors[:, keep], values[keep])
            return
        try:
            self.cholesky = scipy.linalg.cho_factor(h, lower=True, check_finite=False)[0]
        except np.linalg.LinAlgError:
            self.cholesky = None

    def solve(self, g: NDArray[np.float64]) -> NDArray[np.float64]:
        """``H⁻¹ g`` (the pseudo-inverse on the kept eigen-directions when truncated)."""
        if self.eigen is not None:
            vectors, values = self.eigen
            return vectors @ ((vectors.T @ g) / values)
        if self.cholesky is not None:
            return scipy.linalg.cho_solve((self.cholesky, True), g, check_finite=False)
        # Rounding made the (positive definite) Hessian indefinite: solve on its positive part.
        vals, vecs = np.linalg.eigh(self.h)
        vals = np.maximum(vals, 1e-12 * max(vals.max(), 1e-300))
        return vecs @ ((vecs.T @ g) / vals)


class _LaggedNewton:
    """Newton directions from a Hessian reused while the decrement still falls fast.

    Holds the last factorised Hessian, the accumulation dtype (float32 switches to float64
    after six full Hessians: a float32 Hessian that slow is no longer good enough) and the
    casts of ``A`` made once per fit.
    """

    def __init__(self, objective: _Objective, *, hessian_dtype: type, refresh: float,
                 subsample_rows: int, rcond: float | None) -> None:
        n = objective.a.shape[0]
        self.objective = objective
        self.dtype = hessian_dtype
        self.refresh = refresh
        self.rcond = rcond
        self.stride = max(1, n // subsample_rows) if subsample_rows > 0 else 1
        w = objective.row_weights
        # sqrt(ω) scales the rows of the Gram product; negative ω (weighted events) go to a
        # second product that is subtracted. The row-subsampled Hessian raises its diagonal to
        # the exact one, which is only valid for a sum of positive terms: signed weights always
        # use every row.
        self.sqrt_w = None if w is None else np.sqrt(np.maximum(w, 0.0))
        self.sqrt_neg = None if w is None or not (w < 0).any() else np.sqrt(np.maximum(-w, 0.0))
        if self.sqrt_neg is not None:
            self.stride = 1
        self.factor: _Factor | None = None
        self.casts: dict[type, NDArray[np.floating]] = {}
        self.row_norm2 = (objective.a.astype(np.float64) ** 2).sum(axis=1)
        self.n_hessian = 0
        self.n_full = 0
        self.subsampled = False  # the current factor comes from a row subsample

    def direction(self, r: NDArray[np.float64], g: NDArray[np.float64], prev_dec: float,
                  dec: float) -> tuple[NDArray[np.float64], float]:
        """Newton step ``−H⁻¹ g`` and decrement ``gᵀ H⁻¹ g``; ``dec`` is the last decrement."""
        step = None
        if self.factor is not None:
            step = -self.factor.solve(g)
            dec = float(-g @ step)
        if (self.factor is None or not np.isfinite(dec) or dec < 0
                or dec > self.refresh * prev_dec):
            self._refresh(r, prev_dec, dec)
            assert self.factor is not None
            step = -self.factor.solve(g)
            dec = float(-g @ step)
            if self.subsampled and not dec < prev_dec:
                # The decrement grew over a step preconditioned by a subsample: its rows do not
                # stand for the others here (strongly collinear columns, densities near zero).
                # Full Hessians for the rest of this fit.
                self.stride = 1
                step, dec = self.full_direction(r, g)
        assert step is not None
        return step, dec

    def full_direction(self, r: NDArray[np.float64], g: NDArray[np.float64]
                       ) -> tuple[NDArray[np.float64], float]:
        """Newton step and decrement from a Hessian of every row at this iterate."""
        self._refresh(r, 0.0, 0.0)
        assert self.factor is not None
        step = -self.factor.solve(g)
        return step, float(-g @ step)

    def _refresh(self, r: NDArray[np.float64], prev_dec: float, dec: float) -> None:
        a = self.objective.a
        use_stride = self.stride if (self.stride > 1 and prev_dec > 1.0 and dec > 1.0) else 1
        self.subsampled = use_stride > 1
        if use_stride == 1:
            self.n_full += 1
            if self.dtype != np.float64 and self.n_full > 6:
                self.dtype = np.float64  # float32 Hessian no longer good enough: go exact
        if self.dtype != a.dtype and self.dtype not in self.casts:
            # reused by every later Hessian; flushed once here, see _hessian
            self.casts[self.dtype] = flush_subnormal(a.astype(self.dtype),
                                                     tiny=_gram_floor(self.dtype))
        h = _hessian(a, r if self.sqrt_w is None else self.sqrt_w * r, self.objective.q,
                     self.dtype, use_stride, self.casts.get(self.dtype), self.row_norm2)
        if self.sqrt_neg is not None:
            h -= _hessian(a, self.sqrt_neg * r, np.zeros_like(self.objective.q), self.dtype,
                          1, self.casts.get(self.dtype), self.row_norm2)
        self.factor = _Factor(h, self.rcond)
        self.n_hessian += 1


def _feasible_step(f: NDArray[np.float64], a_step: NDArray[np.float64]) -> float:
    """Largest step ≤ 1 that keeps every density positive (0.99 of the way to the boundary)."""
    shrink = a_step < 0
    if not shrink.any():
        return 1.0
    return min(1.0, 0.99 * float(np.min(-f[shrink] / a_step[shrink])))


def _armijo(objective: _Objective, theta: NDArray[np.float64], r: NDArray[np.float64],
            step: NDArray[np.float64], a_step: NDArray[np.float64], dec: float,
            alpha: float) -> float | None:
    """Backtrack from ``alpha`` to sufficient decrease; None when no step makes progress."""
    slope = -dec
    lin = objective.b @ step
    q, w = objective.q, objective.row_weights
    while True:
        # NLL(θ + α d) − NLL(θ), accumulated as differences so that it stays accurate when both
        # values are ~N and the change is ~1e-12.
        logs = np.log1p(alpha * a_step * r)
        delta = (-(logs.sum() if w is None else w @ logs) + alpha * lin
                 + float(q @ (alpha * theta * step + 0.5 * alpha**2 * step * step)))
        if delta <= _ARMIJO * alpha * slope:
            return alpha
        alpha *= 0.5
        if alpha < _MIN_STEP:
            return None


@dataclass(frozen=True)
class NewtonOptions:
    """How :func:`minimize_convex` iterates.

    Attributes:
        tol: stop when the Newton decrement ``gᵀH⁻¹g/2`` is below ``tol`` (absolute, in NLL
            units).
        max_iter: iteration cap; on reaching it ``converged`` is False.
        hessian_dtype: accumulation type of the data Hessian (float32 halves its cost; the
            solve and every gradient stay float64, so the minimiser is unaffected).
        refresh: re-form the Hessian when the decrement shrank by less than this factor
            since the last step (0: plain Newton, a fresh Hessian every step).
        subsample_rows: when > 0 and N is larger, form the Hessian from about this many rows
            while the decrement exceeds 1 (damped phase); full Hessians afterwards.
        rcond: None (default) solves with a Cholesky factor. A number solves with the
            truncated-eigen pseudo-inverse that drops Hessian eigenvalues below ``rcond`` times
            the largest: directions singular to working precision stay at ``theta0`` exactly.
        final_step: once the decrement is below ``tol``, take one more full Newton step (when
            it is feasible) before stopping. Inside the quadratic region the predicted decrease
            is below the rounding of NLL, so a line search would only see noise; the full step
            brings the stationarity conditions (e.g. Σŵ = 1 in Eq. 1) to rounding level.
            Convergence then needs that step, so it cannot happen at the iteration cap.
    """

    tol: float = 1e-10
    max_iter: int = 100
    hessian_dtype: type = np.float32
    refresh: float = 0.25
    subsample_rows: int = 0
    rcond: float | None = None
    final_step: bool = False


def minimize_convex(c: NDArray[np.float64], a: NDArray[np.floating], b: NDArray[np.float64],
                    q: NDArray[np.float64], theta0: NDArray[np.float64] | None = None, *,
                    row_weights: NDArray[np.float64] | None = None,
                    options: NewtonOptions = NewtonOptions()) -> Solution:
    """Minimise ``−Σ_n ω_n log(c + Aθ)_n + bᵀθ + ½ Σ q θ²`` exactly (ω_n = 1 by default).

    Args:
        c: (N,) offsets, the density at θ = 0 (float64).
        a: (N, p) design matrix (may be a column slice of a larger array), float64 (float32
            works but cannot reach tight tolerances: not used for the statistic).
        b: (p,) linear coefficients.
        q: (p,) non-negative diagonal of the quadratic term (0 where the data term alone
            curves the objective, as in Eq. 1).
        theta0: feasible start (default 0).
        row_weights: optional (N,) weights of the log terms (small weights turn rows into a
            log-barrier that keeps the density positive there). Negative weights are allowed
            (weighted events of Eq. 1) but can make NLL non-convex: use ``options.rcond`` so
            that Newton steps on the Hessian's positive part, and check the curvature at the
            minimiser.
        options: tolerance, iteration cap and Hessian strategy (:class:`NewtonOptions`).

    Returns:
        :class:`Solution`.

    Raises:
        FitError: if the start is infeasible (``c + Aθ0 ≤ 0`` somewhere).
    """
    n, p = a.shape
    theta = np.zeros(p) if theta0 is None else np.array(theta0, dtype=np.float64)
    if a.dtype == np.float32 and count_subnormal(a):
        # float32 products with subnormal operands are 10-100x slower on Intel cores; entries
        # below 1.2e-38 change c + Aθ by < 1.2e-38 |θ|₁, far below float32 rounding of it.
        a = flush_subnormal(a, out=np.empty_like(a))  # the caller's array is left alone
    objective = _Objective(c, a, b, q, row_weights)
    f = c + objective.prod(theta) if p else c.copy()
    bad = ~(f > 0)
    if bad.any():
        raise FitError(f"infeasible start: density <= 0 at {int(bad.sum())} of {n} events "
                       f"(first at row {int(np.flatnonzero(bad)[0])})")
    if p == 0:
        return Solution(theta, f, 0.0, True, 0, 0, 0.0, 0.0)
    newton = _LaggedNewton(objective, hessian_dtype=options.hessian_dtype,
                           refresh=options.refresh, subsample_rows=options.subsample_rows,
                           rcond=options.rcond)
    prev_dec = np.inf
    converged = failed = False
    dec = grad_norm = np.inf
    it = 0
    for it in range(options.max_iter + 1):  # noqa: B007 -- `it` is reported
        r = 1.0 / f
        g = objective.gradient(theta, r)
        grad_norm = float(np.abs(g).max())
        step, dec = newton.direction(r, g, prev_dec, dec)
        small = 0.5 * dec <= options.tol
        if small and newton.subsampled:
            # A row-subsampled Hessian only preconditions the damped phase: its decrement is
            # no certificate (rows it left out may hold a direction of large descent).
            step, dec = newton.full_direction(r, g)
            small = 0.5 * dec <= options.tol
        if small and not options.final_step:
            converged = True
            break
        if it == options.max_iter:
            break
        a_step = objective.prod(step)
        alpha = _feasible_step(f, a_step)
        if small and alpha == 1.0:
            theta = theta + step
            it += 1
            converged = True
            break
        prev_dec = dec
        accepted = _armijo(objective, theta, r, step, a_step, dec, alpha)
        if accepted is None:
            failed = True  # no descent possible at float64 precision: not converged
            break
        theta = theta + accepted * step
        f = f + accepted * a_step
    f = c + objective.prod(theta)  # without the rounding accumulated over the steps
    return Solution(theta, f, objective.penalty(theta), converged, it, newton.n_hessian,
                    0.5 * dec, grad_norm, failed)
