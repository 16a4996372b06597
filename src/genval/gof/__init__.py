"""Learned likelihood-ratio goodness-of-fit test (paper Step 4, Eq. 5), exactly profiled.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 4 and Eq. (5); DESIGN.md "GoF", "Calibration", "Speed of toys".
"""

from __future__ import annotations

from genval.gof.kernels import KernelBasis
from genval.gof.newton import Solution, minimize_convex
from genval.gof.profile import LAMBDA_NET, Constraint
from genval.gof.statistic import LRStatistic, test_statistic

__all__ = [
    "KernelBasis",
    "test_statistic",
    "LRStatistic",
    "Constraint",
    "LAMBDA_NET",
    "Solution",
    "minimize_convex",
]
