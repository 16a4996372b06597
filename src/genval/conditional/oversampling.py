"""Targeted oversampling: many events ``x | c`` for a chosen region of the context.

With conditional members the mixture can be sampled where the data are scarce: draw contexts
from the region of interest (a tail of the leading-jet pT, say) and an event ``x ~ f(x | c; ŵ)``
at each, far more than the data hold there, each with its density ``f̂(x | c)`` and the
predictive band of Eq. (3), ``σ(x | c) = sqrt(F(x | c)ᵀ Cov(ŵ) F(x | c))`` (the paper's
"targeted, uncertainty-aware oversampling").

The contexts of :func:`oversample_region` are the observed contexts inside the region,
resampled with replacement: the region's empirical context distribution, so the events follow
the model's ``x | c`` on the data's own contexts. :meth:`TargetedEvents.binned` gives the
region-averaged bin fractions of one feature of x with the Eq. (3) band
(:func:`genval.products.binned_reference`: the same importance identity holds with
conditional rows ``f_k(x_j | c_j) / f̂(x_j | c_j)``, averaging over the drawn contexts).

References:
    Badaracco et al., Eq. (3) and the conclusions (targeted, uncertainty-aware oversampling).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_context, as_rng
from genval.conditional.bins import ContextBins
from genval.conditional.fit import ConditionalWeightFit
from genval.conditional.sampling import sample_conditional_mixture
from genval.errors import InputError
from genval.members import Members, n_context_of
from genval.products.binned import BinnedReference, binned_reference
from genval.row_scaling import scale_log_rows
from genval.wifi import WeightFit

__all__ = ["TargetedEvents", "oversample_conditional", "oversample_region", "region_contexts"]


@dataclass(frozen=True)
class TargetedEvents:
    """Events ``x | c`` from the fitted conditional mixture, with f̂ and σ_f̂ (Eq. 3) at each.

    Attributes:
        x: (n, D) events. context: (n, C) the context each was drawn at.
        density, density_std: f̂(x | c) and its Eq. (3) σ at each event.
        bin_index: (n,) context bin of each event (zeros without bins).
        scaled_f: (n, M) row-scaled member densities (only ratios are meaningful).
        weights: (n, M) the weights each event was drawn with.
        cov: the covariance for :meth:`binned` (None with per-bin weights over several bins).
        sampler: the conditional sampler's diagnostics.
    """

    x: NDArray[np.float64]
    context: NDArray[np.float64]
    density: NDArray[np.float64]
    density_std: NDArray[np.float64]
    bin_index: NDArray[np.int64]
    scaled_f: NDArray[np.float64]
    weights: NDArray[np.float64]
    cov: NDArray[np.float64] | None
    sampler: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_std(self) -> NDArray[np.float64]:
        """σ_f̂ / f̂ at each event."""
        return self.density_std / self.density

    def binned(self, feature: int, edges: ArrayLike) -> BinnedReference:
        """Region-averaged bin fractions of feature ``feature`` of x with the Eq. (3) band.

        Raises:
            InputError: per-bin weights with events in several bins (their covariance is
                block-diagonal across bins, which the binned band here does not combine).
        """
        if self.cov is None:
            raise InputError("the events span several bins with their own weights: take one "
                             "bin's events (oversample within one bin) for a binned band")
        return binned_reference(self.x[:, feature], edges, self.scaled_f, self.weights[0],
                                self.cov)


def region_contexts(context_pool: ArrayLike, region: Mapping[int, tuple[float, float]], n: int,
                    rng: np.random.Generator | int | None = None) -> NDArray[np.float64]:
    """``n`` contexts resampled (with replacement) from the pool's contexts inside ``region``.

    Args:
        context_pool: (N, C) observed contexts.
        region: ``{feature: (lo, hi)}``, half-open ``[lo, hi)`` per constrained feature.
        n: contexts wanted.
        rng: generator or seed.

    Raises:
        InputError: malformed contexts or region, or no pool context in the region.
    """
    pool = as_context(context_pool, np.shape(context_pool)[0], np.shape(context_pool)[1]
                      if np.ndim(context_pool) == 2 else 1, name="context pool")
    inside = np.ones(pool.shape[0], dtype=bool)
    for f, (lo, hi) in region.items():
        if not 0 <= int(f) < pool.shape[1] or not lo < hi:
            raise InputError(f"region entry {f}: ({lo}, {hi}) is no interval of a context "
                             f"feature in 0..{pool.shape[1] - 1}")
        inside &= (pool[:, int(f)] >= lo) & (pool[:, int(f)] < hi)
    if not inside.any():
        raise InputError(f"no context of the pool lies in the region {dict(region)}")
    picks = as_rng(rng).integers(0, int(inside.sum()), size=int(n))
    return pool[inside][picks]


def oversample_conditional(members: Members, fit: WeightFit | ConditionalWeightFit,
                           context: ArrayLike, rng: np.random.Generator | int | None = None, *,
                           bins: ContextBins | None = None) -> TargetedEvents:
    """One exact draw ``x ~ f(x | c; ŵ)`` at each given context, with f̂ and its Eq. (3) band.

    Args:
        members: conditional members.
        fit: a :class:`~genval.wifi.WeightFit` on conditional rows (shared weights) or a
            :class:`~genval.conditional.ConditionalWeightFit` (per-bin weights need ``bins``).
        context: (n, C) contexts to draw at.
        rng: generator or seed.
        bins: the context bins of a per-bin fit.

    Raises:
        InputError: unconditional members, malformed contexts, a per-bin fit without bins or
            contexts outside them.
    """
    c_dim = n_context_of(members)
    if c_dim == 0:
        raise InputError("targeted oversampling needs conditional members (n_context > 0)")
    ctx = as_context(context, np.shape(context)[0], c_dim)
    cfit = fit if isinstance(fit, ConditionalWeightFit) else ConditionalWeightFit(
        (fit,), False, 1, np.zeros(1, dtype=np.int64))
    if cfit.per_bin:
        if bins is None or bins.n_bins != cfit.n_bins:
            raise InputError("per-bin weights need the fit's context bins (bins=)")
        index = bins.assign(ctx)
    else:
        index = np.zeros(ctx.shape[0], dtype=np.int64)
    weights = np.ascontiguousarray(cfit.event_weights(index, ctx.shape[0]))
    drawn = sample_conditional_mixture(members, weights, ctx, rng)
    scaled, log_scale = scale_log_rows(drawn.log_f)
    scale = np.exp(log_scale)
    used = np.unique(index)
    cov = cfit.fit_for(int(used[0])).cov if (not cfit.per_bin or used.size == 1) else None
    return TargetedEvents(x=drawn.x, context=ctx, density=cfit.density(scaled, index) * scale,
                          density_std=cfit.density_std(scaled, index) * scale,
                          bin_index=index, scaled_f=scaled, weights=weights, cov=cov,
                          sampler=drawn.diagnostics())


def oversample_region(members: Members, fit: WeightFit | ConditionalWeightFit,
                      context_pool: ArrayLike, region: Mapping[int, tuple[float, float]],
                      n: int, rng: np.random.Generator | int | None = None, *,
                      bins: ContextBins | None = None) -> TargetedEvents:
    """``n`` events ``x | c`` with c resampled from the observed contexts inside ``region``
    (:func:`region_contexts`), each with f̂ and its Eq. (3) band (:func:`oversample_conditional`).
    """
    gen = as_rng(rng)
    ctx = region_contexts(context_pool, region, n, gen)
    return oversample_conditional(members, fit, ctx, gen, bins=bins)
