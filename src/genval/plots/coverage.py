"""Coverage of an observable per feature across synthetic data sets (paper Fig. 3, Eq. 4).

References:
    Badaracco et al., Eq. (4), App. A and Fig. 3.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from genval.coverage import COVERAGE_CL, coverage_interval
from genval.errors import InputError
from genval.plots._base import (
    BAND2,
    RECO,
    REF,
    figure,
    finish,
    grid_shape,
    message_panel,
    safe_text,
    use_style,
    vec,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_coverage"]


def plot_coverage(*, estimates: ArrayLike, sigmas: ArrayLike, truth: ArrayLike,
                  names: Sequence[str] | None = None, z_alpha: float = 1.0,
                  reference: Sequence[float] | None = None, bins: int = 25,
                  max_columns: int = 4, style: str | None = "CMS",
                  save: str | os.PathLike[str] | None = None,
                  formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Coverage of an observable per feature across synthetic datasets (paper Fig. 3, Eq. 4).

    Each panel shows the pulls ``(Ô − O*) / σ_Ô`` with the standard normal they should follow,
    the ``|pull| < z_α`` window, and the empirical coverage with its Clopper–Pearson interval
    (:func:`genval.coverage.coverage_interval`, as in the report) beside the nominal level
    (and the paper's value when ``reference`` is given). Data sets whose pull is not finite
    (σ ≤ 0, NaN) are left out and counted in the panel.

    Args:
        estimates: (S, D) estimates Ô per dataset and feature.
        sigmas: (S, D) their propagated σ.
        truth: (D,) true values O*.
        names: feature names (or display labels).
        z_alpha: the standard-normal quantile of the interval (1 for 68.3 %).
        reference: (D,) coverages to show for comparison, as fractions (paper: 0.613, 0.687).
        max_columns: panels per row.
    """
    est = np.asarray(estimates, dtype=np.float64)
    est = est.reshape(-1, 1) if est.ndim == 1 else est
    sig = np.asarray(sigmas, dtype=np.float64)
    sig = sig.reshape(-1, 1) if sig.ndim == 1 else sig
    if est.ndim != 2 or est.shape != sig.shape:
        raise InputError(f"estimates {est.shape} and sigmas {sig.shape} differ in shape")
    d = est.shape[1]
    tru = vec("truth", truth, d)
    labels = list(names) if names is not None else [f"feature {i + 1}" for i in range(d)]
    if len(labels) != d or (reference is not None and len(reference) != d):
        raise InputError(f"names and reference need one entry per feature ({d})")
    nominal = 2 * stats.norm.cdf(z_alpha) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = np.where(sig > 0, (est - tru) / sig, np.nan)
    rows, cols = grid_shape(d, max_columns)
    with use_style(style):
        fig = figure(figsize=(7.0 * cols, 5.0 * rows), layout="constrained")
        if d == 0:
            message_panel(fig.add_subplot(), "no features to show")
            return finish(fig, save, formats, dpi)
        axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
        for ax in axes[d:]:
            ax.set_visible(False)
        edges = np.linspace(-4, 4, bins + 1)
        grid = np.linspace(-4, 4, 300)
        for j, ax in enumerate(axes[:d]):
            p = pulls[:, j][np.isfinite(pulls[:, j])]
            ax.set_title(rf"{safe_text(labels[j])} ($O^\star$ = {tru[j]:.3g})",
                         fontsize="medium")
            ax.set_xlabel(r"pull $(\hat O - O^\star)/\sigma_{\hat O}$")
            ax.set_ylabel("Density")
            if p.size == 0:
                message_panel(ax, "no data set with a finite pull")
                continue
            covered = np.abs(p) < z_alpha
            ax.axvspan(-z_alpha, z_alpha, color=BAND2, alpha=0.6, lw=0)
            heights, _, _ = ax.hist(np.clip(p, -4, 4), bins=edges, density=True,
                                    histtype="step", color=REF, lw=1.8,
                                    label=f"{p.size} datasets")
            ax.plot(grid, stats.norm.pdf(grid), color=RECO, lw=1.4, ls="--", label="N(0, 1)")
            text = _coverage_text(int(covered.sum()), p.size, nominal,
                                  None if reference is None else reference[j])
            if p.size < est.shape[0]:
                text += f"\n{est.shape[0] - p.size} non-finite left out"
            ax.text(0.03, 0.97, text, transform=ax.transAxes, ha="left", va="top",
                    fontsize="x-small")
            ax.set_ylim(0, 1.75 * max(float(np.max(heights)), 0.4))  # room for text, legend
            ax.legend(loc="upper right", fontsize="x-small")
        return finish(fig, save, formats, dpi)


def _coverage_text(covered: int, n: int, nominal: float, reference: float | None) -> str:
    """Covered fraction with its Clopper–Pearson interval, the nominal level and the paper's."""
    frac = covered / n
    lower, upper = coverage_interval(covered, n)
    text = (f"coverage {100 * frac:.1f}$^{{+{100 * (upper - frac):.1f}}}"
            f"_{{-{100 * (frac - lower):.1f}}}$ % ({100 * COVERAGE_CL:.1f} % CL)\n"
            f"nominal {100 * nominal:.1f} %")
    if reference is not None:
        text += f"\npaper {100 * reference:.1f} %"
    return text
