"""Conditional ensembles ``f(x | c) = Σ_k w_k f_k(x | c)``: the paper's method within contexts.

Conditional members (``n_context > 0``: :class:`genval.flows.FlowEnsemble`,
:class:`genval.members.KDEMembers` with ``context=``,
:class:`genval.members.ConditionalGaussianMembers`, ...) give rows ``f_k(x_n | c_n)``. On them:

``bins``: :class:`ContextBins`, the context regions (features and edges);
``sampling``: :func:`sample_conditional_mixture`, exact draws ``x | c`` at given contexts;
``fit``: :func:`fit_conditional_weights`, Eqs. (1)–(2) with weights shared across contexts
or one set per bin;
``oversampling``: :func:`oversample_region`, targeted events ``x | c`` in a region of c with
the Eq. (3) band.

The test within each context bin, combined, is :func:`genval.gof.conditional_goodness_of_fit`.

References:
    Badaracco et al., Eqs. (1)–(5) and the conclusions (conditional generative models,
    targeted, uncertainty-aware oversampling).
"""

from __future__ import annotations

from genval.conditional.bins import ContextBins
from genval.conditional.fit import ConditionalWeightFit, fit_conditional_weights
from genval.conditional.oversampling import (
    TargetedEvents,
    oversample_conditional,
    oversample_region,
    region_contexts,
)
from genval.conditional.sampling import (
    ConditionalSample,
    row_weights,
    sample_conditional_mixture,
)

__all__ = [
    "ContextBins",
    "ConditionalWeightFit",
    "fit_conditional_weights",
    "ConditionalSample",
    "sample_conditional_mixture",
    "row_weights",
    "TargetedEvents",
    "oversample_conditional",
    "oversample_region",
    "region_contexts",
]
