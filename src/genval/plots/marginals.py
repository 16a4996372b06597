"""Per-feature marginals of REF, DATA and LRT RECO with a ratio panel (paper Fig. 1).

The panels fill a grid at most ``max_columns`` wide, so eight features make two rows of four
instead of one row 48 inches wide. DATA points carry exact Poisson (Garwood) intervals, or
``√Σw²`` for weighted events; a steeply falling spectrum gets a log y axis.

References:
    Badaracco et al., Fig. 1 and Eq. (3) (the ±1σ and ±2σ bands of the reference).
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
    BAND1,
    BAND2,
    DATA,
    RECO,
    REF,
    axis_label,
    figure,
    finish,
    finite,
    grid_shape,
    message_panel,
    use_style,
    vec,
)
from genval.stats import garwood_interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MarginalHistogram", "plot_marginals", "prefers_log_y", "nice_edges",
           "data_errors"]

LOG_Y_LEVEL = 0.05
LOG_Y_FRACTION = 1 / 3
"""A spectrum with at least ``LOG_Y_FRACTION`` of its bins below ``LOG_Y_LEVEL`` of its highest
bin gets a log y axis (:func:`prefers_log_y`)."""

_PANEL = (6.0, 6.5)  # inches per feature (top and ratio panel) in the mplhep CMS style


@dataclass(frozen=True)
class MarginalHistogram:
    """The binned inputs of one panel of :func:`plot_marginals`.

    Attributes:
        name: feature name.
        edges: (B+1,) bin edges.
        ref: (B,) reference fraction of events per bin, ``∫_b f(x; ŵ)``.
        ref_std: (B,) its σ from Eq. (3).
        data: (B,) observed counts, or sums of event weights when ``data_sumw2`` is given.
        reco: (B,) optional LRT reconstruction fraction per bin, ``∫_b (f(x; φ*) + g(x; a*))``.
        data_sumw2: (B,) sums of squared event weights per bin for weighted events (errors
            ``√Σw²``); None: ``data`` are counts, with Garwood intervals.
        n_data: the (weighted) number of events ``ref`` is a fraction of, including those
            outside the bins; None: ``data.sum()``.
        label: axis label (matplotlib mathtext allowed); None: ``name``.
        unit: unit of the feature (``"GeV"``), shown as ``label [unit]`` and in the bin width.
        log_y: log y axis for this panel; None: decided by :func:`prefers_log_y`.
    """

    name: str
    edges: ArrayLike
    ref: ArrayLike
    ref_std: ArrayLike
    data: ArrayLike
    reco: ArrayLike | None = None
    data_sumw2: ArrayLike | None = None
    n_data: float | None = None
    label: str | None = None
    unit: str = ""
    log_y: bool | None = None


def prefers_log_y(heights: ArrayLike, *, level: float = LOG_Y_LEVEL,
                  fraction: float = LOG_Y_FRACTION) -> bool:
    """Whether a histogram falls steeply enough to be shown on a log y axis.

    True when at least ``fraction`` (1/3) of its bins hold less than ``level`` (5 %) of its
    highest bin, i.e. when a linear axis would leave a third of the range visibly empty:
    exponential and power-law spectra (pT, m_jj) and masses with long tails over their
    0.1–99.9 % range are (40–80 % of their bins), a Gaussian (20 %), two Gaussians or a flat
    distribution are not. Non-finite bins are ignored; nothing positive gives False.
    """
    h = finite(vec("heights", heights))
    if h.size == 0 or not np.max(h) > 0:
        return False
    return bool(np.mean(h < level * np.max(h)) >= fraction)


def nice_edges(lo: float, hi: float, bins: int) -> NDArray[np.float64]:
    """About ``bins`` equal bins (0.7–1.4 times as many) covering ``[lo, hi]`` with a round width
    (1, 2, 2.5 or 5 times a power of ten) and edges on multiples of it: "Events / 20 GeV",
    not "/ 19.1 GeV".

    Non-finite or empty ranges give ``bins`` unit-wide bins around the finite end (or 0).
    """
    if bins < 1:
        raise InputError(f"bins must be at least 1, got {bins}")
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        centre = lo if np.isfinite(lo) else hi if np.isfinite(hi) else 0.0
        return centre + np.linspace(-0.5, 0.5, bins + 1)
    raw = (hi - lo) / bins
    power = 10.0 ** np.floor(np.log10(raw))
    # The round width nearest to the requested one (in ratio): between ~0.7 and ~1.4 bins.
    width = power * min((1.0, 2.0, 2.5, 5.0, 10.0), key=lambda m: abs(np.log(m * power / raw)))
    start = np.floor(lo / width) * width
    n = max(1, int(np.ceil((hi - start) / width - 1e-9)))
    return start + width * np.arange(n + 1)


def data_errors(data: ArrayLike, sumw2: ArrayLike | None = None
                ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper error bar lengths of histogram points.

    Counts (``sumw2`` None): the exact Poisson (Garwood) 68.27 % interval
    (:func:`genval.stats.garwood_interval`); weighted events: ``√Σw²`` on both sides.
    Non-finite bins get NaN (not drawn).

    Raises:
        InputError: counts that are negative or not integers (weighted events need ``sumw2``).
    """
    d = vec("data", data)
    ok = np.isfinite(d)
    down, up = np.full(d.size, np.nan), np.full(d.size, np.nan)
    if sumw2 is not None:
        s = vec("data_sumw2", sumw2, d.size)
        good = ok & np.isfinite(s) & (s >= 0)
        down[good] = up[good] = np.sqrt(s[good])
        return down, up
    if np.any((d[ok] < 0) | (d[ok] != np.round(d[ok]))):
        raise InputError("DATA are not counts (negative or fractional): pass data_sumw2 for "
                         "weighted events")
    bounds = garwood_interval(d[ok])
    down[ok], up[ok] = d[ok] - bounds[:, 0], bounds[:, 1] - d[ok]
    return down, up


