"""Bin integrals of mixture densities from one importance-weighted pool.

For the marginal figures (paper Fig. 1) every curve is a bin integral ``∫_b h(x) dx`` of some
density h: the reference mixture, each member, the LRT reconstruction. With a pool
``x_j ~ f(x; ŵ)`` (already drawn for the GoF toys) all of them follow from one identity,

    ∫_b h = E_f[1_b(x) h(x) / f(x)] ≈ (1/P) Σ_j 1_b(x_j) h(x_j) / f(x_j),

so no density is re-evaluated on a grid and D-dimensional marginals come for free. The
reference band is Eq. (3) applied to the observable ``1_b``: ``σ²_b = P_bᵀ Cov P_b`` with
``P_b[k] = ∫_b f_k``, plus the Monte-Carlo variance of the pool estimate.

References:
    Badaracco et al., Eq. (3) and Fig. 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError

__all__ = ["BinnedReference", "bin_integrals", "binned_reference", "histogram_counts"]


def bin_integrals(values: ArrayLike, edges: ArrayLike, numerators: ArrayLike,
                  f_pool: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Importance-sampled bin integrals of K densities, and their Monte-Carlo variance.

    Args:
        values: (P,) the binned feature of the pool events, drawn from f.
        edges: (B+1,) increasing bin edges.
        numerators: (P, K) the densities ``h_k`` at the pool events (or (P,) for one).
        f_pool: (P,) the sampling density f at the pool events (must be > 0).

    Returns:
        ``(integrals, mc_var)``, each (B, K): ``(1/P) Σ_j 1_b h_k / f`` and its variance.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    e = np.asarray(edges, dtype=np.float64)
    h = np.asarray(numerators, dtype=np.float64)
    h = h[:, None] if h.ndim == 1 else h
    f = np.asarray(f_pool, dtype=np.float64).reshape(-1)
    if not (v.size == h.shape[0] == f.size):
        raise InputError(f"pool sizes differ: values {v.size}, numerators {h.shape[0]}, "
                         f"f {f.size}")
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise InputError("edges must be a strictly increasing 1D array of at least 2 values")
    if np.any(f <= 0) or not np.all(np.isfinite(f)):
        raise InputError("the sampling density must be finite and positive at every pool event")
    ratio = h / f[:, None]
    n_bins, pool = e.size - 1, v.size
    # np.digitize puts x == last edge beyond the range; histogram semantics keep it in.
    idx = np.clip(np.searchsorted(e, v, side="right") - 1, 0, n_bins - 1)
    inside = (v >= e[0]) & (v <= e[-1])
    sums = np.zeros((n_bins, h.shape[1]))
    sq = np.zeros_like(sums)
    np.add.at(sums, idx[inside], ratio[inside])
    np.add.at(sq, idx[inside], ratio[inside] ** 2)
    integrals = sums / pool
    mc_var = np.maximum(sq / pool - integrals ** 2, 0.0) / pool
    return integrals, mc_var


@dataclass(frozen=True)
class BinnedReference:
    """Reference bin fractions of a w_i f_i mixture and their Eq. (3) uncertainty.

    Attributes:
        edges: (B+1,) bin edges.
        fraction: (B,) ``∫_b f(x; ŵ)``, the expected fraction of events per bin.
        std: (B,) total σ: weight covariance (Eq. 3) and pool Monte-Carlo error combined.
        std_weights: (B,) the weight-covariance part alone.
        member_fractions: (B, M) ``∫_b f_k``.
    """

    edges: NDArray[np.float64]
    fraction: NDArray[np.float64]
    std: NDArray[np.float64]
    std_weights: NDArray[np.float64]
    member_fractions: NDArray[np.float64]


def binned_reference(values: ArrayLike, edges: ArrayLike, F_pool: ArrayLike,
                     weights: ArrayLike, cov: ArrayLike) -> BinnedReference:
    """Bin fractions of ``f = F·ŵ`` with ``σ²_b = P_bᵀ Cov P_b`` + pool MC variance.

    Args:
        values: (P,) one feature of pool events drawn from ``f(x; ŵ)``.
        edges: (B+1,) bin edges.
        F_pool: (P, M) member densities at the pool events.
        weights: (M,) fitted weights ŵ.
        cov: (M, M) their covariance (Eq. 2).
    """
    F = np.asarray(F_pool, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(cov, dtype=np.float64)
    if F.ndim != 2 or w.shape != (F.shape[1],) or c.shape != (w.size, w.size):
        raise InputError(f"shapes do not match: F {F.shape}, weights {w.shape}, cov {c.shape}")
    f = F @ w
    members, _ = bin_integrals(values, edges, F, f)
    fraction, mc_var = bin_integrals(values, edges, f, f)
    var_w = np.maximum(np.einsum("bk,kl,bl->b", members, c, members), 0.0)
    return BinnedReference(edges=np.asarray(edges, dtype=np.float64), fraction=fraction[:, 0],
                           std=np.sqrt(var_w + mc_var[:, 0]), std_weights=np.sqrt(var_w),
                           member_fractions=members)


def histogram_counts(values: ArrayLike, edges: ArrayLike) -> NDArray[np.float64]:
    """Event counts per bin (float, for the DATA points)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges))
    return counts.astype(np.float64)
