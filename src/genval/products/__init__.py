"""What a fitted w_i f_i ensemble produces: observables with errors, oversampled events and
binned reference fractions.

``observables``: ``Ô ± σ`` for integrals of the mixture (paper Eqs. 3-4, Appendix A);
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
    MemberIntegrals,
    ObservableEstimate,
    estimate_observable,
    member_integrals,
    observable,
)
from genval.products.oversampling import OversampledEvents, oversample

__all__ = [
    "MemberIntegrals",
    "ObservableEstimate",
    "OversampledEvents",
    "member_integrals",
    "estimate_observable",
    "observable",
    "oversample",
    "BinnedReference",
    "bin_integrals",
    "binned_reference",
    "histogram_counts",
]
