"""Figures of a genval run (matplotlib; the mplhep CMS style when mplhep is installed).

Every function takes arrays only (no genval result objects), keyword-only options, returns the
:class:`~matplotlib.figure.Figure`, and writes PNG and PDF when given ``save=`` (atomically).
Figures are built on :class:`~matplotlib.figure.Figure` directly, not through pyplot, so no
global figure state accumulates in long runs.

References:
    Badaracco et al.: Fig. 1 (:func:`plot_marginals`), Fig. 2 (:func:`plot_null`), Fig. 3
    (:func:`plot_coverage`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from genval._atomic import atomic_path
from genval._optional import require
from genval.coverage import COVERAGE_CL, coverage_interval
from genval.errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MarginalHistogram", "plot_marginals", "plot_null", "plot_coverage", "plot_weights",
           "plot_training", "save_figure"]

# Paper Fig. 1 colours: blue ±1σ, light blue ±2σ.
_BAND1, _BAND2 = "#4a90d9", "#b9d7f5"
_REF, _DATA, _RECO = "#1f3b73", "black", "#d1495b"


@contextlib.contextmanager
def _style(style: str | None) -> Iterator[None]:
    """mplhep's style ``style`` (e.g. ``"CMS"``) when installed; matplotlib defaults otherwise."""
    require("matplotlib", "plots", purpose="figures")
    import matplotlib.pyplot as plt

    if style is None:
        yield
        return
    try:
        import mplhep
    except ImportError:
        yield
        return
    with plt.style.context(getattr(mplhep.style, style)):
        yield


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Figure, stem: str | os.PathLike[str], *,
                formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``stem.png``, ``stem.pdf`` (each atomically); return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def _finish(fig: Figure, save: str | os.PathLike[str] | None, formats: Sequence[str],
            dpi: int) -> Figure:
    if save is not None:
        save_figure(fig, save, formats=formats, dpi=dpi)
    return fig


def _vec(name: str, a: ArrayLike, n: int | None = None) -> NDArray[np.float64]:
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if n is not None and arr.size != n:
        raise InputError(f"{name} has {arr.size} entries, expected {n}")
    return arr


@dataclass(frozen=True)
class MarginalHistogram:
    """The binned inputs of one panel of :func:`plot_marginals`.

    Attributes:
        name: feature name (x-axis label).
        edges: (B+1,) bin edges.
        ref: (B,) reference fraction of events per bin, ``∫_b f(x; ŵ)``.
        ref_std: (B,) its σ from Eq. (3).
        data: (B,) observed counts.
        reco: (B,) optional LRT reconstruction fraction per bin, ``∫_b (f(x; φ*) + g(x; a*))``.
    """

    name: str
    edges: ArrayLike
    ref: ArrayLike
    ref_std: ArrayLike
    data: ArrayLike
    reco: ArrayLike | None = None


