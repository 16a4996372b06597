"""The null distribution of the test statistic with t_obs and a scaled χ² (paper Fig. 2).

When t_obs lies far beyond every toy (a model that fails the test), one linear axis would
squeeze the toys into a sliver: the axis is then broken, the toys keep the left panel and a
narrow right panel holds t_obs. A failed variant (t_obs NaN, no finite toys) still gets its
figure, with the reason written in it.

References:
    Badaracco et al., Step 4 (calibration with toys) and Fig. 2.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from genval.plots._base import (
    BAND2,
    RECO,
    REF,
    figure,
    finish,
    message_panel,
    num,
    safe_text,
    use_style,
    vec,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_null"]

BREAK_FACTOR = 2.5
"""Break the t axis when an observed t lies beyond this many toy ranges from the lowest t."""


def plot_null(*, t_null: ArrayLike, t_obs: float | None, z: float | None = None,
              p_value: float | None = None, chi2_scale: float | None = None,
              chi2_dof: float | None = None, z_chi2: float | None = None, label: str = "",
              t_obs_sets: ArrayLike | None = None, bins: int = 40, message: str | None = None,
              style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
              formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Null distribution of the test statistic with ``t_obs`` and a scaled χ² (paper Fig. 2).

    Args:
        t_null: toy values of t under the null (non-finite toys are left out and counted).
        t_obs: t on the test data (NaN or None: undefined, said in the figure; +inf: shown by
            an arrow).
        z, p_value: from the toys.
        chi2_scale, chi2_dof: ``a`` and ``ν`` of the fitted ``a·χ²(ν)``, drawn when given.
        z_chi2: Z from the χ² extrapolation, shown (labelled) when given.
        label: variant name for the title (e.g. "ensemble with uncertainty").
        t_obs_sets: t on each of several test sets, drawn as a second histogram (the paper
            compares the null with the observed distribution); ``t_obs`` is then their median.
        message: a note to print in the figure (e.g. why the variant failed).
    """
    t_all = vec("t_null", t_null)
    t = t_all[np.isfinite(t_all)]
    obs_all = None if t_obs_sets is None else vec("t_obs_sets", t_obs_sets)
    obs = None if obs_all is None else obs_all[np.isfinite(obs_all)]
    t_star = float("nan") if t_obs is None else float(t_obs)
    lines = _summary(t_star, z, p_value, z_chi2, t_all.size - t.size, message)
    title = f"Null distribution{': ' + safe_text(label) if label else ''}"
    with use_style(style):
        if t.size == 0:
            fig = figure(figsize=(7.5, 5.5), layout="constrained")
            ax = fig.add_subplot()
            message_panel(ax, "\n".join(["no finite toy statistics",
                                         f"t_obs = {num(t_star)}", *lines]))
            ax.set_title(title, fontsize="small")
            return finish(fig, save, formats, dpi)
        lo, hi = min(0.0, float(t.min())), float(t.max())
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        marks = [v for v in [t_star, *([] if obs is None else obs)] if math.isfinite(v)]
        far = [v for v in marks if v > lo + BREAK_FACTOR * span]
        near_hi = max([hi, *(v for v in marks if v not in far)])
        left = (lo, near_hi + 0.05 * (near_hi - lo if near_hi > lo else 1.0))
        if far:
            fig = figure(figsize=(9.0, 5.5), layout="constrained")
            ax, ax_far = fig.subplots(1, 2, sharey=True, width_ratios=[3, 1])
        else:
            fig = figure(figsize=(7.5, 5.5), layout="constrained")
            ax, ax_far = fig.add_subplot(), None
        edges = np.linspace(left[0], left[1], bins + 1)
        heights, _, _ = ax.hist(t, bins=edges, density=True, histtype="stepfilled",
                                color=BAND2, edgecolor=REF, label=f"null toys ({t.size})")
        _chi2_curve(ax, chi2_scale, chi2_dof, left)
        if math.isfinite(t_star):
            target = ax_far if t_star in far and ax_far is not None else ax
            target.axvline(t_star, color=RECO, lw=2.2, label=rf"$t_{{obs}}$ = {num(t_star)}")
        elif t_star == math.inf:
            ax.annotate(r"$t_{obs} = \infty$", xy=(1.0, 0.5), xycoords="axes fraction",
                        xytext=(0.72, 0.5), textcoords="axes fraction", color=RECO,
                        va="center", fontsize="x-small",
                        arrowprops={"arrowstyle": "->", "color": RECO, "lw": 2})
        if obs is not None and obs.size:
            _observed_sets(ax, ax_far, obs, far, edges)
        peak = float(np.max(heights)) if np.any(heights > 0) else 1.0
        # Scale to the toys, not the χ² curve (which diverges at 0 when ν < 2).
        ax.set_ylim(0, 1.6 * peak)
        ax.set_xlim(*left)
        if ax_far is not None:
            _far_panel(ax, ax_far, far, t.size)
        if lines:
            ax.text(0.97, 0.62, "\n".join(lines), transform=ax.transAxes, ha="right",
                    va="top", fontsize="x-small")
        ax.set_xlabel("t")
        ax.set_ylabel("Density")
        ax.set_title(title, fontsize="small")
        handles, labels = ax.get_legend_handles_labels()
        if ax_far is not None:
            more = ax_far.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="upper right", fontsize="x-small")
        return finish(fig, save, formats, dpi)


