"""Bin integrals of mixture densities from one importance-weighted pool.

For the marginal figures (paper Fig. 1) every curve is a bin integral ``∫_b h(x) dx`` of some
density h: the reference mixture, each member, the LRT reconstruction. With a pool
``x_j ~ f(x; ŵ)`` (already drawn for the GoF toys) all of them follow from one identity,

    ∫_b h = E_f[1_b(x) h(x) / f(x)] ≈ (1/n) Σ_j 1_b(x_j) h(x_j) / f(x_j),

so no density is re-evaluated on a grid and D-dimensional marginals come for free.

The reference band is Eq. (3) applied to the observable ``g = 1_b``, with the member fractions
``P_b[k] = ∫_b f_k`` themselves importance estimates from the pool, exactly as the observables
of :mod:`genval.products.observables` (whose module docstring derives the variance):

    σ²_b = [P̂_bᵀ C P̂_b − tr(C Σ̂_b)] + ŵᵀ Σ̂_b ŵ,

with Σ̂_b the full Monte-Carlo covariance of the vector ``P̂_b`` over the pool. The bracket is
the weight part with the noise bias of the estimated ``P_b`` removed; since ``ŵᵀ r_j = 1`` for
the ratios ``r_jk = f_k(x_j) / f̂(x_j)``, the last term is ``p_b (1 − p_b) / (n − 1)``, the
binomial error of the pool fraction ``p_b``. ``tr(C Σ̂_b)`` needs only the per-event
``q_j = r_jᵀ C r_j`` (the relative Eq. 3 band ``σ_f² / f̂²`` at ``x_j``):
``Σ_j (y_j − ȳ)ᵀ C (y_j − ȳ) = Σ_{j∈b} q_j − n P̂_bᵀ C P̂_b`` for ``y_j = 1_b(x_j) r_j``.

References:
    Badaracco et al., Eq. (3) and Fig. 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError

__all__ = ["BinnedReference", "bin_integrals", "binned_reference", "histogram_counts"]


def _bin_index(v: NDArray[np.float64], e: NDArray[np.float64]
               ) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """Bin of each value and whether it lies inside ``[e[0], e[-1]]`` (histogram semantics)."""
    # np.digitize puts x == last edge beyond the range; histogram semantics keep it in.
    idx = np.clip(np.searchsorted(e, v, side="right") - 1, 0, e.size - 2)
    return idx, (v >= e[0]) & (v <= e[-1])


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
    idx, inside = _bin_index(v, e)
    n_bins, pool = e.size - 1, v.size
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
        std_weights: (B,) the weight-covariance part alone, its noise bias removed.
        member_fractions: (B, M) ``∫_b f_k``, importance estimates from the pool.
        std_mc: (B,) the pool's Monte-Carlo part ``sqrt(p_b (1 − p_b) / (n − 1))``.
    """

    edges: NDArray[np.float64]
    fraction: NDArray[np.float64]
    std: NDArray[np.float64]
    std_weights: NDArray[np.float64]
    member_fractions: NDArray[np.float64]
    std_mc: NDArray[np.float64]


def binned_reference(values: ArrayLike, edges: ArrayLike, F_pool: ArrayLike,
                     weights: ArrayLike, cov: ArrayLike) -> BinnedReference:
    """Bin fractions of ``f = F·ŵ`` with the band of Eq. (3) and the pool's full MC covariance.

    ``σ²_b = P̂_bᵀ C P̂_b − tr(C Σ̂_b) + p_b (1 − p_b) / (n − 1)`` (module docstring).

    Args:
        values: (n,) one feature of pool events drawn from ``f(x; ŵ)``.
        edges: (B+1,) bin edges.
        F_pool: (n, M) member densities at the pool events (rows may be scaled by any positive
            per-event factor: only ratios enter).
        weights: (M,) fitted weights ŵ, those the pool was drawn with.
        cov: (M, M) their covariance (Eq. 2).
    """
    F = np.asarray(F_pool, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(cov, dtype=np.float64)
    if F.ndim != 2 or w.shape != (F.shape[1],) or c.shape != (w.size, w.size):
        raise InputError(f"shapes do not match: F {F.shape}, weights {w.shape}, cov {c.shape}")
    f = F @ w
    members, _ = bin_integrals(values, edges, F, f)  # validates the pool, edges and f > 0
    n, n_bins = F.shape[0], members.shape[0]
    e = np.asarray(edges, dtype=np.float64)
    idx, inside = _bin_index(np.asarray(values, dtype=np.float64).reshape(-1), e)
    fraction = np.bincount(idx[inside], minlength=n_bins) / n
    # C 1 = 0 (Σŵ = 1): centre across members so the quadratic forms drop the common mode.
    ratios = F / f[:, None]
    ratios -= ratios.mean(axis=1, keepdims=True)
    q = np.einsum("jk,jk->j", ratios @ c, ratios)
    q_sums = np.bincount(idx[inside], weights=q[inside], minlength=n_bins)
    centred = members - members.mean(axis=1, keepdims=True)
    plug_in = np.einsum("bk,kl,bl->b", centred, c, centred)
    noise = (q_sums - n * plug_in) / (n * (n - 1.0))
    var_w = np.maximum(plug_in - noise, 0.0)
    var_mc = fraction * (1.0 - fraction) / max(n - 1, 1)
    return BinnedReference(edges=e, fraction=fraction, std=np.sqrt(var_w + var_mc),
                           std_weights=np.sqrt(var_w), member_fractions=members,
                           std_mc=np.sqrt(var_mc))


def histogram_counts(values: ArrayLike, edges: ArrayLike) -> NDArray[np.float64]:
    """Event counts per bin (float, for the DATA points)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges))
    return counts.astype(np.float64)
