"""Gaussian kernel basis of the learned alternative ``g(x; a) = Σ_k a_k G_k(x)``.

References:
    Badaracco et al., Step 4 and Eq. (5): K = 100 isotropic Gaussian kernels of width
    σ = 0.05, centres drawn from a held-out split; Grosso et al., SciPost Phys. 16 (2024) 123.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_events, as_rng
from genval.errors import InputError
from genval.subnormal import exp_flushed

__all__ = ["KernelBasis"]


class KernelBasis:
    """K normalised Gaussian kernels ``G_k(x) = N(x; c_k, diag(σ² s²))`` on R^D.

    Each kernel integrates to one, so the alternative's extended term is ``N Σ_k a_k``.
    With ``scale = None`` the kernels are isotropic in feature units (the paper); with a
    per-feature ``scale`` (e.g. the standard deviations of the features) σ is in those units,
    i.e. the kernels are isotropic in standardised coordinates.

    Args:
        centers: (K, D) kernel centres. Draw them from a split disjoint from the test data.
        sigma: kernel width (default 0.05, the paper's value).
        scale: optional (D,) positive per-feature unit of ``sigma``.

    Example:
        >>> basis = KernelBasis.from_events(x_heldout, n_kernels=100, sigma=0.05, seed=1)
        >>> G = basis.pdf(x_test)          # (N, K)
    """

    def __init__(self, centers: ArrayLike, sigma: float = 0.05, *,
                 scale: ArrayLike | None = None) -> None:
        c = as_events(centers, name="kernel centres")
        if not (np.isfinite(sigma) and sigma > 0):
            raise InputError(f"sigma must be finite and positive, got {sigma}")
        d = c.shape[1]
        s = np.ones(d) if scale is None else np.broadcast_to(
            np.asarray(scale, dtype=np.float64), (d,)).copy()
        if not np.all(np.isfinite(s) & (s > 0)):
            raise InputError(f"scale must be finite and positive per feature, got {s}")
        self.centers = c
        self.sigma = float(sigma)
        self.scale = s
        self._widths = self.sigma * s
        # log normalisation of a diagonal Gaussian with widths σ s_j
        self._log_norm = -np.log(self._widths).sum() - 0.5 * d * np.log(2.0 * np.pi)

    @classmethod
    def from_events(cls, x_heldout: ArrayLike, n_kernels: int = 100, sigma: float = 0.05, *,
                    standardize: bool = False, seed: np.random.Generator | int | None = None,
                    ) -> KernelBasis:
        """Centres drawn without replacement from held-out events (disjoint from the test set).

        Args:
            x_heldout: events of a split used neither to fit ŵ nor as test data.
            n_kernels: K (default 100, the paper's value).
            sigma: kernel width (default 0.05).
            standardize: measure σ in units of each feature's standard deviation on
                ``x_heldout`` instead of raw feature units.
            seed: generator or seed for the draw.
        """
        x = as_events(x_heldout, name="held-out events", min_events=2)
        if not 1 <= n_kernels <= x.shape[0]:
            raise InputError(f"n_kernels must be in [1, {x.shape[0]}] (held-out events), "
                             f"got {n_kernels}")
        rows = as_rng(seed).choice(x.shape[0], size=int(n_kernels), replace=False)
        scale = x.std(axis=0, ddof=1) if standardize else None
        return cls(x[np.sort(rows)], sigma, scale=scale)

    @property
    def n_kernels(self) -> int:
        return self.centers.shape[0]

    @property
    def n_features(self) -> int:
        return self.centers.shape[1]

    def log_pdf(self, x: ArrayLike, *, chunk_size: int = 65536) -> NDArray[np.float64]:
        """``log G_k(x_n)`` as an (N, K) float64 array (no underflow far from the centres)."""
        events = as_events(x, n_features=self.n_features, min_events=0)
        c = self.centers / self._widths
        c_sq = np.einsum("ij,ij->i", c, c)
        out = np.empty((events.shape[0], self.n_kernels))
        for start in range(0, events.shape[0], chunk_size):
            z = events[start:start + chunk_size] / self._widths
            # |z - c|² through one GEMM; rounding can push it slightly below zero.
            d2 = np.einsum("ij,ij->i", z, z)[:, None] + c_sq[None, :] - 2.0 * (z @ c.T)
            np.maximum(d2, 0.0, out=d2)
            out[start:start + len(z)] = self._log_norm - 0.5 * d2
        return out

    def pdf(self, x: ArrayLike) -> NDArray[np.float64]:
        """``G_k(x_n)`` as an (N, K) float64 array; each column a normalised density.

        Values below float64's normal range (2.2e-308) are exactly 0, not subnormal (subnormal
        operands slow products 10-100x on Intel cores, see :mod:`genval.subnormal`); they had
        lost their precision to gradual underflow already. ``test_statistic`` and the toys use
        the row-scaled ``log_pdf`` instead, flushed relative to the member densities.
        """
        g = self.log_pdf(x)
        return exp_flushed(g, out=g, tiny=float(np.finfo(np.float64).tiny))

    def __repr__(self) -> str:
        units = "feature units" if np.all(self.scale == 1.0) else "standardised units"
        return (f"KernelBasis(K={self.n_kernels}, D={self.n_features}, sigma={self.sigma:g} "
                f"in {units})")
