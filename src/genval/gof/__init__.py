"""Learned likelihood-ratio goodness-of-fit test (paper Step 4, Eq. 5), exactly profiled.

``KernelBasis`` builds the alternative's kernels, ``test_statistic`` computes
``t = 2 (min NLL0 − min NLL1)`` on (F, G) with exact Newton profiles, ``goodness_of_fit``
calibrates it with toys from f(x; ŵ) and returns p, Z and a scaled-χ² extrapolation.
``prepare`` evaluates the test events and the toy pools once for several variants.
``conditional_goodness_of_fit`` runs the test within each context bin of conditional members
and combines the evidence (``gof.conditional``).
``ProfileSettings`` and ``GoFSettings`` gather their settings.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 4 and Eq. (5).
"""

from __future__ import annotations

from genval.gof.conditional import (
    ConditionalGoFResult,
    bin_kernel_bases,
    conditional_goodness_of_fit,
    look_elsewhere,
)
from genval.gof.constraint import Constraint
from genval.gof.context_kernels import ContextKernels
from genval.gof.kernels import (
    MIN_KERNEL_EVENTS,
    KernelBasis,
    kernel_basis_text,
    kernel_effective_events,
)
from genval.gof.result import (
    MAX_FAILED_FRACTION,
    ChiSquareFit,
    GoFFailure,
    GoFResult,
    ZSummary,
    clopper_pearson,
    fit_scaled_chi2,
    merge_results,
    summarize_z,
)
from genval.gof.statistic import (
    BARRIER,
    LAMBDA_NET,
    VARIANT_LABELS,
    VARIANTS,
    LRStatistic,
    ProfileSettings,
    test_statistic,
)
from genval.gof.toys import (
    GoFSettings,
    PoolRows,
    PreparedGoF,
    ToyPool,
    draw_pool,
    goodness_of_fit,
    observed_statistic,
    prepare,
    require_unweighted,
    run_toys,
)
from genval.newton import NewtonOptions, Solution, minimize_convex
from genval.row_scaling import ScaledRows, scale_rows

__all__ = [
    "KernelBasis",
    "kernel_basis_text",
    "kernel_effective_events",
    "MIN_KERNEL_EVENTS",
    "test_statistic",
    "goodness_of_fit",
    "observed_statistic",
    "conditional_goodness_of_fit",
    "ConditionalGoFResult",
    "look_elsewhere",
    "bin_kernel_bases",
    "ContextKernels",
    "prepare",
    "require_unweighted",
    "PreparedGoF",
    "PoolRows",
    "merge_results",
    "summarize_z",
    "GoFResult",
    "GoFFailure",
    "MAX_FAILED_FRACTION",
    "LRStatistic",
    "ZSummary",
    "ChiSquareFit",
    "fit_scaled_chi2",
    "clopper_pearson",
    "Constraint",
    "ToyPool",
    "draw_pool",
    "run_toys",
    "NewtonOptions",
    "Solution",
    "minimize_convex",
    "LAMBDA_NET",
    "BARRIER",
    "VARIANTS",
    "VARIANT_LABELS",
    "ProfileSettings",
    "GoFSettings",
    "ScaledRows",
    "scale_rows",
]
