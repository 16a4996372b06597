"""Gaussian kernel basis of the learned alternative ``g(x; a) = Σ_k a_k G_k(x)``.

With a feature transform ``y = T(x)`` (:mod:`genval.transforms`) the kernels are Gaussians in
``y``, the space the members are trained in, and their densities in ``x`` carry the Jacobian:
``G_k(x) = N(T(x); T(c_k), diag(σ² s²)) · |det dT/dx|``. Each is then a normalised density on
the features' domain (a Gaussian in raw pT would put mass below 0, where no event can be), and
the statistic t equals the one computed on the transformed events: the Jacobian is a common
factor of every row of F and G (docs/method.md, "Feature transforms").

References:
    Badaracco et al., Step 4 and Eq. (5): K = 100 isotropic Gaussian kernels of width
    σ = 0.05, centres drawn from a held-out split; Grosso et al., SciPost Phys. 16 (2024) 123.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_events, as_rng
from genval.errors import InputError
from genval.subnormal import exp_flushed
from genval.transforms import FeatureTransform

Units = Literal["raw", "standardised", "scaled"]

__all__ = ["KernelBasis", "kernel_basis_text"]


class KernelBasis:
    """K normalised Gaussian kernels ``G_k(x) = N(x; c_k, diag(σ² s²))`` on R^D.

    Each kernel integrates to one, so the alternative's extended term is ``N Σ_k a_k``.
    With ``scale = None`` the kernels are isotropic in feature units (the paper); with a
    per-feature ``scale`` (e.g. the standard deviations of the features) σ is in those units,
    i.e. the kernels are isotropic in standardised coordinates. With a ``transform`` T, all of
    this holds in the transformed coordinates ``y = T(x)`` and :meth:`log_pdf` returns the
    densities in ``x`` (Jacobian included); centres are given, and kept, in ``x``.

    Args:
        centers: (K, D) kernel centres. Draw them from a split disjoint from the test data.
        sigma: kernel width (default 0.05, the paper's value).
        scale: optional (D,) positive per-feature unit of ``sigma`` (in transformed units).
        transform: optional feature transform the kernels are Gaussian after.

    Example:
        >>> basis = KernelBasis.from_events(x_heldout, n_kernels=100, sigma=0.05, seed=1)
        >>> G = basis.pdf(x_test)          # (N, K)
    """

    def __init__(self, centers: ArrayLike, sigma: float = 0.05, *,
                 scale: ArrayLike | None = None, transform: FeatureTransform | None = None
                 ) -> None:
        c = as_events(centers, name="kernel centres")
        if not (np.isfinite(sigma) and sigma > 0):
            raise InputError(f"sigma must be finite and positive, got {sigma}")
        d = c.shape[1]
        s = np.ones(d) if scale is None else np.broadcast_to(
            np.asarray(scale, dtype=np.float64), (d,)).copy()
        if not np.all(np.isfinite(s) & (s > 0)):
            raise InputError(f"scale must be finite and positive per feature, got {s}")
        if transform is not None and transform.n_features != d:
            raise InputError(f"transform has {transform.n_features} features, centres {d}")
        self.centers = c
        self.sigma = float(sigma)
        self.scale = s
        # An identity transform changes nothing: drop it so the arithmetic is the plain one.
        self.transform = None if transform is None or transform.is_identity else transform
        self.units: Units = "raw" if scale is None else "scaled"
        self._y_centers = c if self.transform is None else self.transform.forward(
            c, name="kernel centres")
        self._widths = self.sigma * s
        # log normalisation of a diagonal Gaussian with widths σ s_j
        self._log_norm = -np.log(self._widths).sum() - 0.5 * d * np.log(2.0 * np.pi)

    @classmethod
    def from_events(cls, x_heldout: ArrayLike, n_kernels: int = 100, sigma: float = 0.05, *,
                    standardize: bool = False, transform: FeatureTransform | None = None,
                    seed: np.random.Generator | int | None = None) -> KernelBasis:
        """Centres drawn without replacement from held-out events (disjoint from the test set).

        Args:
            x_heldout: events of a split used neither to fit ŵ nor as test data.
            n_kernels: K (default 100, the paper's value).
            sigma: kernel width (default 0.05).
            standardize: measure σ in units of each feature's standard deviation on
                ``x_heldout`` (after ``transform``) instead of raw feature units.
            transform: the feature transform of the members; the kernels are Gaussian in the
                transformed coordinates (module docstring).
            seed: generator or seed for the draw.
        """
        x = as_events(x_heldout, name="held-out events", min_events=2)
        if not 1 <= n_kernels <= x.shape[0]:
            raise InputError(f"n_kernels must be in [1, {x.shape[0]}] (held-out events), "
                             f"got {n_kernels}")
        rows = as_rng(seed).choice(x.shape[0], size=int(n_kernels), replace=False)
        y = x if transform is None else transform.forward(x, name="held-out events")
        scale = y.std(axis=0, ddof=1) if standardize else None
        basis = cls(x[np.sort(rows)], sigma, scale=scale, transform=transform)
        if standardize:
            basis.units = "standardised"
        return basis

    @property
    def n_kernels(self) -> int:
        return self.centers.shape[0]

    @property
    def n_features(self) -> int:
        return self.centers.shape[1]

    def log_pdf(self, x: ArrayLike, *, chunk_size: int = 65536) -> NDArray[np.float64]:
        """``log G_k(x_n)`` as an (N, K) float64 array (no underflow far from the centres)."""
        events = as_events(x, n_features=self.n_features, min_events=0)
        log_det = None
        if self.transform is not None:
            events, log_det = self.transform.forward_log_det(events)
        c = self._y_centers / self._widths
        c_sq = np.einsum("ij,ij->i", c, c)
        out = np.empty((events.shape[0], self.n_kernels))
        for start in range(0, events.shape[0], chunk_size):
            z = events[start:start + chunk_size] / self._widths
            # |z - c|² through one GEMM; rounding can push it slightly below zero.
            d2 = np.einsum("ij,ij->i", z, z)[:, None] + c_sq[None, :] - 2.0 * (z @ c.T)
            np.maximum(d2, 0.0, out=d2)
            out[start:start + len(z)] = self._log_norm - 0.5 * d2
        if log_det is not None:
            out += log_det[:, None]  # densities in x: the same Jacobian for every kernel
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

    def describe(self) -> dict[str, Any]:
        """Which basis this is, JSON-ready (what :class:`~genval.gof.GoFResult` records):
        K, σ, its ``units`` ("raw", "standardised" or "scaled"), the per-feature ``scale`` and
        the ``coordinates`` the kernels are Gaussian in (the transformed features, or None
        for the features themselves)."""
        return {"n_kernels": self.n_kernels, "sigma": self.sigma, "units": self.units,
                "scale": self.scale.tolist(),
                "coordinates": None if self.transform is None else self.transform.describe()}

    def __repr__(self) -> str:
        units = {"raw": "feature units", "standardised": "standardised units",
                 "scaled": "scaled units"}[self.units]
        space = "" if self.transform is None else f" of {', '.join(self.transform.describe())}"
        return (f"KernelBasis(K={self.n_kernels}, D={self.n_features}, sigma={self.sigma:g} "
                f"in {units}{space})")


def kernel_basis_text(description: Mapping[str, Any]) -> str:
    """One line from :meth:`KernelBasis.describe`, e.g. ``σ = 1 in standardised units of
    log(pt), eta`` (what the report and the result's repr show); "" for an empty record."""
    if "sigma" not in description:
        return ""
    units = description.get("units")
    text = f"σ = {float(description['sigma']):g} in " + {
        "raw": "feature units", "standardised": "standardised units"}.get(
        str(units), f"{units} units")
    coordinates = description.get("coordinates")
    return text + (f" of {', '.join(map(str, coordinates))}" if coordinates else "")
