"""The Gaussian constraint on the ensemble weights under both hypotheses of Eq. (5).

Null ``H_φ``: ``f(x; φ) = F(x)·φ`` with ``φ = ŵ + B z`` on the hyperplane ``Σ φ = 1`` (so the
extended term ``N Σ φ`` is the constant N) and the Gaussian constraint
``½ (z − z₀)ᵀ C_r⁻¹ (z − z₀)``, ``C_r = Bᵀ Cov(ŵ) B``. Alternative ``H_{φ,a}``: add
``G(x)·a`` with the extended term ``N Σ a`` and the weak penalty ``λ_net N ‖a‖²``.

The constraint is whitened once: ``C_r = U Λ Uᵀ`` and ``z = U Λ^{1/2} u`` so that the constraint
is ``½ ‖u − u₀‖²``; directions with (numerically) zero variance are pinned at ŵ.
:meth:`Constraint.project` maps row-scaled densities (:func:`genval.row_scaling.scale_rows`)
to the solver's ``c + A θ`` form.

References:
    Badaracco et al., Step 4, Eq. (5) and the paragraph after it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import IllConditionedWarning, InputError
from genval.linalg import sum_to_one_basis
from genval.row_scaling import ScaledRows

__all__ = ["Constraint"]

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

    def project(self, rows: ScaledRows) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Row-scaled densities in the solver's form ``c + A θ``, θ = (u, a).

        Returns ``(c, a)``: ``c = F̃ ŵ`` (N,), the null density at ŵ, and
        ``a = [F̃ T | G̃]`` (N, rank + K), the whitened weight directions then the kernels.
        """
        c = rows.f @ self.weights
        a = np.concatenate([rows.f @ self.transform, rows.g], axis=1)
        return c, a

    def project_checks(self, rows: ScaledRows
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Positivity check points (the kernel centres) in the solver's form ``c + A θ``.

        Where f(x; ŵ) > 0 the row is the alternative density itself, as in :meth:`project`:
        its log-barrier keeps the alternative positive there. Where f(x; ŵ) ≤ 0 already
        (signed weights) the null cannot be positive, so that row keeps only the kernels and
        an offset of 1, the largest member density there (rows are scaled by it): the
        kernels may not take more than that away at the point. Dropping such a point instead
        leaves its kernel free to take a negative amplitude wherever no event lies (the toys
        have none where f < 0): the exact optimum is then a ≈ −1/(2 λ_net) and t ≈ 2e9, as
        on a Pythia multijet sample of 4 200 test events.
        """
        c, a = self.project(rows)
        off = ~(c > 0)
        if off.any():
            c = np.where(off, 1.0, c)
            a[off, :self.rank] = 0.0
        return c, a


def _as_weights(weights: ArrayLike) -> NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size < 1 or not np.all(np.isfinite(w)):
        raise InputError(f"weights must be finite, got {w}")
    return w
