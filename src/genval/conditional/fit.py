"""The w_i f_i fit on conditional densities: shared weights, or one set per context bin.

With conditional members every row of the density matrix is ``F[n, k] = f_k(x_n | c_n)``.
Each ``f_k(· | c)`` integrates to one in x for every c, so the extended likelihood of Eq. (1),

    L(w) = −(1/N) Σ_n log(F_n · w) + Σ_k w_k ,

is still the right one: its normalisation term ``Σ_k w_k`` is ``∫ f(x | c; w) dx`` at every
context, and at the optimum ``Σ ŵ = 1`` and ``mean_n(F_nk / f_n) = 1`` as before. The paper's
formulation shares one weight vector across all contexts (``shared``, the default):
:func:`genval.wifi.fit_weights` on the conditional rows, with the sandwich of Eq. (2).

With ``per_bin=True`` each context bin b gets its own weights ŵ_b, fitted on the weight-fit
events of that bin alone: a mixture that may change its composition with the context (members
good at low pT, others at high pT). The bins hold disjoint events, so the estimates are
independent and the covariance of the stacked weights is block-diagonal, each block the
bin's own sandwich (Eq. 2). Each bin needs more events than members.

References:
    Badaracco et al., Eqs. (1)–(3) and the conclusions (conditional models).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError
from genval.wifi import WeightFit, fit_weights

__all__ = ["ConditionalWeightFit", "fit_conditional_weights"]


@dataclass(frozen=True, repr=False)
class ConditionalWeightFit:
    """Weights of the w_i f_i mixture of conditional members, shared or per context bin.

    Attributes:
        fits: one :class:`~genval.wifi.WeightFit` (shared weights) or one per bin.
        per_bin: whether the weights differ per bin.
        n_bins: context bins (1 when no bins were given).
        bin_counts: (n_bins,) weight-fit events per bin.
    """

    fits: tuple[WeightFit, ...]
    per_bin: bool
    n_bins: int
    bin_counts: NDArray[np.int64]

    @property
    def n_members(self) -> int:
        return self.fits[0].n_members

    @property
    def converged(self) -> bool:
        return all(f.converged for f in self.fits)

    def fit_for(self, b: int) -> WeightFit:
        """The fit that describes bin ``b`` (the shared fit for every bin when shared)."""
        if not 0 <= b < self.n_bins:
            raise InputError(f"bin {b} out of range 0..{self.n_bins - 1}")
        return self.fits[b] if self.per_bin else self.fits[0]

    @property
    def weights(self) -> NDArray[np.float64]:
        """ŵ: (M,) when shared, (n_bins, M) per bin."""
        return (np.stack([f.weights for f in self.fits]) if self.per_bin
                else self.fits[0].weights)

    @property
    def cov(self) -> NDArray[np.float64]:
        """Cov(ŵ) (Eq. 2): (M, M) when shared; per bin, the block-diagonal covariance of the
        stacked weights (n_bins · M, n_bins · M) -- the bins' estimates are independent."""
        if not self.per_bin:
            return self.fits[0].cov
        m = self.n_members
        out = np.zeros((self.n_bins * m, self.n_bins * m))
        for b, f in enumerate(self.fits):
            out[b * m:(b + 1) * m, b * m:(b + 1) * m] = f.cov
        return out

    def _bins_of(self, bin_index: ArrayLike | None, n: int) -> NDArray[np.int64]:
        if bin_index is None:
            if self.per_bin:
                raise InputError("per-bin weights need the bin of every event (bin_index)")
            return np.zeros(n, dtype=np.int64)
        idx = np.asarray(bin_index)
        if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"bin_index must be ({n},) integers, got {idx.shape} {idx.dtype}")
        if n and (idx.min() < 0 or idx.max() >= self.n_bins):
            raise InputError(f"bin_index must lie in 0..{self.n_bins - 1}")
        return idx.astype(np.int64)

    def event_weights(self, bin_index: ArrayLike | None, n: int) -> NDArray[np.float64]:
        """The weights that describe each event (n, M), from its bin."""
        idx = self._bins_of(bin_index, n)
        return self.weights[idx] if self.per_bin else np.broadcast_to(self.weights,
                                                                     (n, self.n_members))

    def density(self, F: ArrayLike, bin_index: ArrayLike | None = None) -> NDArray[np.float64]:
        """``f̂(x_n | c_n) = F_n · ŵ_{b(n)}`` (N,) from conditional member densities F (N, M)."""
        return self._per_bin(F, bin_index, WeightFit.density)

    def density_std(self, F: ArrayLike, bin_index: ArrayLike | None = None
                    ) -> NDArray[np.float64]:
        """Eq. (3) band ``σ(x_n | c_n) = sqrt(F_nᵀ Cov(ŵ_{b(n)}) F_n)`` (N,)."""
        return self._per_bin(F, bin_index, WeightFit.density_std)

    def _per_bin(self, F: ArrayLike, bin_index: ArrayLike | None,
                 evaluate: Callable[[WeightFit, NDArray[np.float64]], NDArray[np.float64]]
                 ) -> NDArray[np.float64]:
        """``evaluate(fit of bin b, rows of bin b)`` for every bin, back in row order."""
        arr = np.asarray(F, dtype=np.float64)
        idx = self._bins_of(bin_index, arr.shape[0])
        out = np.empty(arr.shape[0])
        for b in np.unique(idx):
            sel = idx == b
            out[sel] = evaluate(self.fit_for(int(b)), arr[sel])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every fit's :meth:`~genval.wifi.WeightFit.to_dict`, with the binning."""
        return {"per_bin": self.per_bin, "n_bins": self.n_bins,
                "bin_counts": self.bin_counts.tolist(),
                "fits": [f.to_dict() for f in self.fits]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionalWeightFit:
        return cls(tuple(WeightFit.from_dict(f) for f in data["fits"]), bool(data["per_bin"]),
                   int(data["n_bins"]), np.asarray(data["bin_counts"], dtype=np.int64))

    def __repr__(self) -> str:
        kind = (f"per-bin weights in {self.n_bins} bins" if self.per_bin
                else f"shared weights over {self.n_bins} bin(s)")
        lines = [f"ConditionalWeightFit(M={self.n_members}, {kind}, events per bin "
                 f"{self.bin_counts.tolist()})"]
        for b, f in enumerate(self.fits):
            head = f"bin {b}" if self.per_bin else "shared"
            lines.append(f"  {head}: " + repr(f).replace("\n", "\n    "))
        return "\n".join(lines)


def fit_conditional_weights(F: ArrayLike, bin_index: ArrayLike | None = None, *,
                            n_bins: int | None = None, per_bin: bool = False,
                            log: bool = False, event_weights: ArrayLike | None = None,
                            **options: Any) -> ConditionalWeightFit:
    """Fit the mixture weights on conditional rows ``F[n, k] = f_k(x_n | c_n)`` (Eqs. 1–2).

    Args:
        F: (N, M) conditional member densities on the weight-fit events (log-densities with
            ``log=True``).
        bin_index: (N,) context bin of each event (``ContextBins.assign``); needed with
            ``per_bin``, otherwise only counted.
        n_bins: number of bins (default ``max(bin_index) + 1``; 1 without bins).
        per_bin: one weight vector per bin instead of one shared by every context.
        log: F holds log-densities.
        event_weights: optional (N,) event weights (:func:`genval.wifi.fit_weights`).
        **options: passed to :func:`genval.wifi.fit_weights` (``max_iter``, ``tol``, ``w0``).

    Returns:
        :class:`ConditionalWeightFit`.

    Raises:
        InputError: malformed input, a bin without events or (per bin) with no more events
            than members; anything :func:`genval.wifi.fit_weights` raises.

    Warns:
        whatever :func:`genval.wifi.fit_weights` warns, prefixed by the bin for per-bin fits.
    """
    arr = np.asarray(F, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"F must be (N, M), got shape {arr.shape}")
    n = arr.shape[0]
    if bin_index is None:
        if per_bin:
            raise InputError("per_bin=True needs the bin of every event (bin_index)")
        idx, bins = np.zeros(n, dtype=np.int64), 1
    else:
        idx = np.asarray(bin_index)
        if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer) or (
                n and idx.min() < 0):
            raise InputError(f"bin_index must be ({n},) non-negative integers")
        bins = int(n_bins) if n_bins is not None else int(idx.max()) + 1 if n else 1
        if n and idx.max() >= bins:
            raise InputError(f"bin_index reaches {idx.max()} but n_bins is {bins}")
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    s = None if event_weights is None else np.asarray(event_weights, dtype=np.float64)
    if s is not None and s.shape != (n,):
        raise InputError(f"event_weights must be ({n},), got {s.shape}")
    if not per_bin:
        fit = fit_weights(arr, log=log, event_weights=s, **options)
        return ConditionalWeightFit((fit,), False, bins, counts)
    fits = []
    for b in range(bins):
        sel = idx == b
        if counts[b] <= arr.shape[1]:
            raise InputError(f"context bin {b} holds {counts[b]} weight-fit events, not more "
                             f"than the {arr.shape[1]} members: per-bin weights need more "
                             "(merge bins, or share the weights)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fits.append(fit_weights(arr[sel], log=log,
                                    event_weights=None if s is None else s[sel], **options))
        for w in caught:
            warnings.warn(f"context bin {b}: {w.message}", w.category, stacklevel=2)
    return ConditionalWeightFit(tuple(fits), True, bins, counts)
