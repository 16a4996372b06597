"""The paper's toy study and its published numbers, in one place.

The toy is the 2D diagonal Gaussian of Badaracco et al., Eq. (6); a run that generates it (and
only such a run) can be compared with the paper's results, which the report and the figures
show beside genval's own.

References:
    Badaracco et al., Eq. (6) (the toy density), Sec. 4 and Fig. 2 (Z = 20.29, 4.13, 0.92 for a
    single flow, the frozen ensemble and the ensemble with uncertainty) and App. A, Fig. 3
    (coverage 61.3 % and 68.7 %).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genval.config import Config

__all__ = ["PAPER_TOY_MEAN", "PAPER_TOY_STD", "PAPER_Z", "PAPER_COVERAGE", "PAPER_KERNEL_BASIS",
           "is_paper_toy"]

PAPER_TOY_MEAN: tuple[float, ...] = (-0.5, 0.6)
"""Per-feature mean of the paper's 2D Gaussian toy (Eq. 6)."""

PAPER_TOY_STD: tuple[float, ...] = (0.25, 0.4)
"""Per-feature standard deviation of the paper's 2D Gaussian toy (Eq. 6)."""

PAPER_KERNEL_BASIS: dict[str, int | float | str] = {"n_kernels": 100, "sigma": 0.05,
                                                    "kernel_units": "raw"}
"""The paper's kernel basis (Step 4) as ``gof`` config keys: K = 100 Gaussian kernels of
σ = 0.05 in feature units. The demo presets keep it (their Z compare with the paper's);
genval's own default measures σ in standardised units (docs/choosing-kernels.md)."""

PAPER_Z: dict[str, tuple[float, float, float]] = {
    "single": (20.29, 0.10, 0.10),
    "frozen": (4.13, 0.12, 0.13),
    "ensemble": (0.92, 0.20, 0.14),
}
"""The paper's Z per variant as (median, +up, −down) (Sec. 4, Fig. 2)."""

PAPER_COVERAGE: tuple[float, ...] = (0.613, 0.687)
"""The paper's 1σ coverage of the first moment per feature of the 2D toy (App. A, Fig. 3)."""


def is_paper_toy(config: Config) -> bool:
    """Whether ``config`` generates the paper's 2D Gaussian (then its numbers are comparable)."""
    gen = config.data.generate
    return (config.data.path is None and gen.mean == list(PAPER_TOY_MEAN)
            and gen.std == list(PAPER_TOY_STD))
