"""2D views of data against the fitted density f(x; ŵ) for chosen feature pairs.

One row per pair: the DATA histogram, the reference expectation ``N ∫_b f(x; ŵ)`` on the same
colour scale, and the pull ``(DATA − REF) / σ`` per bin with σ² = the Poisson variance (or
Σw² for weighted events) plus the reference's own variance of Eq. (3). The centres of the
alternative's strongest kernels can be marked on the pulls: where the learned test found
that the data depart from the model.

References:
    Badaracco et al., Eq. (3) (the reference's σ) and Eq. (5) (the kernels of the alternative).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError
from genval.plots._base import (
    axis_label,
    figure,
    finish,
    finite,
    message_panel,
    safe_text,
    use_style,
    vec,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PairHistogram", "plot_pairs"]

MIN_EXPECTED = 1.0
"""Bins where REF expects fewer events show no pull (the normal approximation fails there)."""


@dataclass(frozen=True)
class PairHistogram:
    """The binned inputs of one row of :func:`plot_pairs`.

    Attributes:
        names: the two feature names (x, y).
        x_edges, y_edges: (Bx+1,), (By+1,) bin edges.
        ref: (Bx, By) fraction of f(x; ŵ) in each bin.
        ref_std: (Bx, By) its σ from Eq. (3).
        data: (Bx, By) counts, or sums of event weights when ``data_sumw2`` is given.
        data_sumw2: (Bx, By) sums of squared event weights; None: ``data`` are counts.
        n_data: the (weighted) number of events ``ref`` is a fraction of; None: ``data.sum()``.
        labels: axis labels (mathtext allowed); None: the names.
        units: the features' units.
        markers: (K, 3) rows ``(x, y, strength)``: positions to mark on the pulls with their
            signed strength (e.g. the kernels' ``N a_k``: ▲ where the alternative adds events,
            ▼ where it removes them), numbered in the given order.
        log: logarithmic colour scale for DATA and REF; None: when the bins reach 100 events
            (two decades above one).
    """

    names: tuple[str, str]
    x_edges: ArrayLike
    y_edges: ArrayLike
    ref: ArrayLike
    ref_std: ArrayLike
    data: ArrayLike
    data_sumw2: ArrayLike | None = None
    n_data: float | None = None
    labels: tuple[str, str] | None = None
    units: tuple[str, str] = ("", "")
    markers: ArrayLike | None = None
    log: bool | None = None


def plot_pairs(pairs: Sequence[PairHistogram], *, pull_range: float = 4.0,
               style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
               formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """DATA, REF and their pull in 2D, one row per pair of features.

    Args:
        pairs: one :class:`PairHistogram` per row.
        pull_range: the pull colour scale spans ``±pull_range`` (larger pulls saturate).
        style: mplhep style name, or ``None`` for matplotlib defaults.
        save: path stem to write ``.png``/``.pdf`` to.
    """
    with use_style(style):
        fig = figure(figsize=(19.5, 5.6 * max(len(pairs), 1)), layout="constrained")
        if not pairs:
            message_panel(fig.add_subplot(), "no feature pairs to show")
            return finish(fig, save, formats, dpi)
        axes = fig.subplots(len(pairs), 3, squeeze=False)
        for row, pair in enumerate(pairs):
            _row(fig, axes[row], pair, pull_range=pull_range, titles=row == 0)
        return finish(fig, save, formats, dpi)


def _grid(name: str, a: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    arr = np.array(a, dtype=np.float64)
    if arr.shape != shape:
        raise InputError(f"{name} has shape {arr.shape}, expected {shape}")
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _row(fig: Figure, axes: Sequence[Axes], pair: PairHistogram, *, pull_range: float,
         titles: bool) -> None:
    from matplotlib.colors import LogNorm, Normalize

    xe, ye = vec("x_edges", pair.x_edges), vec("y_edges", pair.y_edges)
    labels = pair.labels or pair.names
    xlabel, ylabel = (axis_label(labels[i], pair.units[i]) for i in range(2))
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if titles:
        for ax, text in zip(axes, ("DATA", r"REF: $N\,\int_{bin} f(x;\hat w)$",
                                   r"pull (DATA $-$ REF) / $\sigma$"), strict=True):
            ax.set_title(text, fontsize="small")
    if not all(e.size >= 2 and np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)
               for e in (xe, ye)):
        for ax in axes:
            message_panel(ax, f"{pair.names[0]} vs {pair.names[1]}: no valid bin edges")
        return
    shape = (xe.size - 1, ye.size - 1)
    ref, ref_std = _grid("ref", pair.ref, shape), _grid("ref_std", pair.ref_std, shape)
    data = _grid("data", pair.data, shape)
    sumw2 = None if pair.data_sumw2 is None else _grid("data_sumw2", pair.data_sumw2, shape)
    n_total = pair.n_data if pair.n_data is not None and np.isfinite(pair.n_data) else float(
        np.nansum(data))
    expected = ref * n_total
    values = finite(np.concatenate([data.ravel(), expected.ravel()]))
    positive = values[values > 0]
    peak = float(positive.max()) if positive.size else 1.0
    low = float(positive.min()) if positive.size else 1.0
    # Log colours when the bins span two decades above one event (the first decade of
    # counts, 1-10, reads better on a linear scale).
    log = pair.log if pair.log is not None else peak >= 100 * max(low, 1.0)
    norm = LogNorm(vmin=max(low, 1e-3 * peak), vmax=peak) if log else Normalize(0.0, peak)
    cmap = _cmap("viridis")
    for ax, grid in zip(axes[:2], (data, expected), strict=True):
        shown = np.ma.masked_where(~np.isfinite(grid) | ((grid <= 0) if log else False), grid)
        mesh = ax.pcolormesh(xe, ye, shown.T, norm=norm, cmap=cmap, rasterized=True)
    fig.colorbar(mesh, ax=list(axes[:2]), label="Events / bin", pad=0.01)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (expected if sumw2 is None else sumw2) + (n_total * np.nan_to_num(ref_std)) ** 2
        pull = np.where((expected >= MIN_EXPECTED) & (var > 0), (data - expected) / np.sqrt(var),
                        np.nan)
    pulls = np.ma.masked_invalid(pull)
    mesh = axes[2].pcolormesh(xe, ye, pulls.T, cmap=_cmap("RdBu_r"), vmin=-pull_range,
                              vmax=pull_range, rasterized=True)
    fig.colorbar(mesh, ax=axes[2], label="pull", pad=0.01)
    if pulls.count():
        worst = float(np.nanmax(np.abs(pull)))
        axes[2].text(0.02, 0.98, f"max |pull| = {worst:.1f}\n{pulls.count()} bins with "
                     f"REF ≥ {MIN_EXPECTED:g}", transform=axes[2].transAxes, ha="left",
                     va="top", fontsize="xx-small",
                     bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
    else:
        message_panel(axes[2], f"no bin where REF expects ≥ {MIN_EXPECTED:g} event")
    if pair.markers is not None:
        _markers(axes[2], np.asarray(pair.markers, dtype=np.float64).reshape(-1, 3))
    for ax in axes:
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#e6e6e6")  # empty bins: grey


def _markers(ax: Axes, markers: NDArray[np.float64]) -> None:
    """▲/▼ at the strongest kernels' centres, numbered by rank (non-finite rows skipped)."""
    for rank, (x, y, strength) in enumerate(markers, start=1):
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(strength)):
            continue
        ax.plot(x, y, "^" if strength > 0 else "v", ms=13, mfc="gold", mec="black", mew=1.2,
                clip_on=True)
        ax.annotate(safe_text(str(rank)), (x, y), xytext=(7, 5), textcoords="offset points",
                    fontsize="xx-small", fontweight="bold", clip_on=True)
