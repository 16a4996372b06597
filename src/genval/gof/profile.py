"""The two profiled hypotheses of Eq. (5): the constrained ensemble and ensemble + kernels.

Null ``H_φ``: ``f(x; φ) = F(x)·φ`` with ``φ = ŵ + B z`` on the hyperplane ``Σ φ = 1`` (so the
extended term ``N Σ φ`` is the constant N) and the Gaussian constraint
``½ (z − z₀)ᵀ C_r⁻¹ (z − z₀)``, ``C_r = Bᵀ Cov(ŵ) B``. Alternative ``H_{φ,a}``: add
``G(x)·a`` with the extended term ``N Σ a`` and the weak penalty ``λ_net N ‖a‖²``.

The constraint is whitened once: ``C_r = U Λ Uᵀ`` and ``z = U Λ^{1/2} u`` so that the constraint
is ``½ ‖u − u₀‖²``; directions with (numerically) zero variance are pinned at ŵ. Rows of F and G
are divided by the row maximum of F (``log_s``): the per-event constant ``Σ log s_n`` is the same
in both hypotheses and cancels in t, and tail events no longer underflow.

References:
    Badaracco et al., Step 4, Eq. (5) and the paragraph after it; DESIGN.md "GoF".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import IllConditionedWarning, InputError
from genval.linalg import sum_to_one_basis
from genval.subnormal import TINY32, exp_flushed, flush_subnormal
from genval.wifi import prepare_density_matrix

__all__ = ["Constraint", "ScaledRows", "scale_rows", "LAMBDA_NET"]

LAMBDA_NET = 1e-6
_RANK_TOL = 1e-12  # eigenvalues of C_r below this fraction of the largest are pinned
_PSD_TOL = 1e-8  # more negative than this fraction of the largest: not a covariance


@dataclass(frozen=True)
class Constraint:
    """Whitened Gaussian constraint ``N(ŵ, Cov(ŵ))`` on the ensemble weights.

    ``φ = weights + transform @ u`` with ``u ~ N(u₀, I)``; ``transform = B U_+ Λ_+^{1/2}``.

    Attributes:
        weights: ŵ (M,).
        transform: (M, r) map from whitened coordinates to weights; r ≤ M − 1.
        eigenvalues: eigenvalues of ``C_r`` (M − 1,), ascending.
        n_pinned: directions of ``C_r`` with zero variance, held at ŵ.
    """

    weights: NDArray[np.float64]
    transform: NDArray[np.float64]
    eigenvalues: NDArray[np.float64]
    n_pinned: int

    @property
    def rank(self) -> int:
        return self.transform.shape[1]

    @classmethod
    def frozen(cls, weights: ArrayLike) -> Constraint:
        """Weights fixed at ``weights`` (no uncertainty): no free direction."""
        w = _as_weights(weights)
        return cls(w, np.zeros((w.size, 0)), np.zeros(max(w.size - 1, 0)), max(w.size - 1, 0))

    @classmethod
    def from_cov(cls, weights: ArrayLike, cov: ArrayLike, *, known_pinned: int = 0
                 ) -> Constraint:
        """Whiten ``C_r = Bᵀ Cov B``.

        Args:
            weights: ŵ (M,).
            cov: Cov(ŵ) (M, M); any variance along ``1`` is ignored (Σφ = 1 exactly).
            known_pinned: directions the weight fit already reported as unidentifiable
                (``WeightFit.n_unidentified``); only pinned directions beyond these warn.

        Raises:
            InputError: non-finite or wrongly shaped input, or a covariance with clearly
                negative eigenvalues.

        Warns:
            IllConditionedWarning: when some directions of ``C_r`` have zero variance (they
                are pinned at ŵ, as if the weights were known exactly along them).
        """
        w = _as_weights(weights)
        m = w.size
        c = np.asarray(cov, dtype=np.float64)
        if c.shape != (m, m):
            raise InputError(f"cov must be ({m}, {m}) for {m} weights, got {c.shape}")
        if not np.all(np.isfinite(c)):
            raise InputError("cov contains NaN/inf")
        if m == 1:
            return cls.frozen(w)
        basis = sum_to_one_basis(m)
        c_r = basis.T @ (0.5 * (c + c.T)) @ basis
        vals, vecs = np.linalg.eigh(c_r)
        size = float(np.abs(vals).max())
        if vals[0] < -_PSD_TOL * size:
            raise InputError(f"cov is not positive semi-definite on Σw = 1: eigenvalue "
                             f"{vals[0]:.3g} vs largest magnitude {size:.3g}")
        top = float(vals[-1])
        if top <= 0.0:
            warnings.warn("Cov(ŵ) is zero on the hyperplane Σw = 1: every weight direction is "
                          "pinned and the ensemble-with-uncertainty variant reduces to frozen "
                          "weights", IllConditionedWarning, stacklevel=3)
            return cls(w, np.zeros((m, 0)), vals, m - 1)
        keep = vals > _RANK_TOL * top
        n_pinned = int((~keep).sum())
        if n_pinned > known_pinned:
            warnings.warn(
                f"Cov(ŵ) restricted to Σw = 1 is singular: {n_pinned} of {m - 1} directions "
                f"have variance below {_RANK_TOL:g} x the largest ({top:.3g}) and are pinned "
                "at ŵ (near-duplicate members?)", IllConditionedWarning, stacklevel=3)
        transform = basis @ (vecs[:, keep] * np.sqrt(vals[keep]))
        return cls(w, transform, vals, n_pinned)

    @classmethod
    def from_fit(cls, fit: Any) -> Constraint:
        """From a w_i f_i fit result (anything with ``.weights`` and ``.cov``)."""
        if not hasattr(fit, "weights") or not hasattr(fit, "cov"):
            raise InputError("fit must have .weights and .cov (a genval.wifi fit result)")
        return cls.from_cov(fit.weights, fit.cov,
                            known_pinned=int(getattr(fit, "n_unidentified", 0) or 0))

    def whiten(self, z0: ArrayLike | None) -> NDArray[np.float64]:
        """Constraint centre ``z₀`` in the M − 1 hyperplane coordinates → whitened ``u₀``."""
        if z0 is None:
            return np.zeros(self.rank)
        z = np.asarray(z0, dtype=np.float64)
        m = self.weights.size
        if z.shape != (m - 1,) or not np.all(np.isfinite(z)):
            raise InputError(f"z0 must be {m - 1} finite numbers (coordinates of Σw = 1)")
        # transform = B L with L = U Λ^{1/2}; u = Λ^{-1/2} Uᵀ z on the kept directions
        lt = sum_to_one_basis(m).T @ self.transform
        return (lt.T @ z) / np.einsum("ij,ij->j", lt, lt)

    def weights_at(self, u: NDArray[np.float64]) -> NDArray[np.float64]:
        """Ensemble weights φ at whitened coordinates ``u``."""
        return self.weights + self.transform @ u if self.rank else self.weights.copy()


def _as_weights(weights: ArrayLike) -> NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size < 1 or not np.all(np.isfinite(w)):
        raise InputError(f"weights must be finite, got {w}")
    return w


@dataclass(frozen=True)
class ScaledRows:
    """Member and kernel densities divided by the row maximum of F.

    Attributes:
        f: (N, M) ``F / s``, each row's maximum is 1.
        g: (N, K) ``G / s``.
        log_s: (N,) ``log s``; ``−Σ log s`` is added back to report absolute NLLs.
    """

    f: NDArray[np.float64]
    g: NDArray[np.float64]
    log_s: NDArray[np.float64]


def scale_rows(f: ArrayLike, g: ArrayLike, *, log: bool = False) -> ScaledRows:
    """Row-scale F and G (given as densities, or as log-densities with ``log=True``).

    Raises:
        InputError: shapes disagree, values are NaN/+inf, densities are negative, or every
            member is zero at some event.
    """
    fa = np.asarray(f, dtype=np.float64)
    ga = np.asarray(g, dtype=np.float64)
    if fa.ndim == 1:
        fa = fa[:, None]
    if fa.ndim != 2 or ga.ndim != 2 or fa.shape[0] != ga.shape[0]:
        raise InputError(f"F must be (N, M) and G (N, K) with the same N, got {fa.shape} and "
                         f"{ga.shape}")
    if fa.shape[0] == 0:
        raise InputError("no test events")
    for name, arr in (("F", fa), ("G", ga)):
        bad = np.isnan(arr) | np.isposinf(arr) | (np.isneginf(arr) if not log else False)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise InputError(f"{name} has NaN/inf on {rows.size} events (first at row {rows[0]})")
    if not log and (ga < 0).any():
        raise InputError("G must hold densities (>= 0); pass log=True for log-densities")
    # F's row scaling is the weight fit's (same checks: negative densities, dead rows).
    f_scaled, log_s = prepare_density_matrix(fa, log=log)
    # Kernel densities below 1.2e-38 of the row's largest member density are set to 0: they
    # would be subnormal in the float32 Hessians (10-100x slower on Intel cores, see
    # genval.subnormal), and change f = F̃φ + G̃a by < 1.2e-38 |a|₁, far below its rounding.
    if log:
        g_scaled = ga - log_s[:, None]
        exp_flushed(g_scaled, out=g_scaled)
    else:
        g_scaled = flush_subnormal(ga / np.exp(log_s)[:, None], tiny=TINY32)
    return ScaledRows(f_scaled, g_scaled, log_s)