def plot_marginals(hists: Sequence[MarginalHistogram], *, log: bool = False,
                   ratio_range: tuple[float, float] | None = None, title: str | None = None,
                   style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
                   formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Per-feature marginals of REF, DATA and LRT RECO with a ratio panel (paper Fig. 1).

    Top: the reference expectation (fraction × number of DATA events) as a step line, DATA as
    points with Poisson errors, LRT RECO dashed. Bottom: ratios to REF with the propagated
    ±1σ (blue) and ±2σ (light blue) bands of Eq. (3).

    Args:
        hists: one :class:`MarginalHistogram` per feature (one column each).
        log: logarithmic y axis in the top panels (tails).
        ratio_range: y range of the ratio panels (default: from the ±2σ band and the points).
        title: figure title.
        style: mplhep style name, or ``None`` for matplotlib defaults.
        save: path stem to write ``.png``/``.pdf`` to.
    """
    if not hists:
        raise InputError("plot_marginals needs at least one feature")
    with _style(style):
        fig = _figure(figsize=(6.0 * len(hists), 6.5), layout="constrained")
        axes = fig.subplots(2, len(hists), sharex="col", squeeze=False,
                            gridspec_kw={"height_ratios": [3, 1.3]})
        for col, h in enumerate(hists):
            _marginal_panel(axes[0, col], axes[1, col], h, log=log, ratio_range=ratio_range)
        if title:
            fig.suptitle(title)
        return _finish(fig, save, formats, dpi)


def _marginal_panel(top: Any, bottom: Any, h: MarginalHistogram, *, log: bool,
                    ratio_range: tuple[float, float] | None) -> None:
    edges = _vec("edges", h.edges)
    nb = edges.size - 1
    ref, ref_std, data = _vec("ref", h.ref, nb), _vec("ref_std", h.ref_std, nb), \
        _vec("data", h.data, nb)
    reco = None if h.reco is None else _vec("reco", h.reco, nb)
    n_data = data.sum()
    centres = 0.5 * (edges[1:] + edges[:-1])
    expected = ref * n_data
    top.stairs(expected, edges, color=_REF, lw=1.8, label="REF (ensemble)")
    top.errorbar(centres, data, yerr=np.sqrt(data), fmt="o", ms=3.5, color=_DATA, label="DATA")
    if reco is not None:
        top.stairs(reco * n_data, edges, baseline=None, color=_RECO, lw=1.6, ls="--",
                   label="LRT RECO")
    top.set_ylabel("Events / bin")
    peak = float(max(np.max(expected), np.max(data + np.sqrt(data)), 1.0))
    if log:
        top.set_yscale("log")
        top.set_ylim(bottom=0.5, top=peak * (peak / 0.5) ** 0.8)  # legend headroom
    else:
        top.set_ylim(0, peak * 1.75)
    # The band entries live in the top legend so the ratio panel stays free for the points.
    from matplotlib.patches import Patch

    handles, labels = top.get_legend_handles_labels()
    handles += [Patch(color=_BAND1), Patch(color=_BAND2)]
    labels += [r"REF $\pm1\sigma$", r"REF $\pm2\sigma$"]
    top.legend(handles, labels, loc="upper right", fontsize="xx-small")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref > 0, ref_std / ref, np.nan)
        data_ratio = np.where(expected > 0, data / expected, np.nan)
        data_err = np.where(expected > 0, np.sqrt(data) / expected, np.nan)
        reco_ratio = None if reco is None else np.where(ref > 0, reco / ref, np.nan)
    bottom.stairs(1 + 2 * rel, edges, baseline=1 - 2 * rel, fill=True, color=_BAND2)
    bottom.stairs(1 + rel, edges, baseline=1 - rel, fill=True, color=_BAND1)
    bottom.axhline(1.0, color=_REF, lw=1)
    bottom.errorbar(centres, data_ratio, yerr=data_err, fmt="o", ms=3, color=_DATA)
    if reco_ratio is not None:
        bottom.stairs(reco_ratio, edges, baseline=None, color=_RECO, lw=1.4, ls="--")
    if ratio_range is None:
        # Fit the ±2σ band and the well-measured points (>= 10 events); sparse tail bins
        # would otherwise stretch the axis until the band is invisible.
        well = np.where(data >= 10, data_ratio, np.nan)
        dev = np.abs(np.concatenate([2 * rel, well - 1]))
        dev = dev[np.isfinite(dev)]
        spread = float(np.clip(dev.max() if dev.size else 0.5, 0.05, 1.0))
        ratio_range = (1 - 1.15 * spread, 1 + 1.15 * spread)
    bottom.set_ylim(*ratio_range)
    bottom.set_ylabel("Ratio to REF")
    bottom.set_xlabel(h.name)


def plot_null(*, t_null: ArrayLike, t_obs: float, z: float | None = None,
              p_value: float | None = None, chi2_scale: float | None = None,
              chi2_dof: float | None = None, z_chi2: float | None = None, label: str = "",
              t_obs_sets: ArrayLike | None = None, bins: int = 40, style: str | None = "CMS",
              save: str | os.PathLike[str] | None = None, formats: Sequence[str] = ("png", "pdf"),
              dpi: int = 150) -> Figure:
    """Null distribution of the test statistic with ``t_obs`` and a scaled χ² (paper Fig. 2).

    Args:
        t_null: toy values of t under the null.
        t_obs: t on the test data.
        z, p_value: from the toys.
        chi2_scale, chi2_dof: ``a`` and ``ν`` of the fitted ``a·χ²(ν)``, drawn when given.
        z_chi2: Z from the χ² extrapolation, shown (labelled) when given.
        label: variant name for the title (e.g. "ensemble with uncertainty").
        t_obs_sets: t on each of several test sets, drawn as a second histogram (the paper
            compares the null with the observed distribution); ``t_obs`` is then their median.
    """
    t = _vec("t_null", t_null)
    if t.size == 0:
        raise InputError("t_null is empty")
    with _style(style):
        fig = _figure(figsize=(7.5, 5.5), layout="constrained")
        ax = fig.add_subplot()
        obs = None if t_obs_sets is None else _vec("t_obs_sets", t_obs_sets)
        hi = max(float(np.max(t)), float(t_obs), float(np.max(obs)) if obs is not None
                 else -np.inf) * 1.05
        lo = min(0.0, float(np.min(t)), float(t_obs))
        heights, _, _ = ax.hist(t, bins=np.linspace(lo, hi, bins + 1), density=True,
                                histtype="stepfilled", color=_BAND2, edgecolor=_REF,
                                label=f"null toys ({t.size})")
        if chi2_scale is not None and chi2_dof is not None:
            grid = np.linspace(max(lo, 1e-6), hi, 400)
            pdf = stats.chi2.pdf(grid / chi2_scale, chi2_dof) / chi2_scale
            ax.plot(grid, pdf, color=_REF, lw=1.8,
                    label=rf"${chi2_scale:.3g}\,\chi^2(\nu={chi2_dof:.3g})$")
        ax.axvline(float(t_obs), color=_RECO, lw=2.2, label=rf"$t_{{obs}} = {t_obs:.3g}$")
        lines = []
        if z is not None:
            p_txt = f", p = {p_value:.3g}" if p_value is not None else ""
            lines.append(f"Z = {z:.2f} (toys{p_txt})")
        if z_chi2 is not None:
            lines.append(rf"Z = {z_chi2:.2f} ($\chi^2$ extrapolation)")
        if lines:
            ax.text(0.97, 0.62, "\n".join(lines), transform=ax.transAxes, ha="right", va="top",
                    fontsize="x-small")
        if obs is not None and obs.size:
            ax.hist(obs, bins=np.linspace(lo, hi, bins + 1), density=True, histtype="step",
                    color=_RECO, lw=1.6, ls="--", label=f"t on {obs.size} test sets")
        # Scale to the toys, not the χ² curve (which diverges at 0 when ν < 2).
        ax.set_ylim(0, 1.6 * float(np.max(heights)))
        ax.set_xlabel("t")
        ax.set_ylabel("Density")
        ax.set_title(f"Null distribution{': ' + label if label else ''}", fontsize="small")
        ax.legend(loc="upper right", fontsize="x-small")
        return _finish(fig, save, formats, dpi)


def plot_coverage(*, estimates: ArrayLike, sigmas: ArrayLike, truth: ArrayLike,
                  names: Sequence[str] | None = None, z_alpha: float = 1.0,
                  reference: Sequence[float] | None = None, bins: int = 25,
                  style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
                  formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Coverage of an observable per feature across synthetic datasets (paper Fig. 3, Eq. 4).

    Each panel shows the pulls ``(Ô − O*) / σ_Ô`` with the standard normal they should follow,
    the ``|pull| < z_α`` window, and the empirical coverage with its Clopper–Pearson interval
    (:func:`genval.coverage.coverage_interval`, as in the report) beside the nominal level
    (and the paper's value when ``reference`` is given).

    Args:
        estimates: (S, D) estimates Ô per dataset and feature.
        sigmas: (S, D) their propagated σ.
        truth: (D,) true values O*.
        names: feature names.
        z_alpha: the standard-normal quantile of the interval (1 for 68.3 %).
        reference: (D,) coverages to show for comparison, as fractions (paper: 0.613, 0.687).
    """
    est = np.atleast_2d(np.asarray(estimates, dtype=np.float64))
    sig = np.atleast_2d(np.asarray(sigmas, dtype=np.float64))
    tru = _vec("truth", truth, est.shape[1])
    if est.shape != sig.shape:
        raise InputError(f"estimates {est.shape} and sigmas {sig.shape} differ in shape")
    if np.any(sig <= 0):
        raise InputError("every sigma must be positive")
    d = est.shape[1]
    labels = list(names) if names is not None else [f"feature {i + 1}" for i in range(d)]
    nominal = 2 * stats.norm.cdf(z_alpha) - 1
    pulls = (est - tru) / sig
    with _style(style):
        fig = _figure(figsize=(7.0 * d, 5.0), layout="constrained")
        axes = fig.subplots(1, d, squeeze=False)[0]
        edges = np.linspace(-4, 4, bins + 1)
        grid = np.linspace(-4, 4, 300)
        for j, ax in enumerate(axes):
            p = pulls[:, j]
            covered = np.abs(p) < z_alpha
            ax.axvspan(-z_alpha, z_alpha, color=_BAND2, alpha=0.6, lw=0)
            heights, _, _ = ax.hist(np.clip(p, -4, 4), bins=edges, density=True,
                                    histtype="step", color=_REF, lw=1.8,
                                    label=f"{p.size} datasets")
            ax.plot(grid, stats.norm.pdf(grid), color=_RECO, lw=1.4, ls="--", label="N(0, 1)")
            text = _coverage_text(int(covered.sum()), p.size, nominal,
                                  None if reference is None else reference[j])
            ax.text(0.03, 0.97, text, transform=ax.transAxes, ha="left", va="top",
                    fontsize="x-small")
            ax.set_ylim(0, 1.75 * max(float(np.max(heights)), 0.4))  # room for text, legend
            ax.set_title(rf"{labels[j]} ($O^\star$ = {tru[j]:.3g})", fontsize="medium")
            ax.set_xlabel(r"pull $(\hat O - O^\star)/\sigma_{\hat O}$")
            ax.set_ylabel("Density")
            ax.legend(loc="upper right", fontsize="x-small")
        return _finish(fig, save, formats, dpi)


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


def plot_weights(*, weights: ArrayLike, cov: ArrayLike | None = None,
                 style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
                 formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Fitted weights ŵ_k with ±1σ error bars from ``diag Cov(ŵ)`` (Eqs. 1–2).

    The uniform weight 1/M is drawn for reference; negative weights are part of the method.
    """
    w = _vec("weights", weights)
    m = w.size
    err = None
    if cov is not None:
        c = np.asarray(cov, dtype=np.float64)
        if c.shape != (m, m):
            raise InputError(f"cov has shape {c.shape}, expected ({m}, {m})")
        err = np.sqrt(np.maximum(np.diag(c), 0.0))
    with _style(style):
        fig = _figure(figsize=(max(7.5, 0.18 * m + 3), 5.5), layout="constrained")
        ax = fig.add_subplot()
        idx = np.arange(m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axhline(1.0 / m, color=_RECO, lw=1.2, ls="--", label=f"uniform 1/M = {1 / m:.3g}")
        ax.errorbar(idx, w, yerr=err, fmt="o", ms=4, color=_REF, capsize=2,
                    label=rf"$\hat w_k \pm 1\sigma$ ($\Sigma\hat w$ = {w.sum():.4f})")
        ax.set_xlabel("member k")
        ax.set_ylabel(r"weight $\hat w_k$")
        # Above the axes: with M weights scattered anywhere, no corner is reliably empty.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, fontsize="x-small",
                  frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _finish(fig, save, formats, dpi)


def plot_training(*, train_loss: Sequence[ArrayLike], val_loss: Sequence[ArrayLike] | None = None,
                  best_epoch: Sequence[int] | None = None, style: str | None = "CMS",
                  save: str | os.PathLike[str] | None = None,
                  formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Per-member training (solid) and validation (dashed) loss curves, best epochs marked.

    Args:
        train_loss: one sequence per member (lengths may differ: early stopping).
        val_loss: the same for the validation loss.
        best_epoch: per member, the epoch of the kept checkpoint.
    """
    if not train_loss:
        raise InputError("train_loss has no members")
    with _style(style):
        fig = _figure(figsize=(7.5, 5.0), layout="constrained")
        ax = fig.add_subplot()
        cmap = __import__("matplotlib").colormaps["viridis"]
        n = len(train_loss)
        for k, curve in enumerate(train_loss):
            colour = cmap(k / max(n - 1, 1))
            tr = _vec("train_loss", curve)
            ax.plot(np.arange(1, tr.size + 1), tr, color=colour, lw=0.9, alpha=0.8)
            if val_loss is not None:
                va = _vec("val_loss", val_loss[k])
                ax.plot(np.arange(1, va.size + 1), va, color=colour, lw=0.9, ls="--", alpha=0.8)
                if best_epoch is not None and 1 <= best_epoch[k] <= va.size:
                    ax.plot(best_epoch[k], va[best_epoch[k] - 1], "*", color=colour, ms=8)
        ax.plot([], [], color="grey", label="train")
        if val_loss is not None:
            ax.plot([], [], color="grey", ls="--", label="validation")
        if best_epoch is not None:
            ax.plot([], [], "*", color="grey", label="best checkpoint")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("negative log-likelihood")
        ax.set_title(f"{n} members", fontsize="medium")
        ax.legend(loc="upper right", fontsize="x-small")
        return _finish(fig, save, formats, dpi)