def plot_marginals(hists: Sequence[MarginalHistogram], *, log: bool | None = None,
                   max_columns: int = 4, ratio_range: tuple[float, float] | None = None,
                   title: str | None = None, style: str | None = "CMS",
                   save: str | os.PathLike[str] | None = None,
                   formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Per-feature marginals of REF, DATA and LRT RECO with a ratio panel (paper Fig. 1).

    Top: the reference expectation (fraction × number of DATA events) as a step line, DATA as
    points with Poisson (Garwood) or ``√Σw²`` errors, LRT RECO dashed. Bottom: ratios to REF
    with the propagated ±1σ (blue) and ±2σ (light blue) bands of Eq. (3). One legend above
    the grid serves every panel. Non-finite values are left out; a panel with nothing to
    draw says so.

    Args:
        hists: one :class:`MarginalHistogram` per feature, filled row by row.
        log: log y axis in every top panel (True), in none (False), or per panel
            (None: ``hist.log_y``, else :func:`prefers_log_y` of the reference).
        max_columns: panels per row of the grid.
        ratio_range: y range of the ratio panels (default: from the ±2σ band and the points).
        title: figure title.
        style: mplhep style name, or ``None`` for matplotlib defaults.
        save: path stem to write ``.png``/``.pdf`` to.

    Returns:
        The figure; its axes are the top panels in feature order, then the ratio panels.
    """
    rows, cols = grid_shape(len(hists), max_columns)
    with use_style(style):
        fig = figure(figsize=(_PANEL[0] * cols, _PANEL[1] * rows + 0.8), layout="constrained")
        if not hists:
            message_panel(fig.add_subplot(), "no features to show")
            return finish(fig, save, formats, dpi)
        outer = fig.add_gridspec(rows, cols)
        cells = [outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=[3, 1.3],
                                                        hspace=0.0)
                 for i in range(len(hists))]
        tops = [fig.add_subplot(cell[0]) for cell in cells]
        bottoms = [fig.add_subplot(cell[1], sharex=top) for cell, top in zip(cells, tops,
                                                                                strict=True)]
        for i, h in enumerate(hists):
            _panel(tops[i], bottoms[i], h, log=log, ratio_range=ratio_range,
                   first_column=i % cols == 0)
        _legend(fig, tops)
        if title:
            fig.suptitle(title)
        return finish(fig, save, formats, dpi)


def _legend(fig: Figure, tops: Sequence[Axes]) -> None:
    """One legend above the grid: every entry any panel drew, and the two bands."""
    from matplotlib.patches import Patch

    entries: dict[str, Any] = {}
    for ax in tops:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    entries[r"REF $\pm1\sigma$"] = Patch(color=BAND1)
    entries[r"REF $\pm2\sigma$"] = Patch(color=BAND2)
    fig.legend(list(entries.values()), list(entries), loc="outside upper center",
               ncols=len(entries), frameon=False, fontsize="small")


def _clean(a: NDArray[np.float64]) -> NDArray[np.float64]:
    out = a.copy()
    out[~np.isfinite(out)] = np.nan
    return out


def _panel(top: Axes, bottom: Axes, h: MarginalHistogram, *, log: bool | None,
           ratio_range: tuple[float, float] | None, first_column: bool) -> None:
    edges = vec("edges", h.edges)
    nb = edges.size - 1
    bottom.set_xlabel(axis_label(h.label or h.name, h.unit))
    top.tick_params(labelbottom=False)
    if nb < 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        message_panel(top, f"{h.name}: no valid bin edges (empty or non-finite data?)")
        bottom.set_yticks([])
        return
    ref = _clean(vec("ref", h.ref, nb))
    ref_std = _clean(vec("ref_std", h.ref_std, nb))
    data = _clean(vec("data", h.data, nb))
    reco = None if h.reco is None else _clean(vec("reco", h.reco, nb))
    sumw2 = None if h.data_sumw2 is None else _clean(vec("data_sumw2", h.data_sumw2, nb))
    down, up = data_errors(data, sumw2)
    n_total = h.n_data if h.n_data is not None and np.isfinite(h.n_data) else float(
        np.nansum(data))
    expected = ref * n_total
    use_log = log if log is not None else h.log_y if h.log_y is not None else prefers_log_y(
        expected if finite(expected).size else data)
    # A log axis needs something positive to show (an all-zero or all-NaN panel stays linear).
    use_log = use_log and bool(np.any(finite(np.concatenate([expected, data])) > 0))
    centres = 0.5 * (edges[1:] + edges[:-1])
    _top_panel(top, edges, centres, expected, data, down, up,
               None if reco is None else reco * n_total, use_log=use_log)
    top.set_ylabel(_events_label(edges, h.unit))
    if not (finite(data).size or finite(expected).size):
        message_panel(top, f"{h.name}: no finite DATA or REF values")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref > 0, ref_std / ref, np.nan)
        ratio = np.where(expected > 0, data / expected, np.nan)
        ratio_down = np.where(expected > 0, down / expected, np.nan)
        ratio_up = np.where(expected > 0, up / expected, np.nan)
        reco_ratio = None if reco is None else np.where(ref > 0, reco / ref, np.nan)
        # Points measured to ~30 % or better (10 counts; n_eff = (Σw)²/Σw² >= 10 if weighted).
        n_eff = data if sumw2 is None else np.where(sumw2 > 0, data ** 2 / sumw2, 0.0)
    bottom.stairs(1 + 2 * rel, edges, baseline=1 - 2 * rel, fill=True, color=BAND2)
    bottom.stairs(1 + rel, edges, baseline=1 - rel, fill=True, color=BAND1)
    bottom.axhline(1.0, color=REF, lw=1)
    bottom.errorbar(centres, ratio, yerr=[ratio_down, ratio_up], fmt="o", ms=3, color=DATA)
    if reco_ratio is not None:
        bottom.stairs(reco_ratio, edges, baseline=None, color=RECO, lw=1.4, ls="--")
    if ratio_range is None or not np.all(np.isfinite(ratio_range)):
        # Fit the ±2σ band, the well-measured points and LRT RECO where REF expects >= 10
        # events; sparse tail bins would otherwise stretch the axis until the band vanishes.
        parts = [2 * rel, np.where(n_eff >= 10, ratio - 1, np.nan)]
        if reco_ratio is not None:
            parts.append(np.where(expected >= 10, reco_ratio - 1, np.nan))
        dev = finite(np.abs(np.concatenate(parts)))
        spread = float(np.clip(dev.max() if dev.size else 0.5, 0.05, 1.0))
        ratio_range = (1 - 1.15 * spread, 1 + 1.15 * spread)
    bottom.set_ylim(*ratio_range)
    bottom.set_xlim(edges[0], edges[-1])
    if first_column:
        bottom.set_ylabel("Ratio to REF")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(nbins=5))
    bottom.yaxis.set_major_locator(MaxNLocator(nbins=3))


def _top_panel(ax: Axes, edges: NDArray[np.float64], centres: NDArray[np.float64],
               expected: NDArray[np.float64], data: NDArray[np.float64],
               down: NDArray[np.float64], up: NDArray[np.float64],
               reco: NDArray[np.float64] | None, *, use_log: bool) -> None:
    """REF, DATA and LRT RECO in events per bin, with y limits from finite values only."""
    ax.stairs(expected, edges, color=REF, lw=1.8, label="REF (ensemble)")
    shown = np.isfinite(data) & ((data > 0) if use_log else True)
    ax.errorbar(centres[shown], data[shown], yerr=[down[shown], up[shown]], fmt="o", ms=3.5,
                color=DATA, label="DATA")
    if reco is not None:
        ax.stairs(reco, edges, baseline=None, color=RECO, lw=1.6, ls="--", label="LRT RECO")
    highs = finite(np.concatenate([expected, data + np.nan_to_num(up)]))
    peak = float(highs.max()) if highs.size else 0.0
    if use_log:
        ax.set_yscale("log")
        # Down to half the smallest point or the smallest REF bin within 5 decades of the peak.
        low = finite(np.concatenate([data, expected]))
        low = low[(low > 0) & (low >= 1e-5 * peak)]
        floor = 0.5 * float(low.min()) if low.size else 0.5
        peak = max(peak, 2 * floor)
        ax.set_ylim(floor, peak * (peak / floor) ** 0.12)
    else:
        lows = finite(np.concatenate([expected, data - np.nan_to_num(down)]))
        bottom = min(0.0, float(lows.min()) if lows.size else 0.0)  # negative weights
        ax.set_ylim(bottom, peak * 1.15 if peak > bottom else bottom + 1.0)


def _events_label(edges: NDArray[np.float64], unit: str) -> str:
    """``Events / 25 GeV`` for equal bins, ``Events / bin`` otherwise."""
    widths = np.diff(edges)
    if np.allclose(widths, widths[0], rtol=1e-6):
        return f"Events / {widths[0]:.3g}{' ' + unit if unit else ''}"
    return "Events / bin"
