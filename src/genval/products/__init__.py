"""What a fitted w_i f_i ensemble produces: observables with errors, oversampled events and
binned reference fractions.

``observables``: ``Ô ± σ`` for integrals of the mixture from one common sample of f(x; ŵ)
with importance ratios (paper Eqs. 3-4, Appendix A);
``oversampling``: exact draws from f(x; ŵ) with the density and its Eq. (3) band;
``binned``: bin integrals from one importance-weighted pool (paper Fig. 1).

References:
    Badaracco et al., Eqs. (3) and (4), Fig. 1, Appendix A.
"""

from __future__ import annotations

from genval.products.binned import (
    BinnedReference,
    bin_integrals,
    binned_reference,
    histogram_counts,
)
from genval.products.observables import (
    DEFAULT_N_SAMPLES,
    MemberIntegrals,
    ObservableEstimate,
    common_sample_integrals,
    estimate_observable,
    importance_ratios,
    member_integrals,
    observable,
)
from genval.products.oversampling import OversampledEvents, oversample

__all__ = [
    "MemberIntegrals",
    "ObservableEstimate",
    "OversampledEvents",
    "DEFAULT_N_SAMPLES",
    "common_sample_integrals",
    "importance_ratios",
    "member_integrals",
    "estimate_observable",
    "observable",
    "oversample",
    "BinnedReference",
    "bin_integrals",
    "binned_reference",
    "histogram_counts",
]