def _summary(t_obs: float, z: float | None, p_value: float | None, z_chi2: float | None,
             n_dropped: int, message: str | None) -> list[str]:
    """The text block: Z from the toys and from the χ², dropped toys, the message."""
    lines = []
    if math.isnan(t_obs):
        lines.append("t_obs undefined")
    if z is not None:
        p_txt = f", p = {num(p_value)}" if p_value is not None else ""
        lines.append(f"Z = {num(z, '.2f')} (toys{p_txt})" if np.isfinite(z) else
                     f"Z undefined (toys{p_txt})")
    if z_chi2 is not None:
        lines.append(rf"Z = {num(z_chi2, '.2f')} ($\chi^2$ extrapolation)")
    if n_dropped:
        lines.append(f"{n_dropped} toy{'s' if n_dropped > 1 else ''} with non-finite t left out")
    if message:
        lines += textwrap.wrap(safe_text(message), 45)
    return lines


def _chi2_curve(ax: Axes, scale: float | None, dof: float | None,
                span: tuple[float, float]) -> None:
    """The fitted ``a·χ²(ν)`` density, when its parameters are usable."""
    if scale is None or dof is None or not (math.isfinite(scale) and math.isfinite(dof)
                                            and scale > 0 and dof > 0):
        return
    grid = np.linspace(max(span[0], 1e-6), span[1], 400)
    if grid[-1] <= grid[0]:
        return
    pdf = stats.chi2.pdf(grid / scale, dof) / scale
    ax.plot(grid, pdf, color=REF, lw=1.8, label=rf"${scale:.3g}\,\chi^2(\nu={dof:.3g})$")


def _observed_sets(ax: Axes, ax_far: Axes | None, obs: NDArray[np.float64], far: list[float],
                   edges: NDArray[np.float64]) -> None:
    """t on every test set: a histogram on one axis, ticks on a broken one."""
    label = f"t on {obs.size} test sets"
    if ax_far is None:
        ax.hist(obs, bins=edges, density=True, histtype="step", color=RECO, lw=1.6, ls="--",
                label=label)
        return
    beyond = np.isin(obs, far)
    for target, values in ((ax, obs[~beyond]), (ax_far, obs[beyond])):
        if values.size:
            target.vlines(values, 0, 0.08, transform=target.get_xaxis_transform(), color=RECO,
                          lw=1.6, ls="--", label=label)
            label = "_"  # one legend entry


def _far_panel(ax: Axes, ax_far: Axes, far: list[float], n_toys: int) -> None:
    """The right panel of a broken axis around the observed values beyond the toys."""
    lo, hi = min(far), max(far)
    pad = max(0.1 * (hi - lo), 0.03 * abs(hi), 1e-9)
    ax_far.set_xlim(lo - pad, hi + pad)
    ax_far.set_title(f"beyond all {n_toys} toys", fontsize="x-small")
    from matplotlib.ticker import MaxNLocator

    ax_far.xaxis.set_major_locator(MaxNLocator(nbins=2))
    # The break: hide the facing spines and draw the usual diagonal marks.
    ax.spines["right"].set_visible(False)
    ax_far.spines["left"].set_visible(False)
    ax_far.tick_params(left=False, labelleft=False, which="both")
    marks = {"marker": [(-1, -1.5), (1, 1.5)], "markersize": 10, "linestyle": "none",
             "color": "k", "mec": "k", "mew": 1, "clip_on": False}
    ax.plot([1, 1], [0, 1], transform=ax.transAxes, **marks)
    ax_far.plot([0, 0], [0, 1], transform=ax_far.transAxes, **marks)
