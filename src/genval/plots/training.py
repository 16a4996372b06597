"""The members' training curves and the fitted weights with their errors (Step 1, Eqs. 1–2).

References:
    Badaracco et al., Step 1 (the members) and Eqs. (1)–(2) (ŵ and Cov(ŵ)).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from genval.errors import InputError
from genval.plots._base import RECO, REF, figure, finish, message_panel, use_style, vec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_weights", "plot_training"]


def plot_weights(*, weights: ArrayLike, cov: ArrayLike | None = None,
                 style: str | None = "CMS", save: str | os.PathLike[str] | None = None,
                 formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Fitted weights ŵ_k with ±1σ error bars from ``diag Cov(ŵ)`` (Eqs. 1–2).

    The uniform weight 1/M is drawn for reference; negative weights are part of the method.
    Non-finite weights or variances are left out of the axis limits (drawn as gaps).
    """
    w = vec("weights", weights)
    m = w.size
    err = None
    if cov is not None:
        c = np.asarray(cov, dtype=np.float64)
        if c.shape != (m, m):
            raise InputError(f"cov has shape {c.shape}, expected ({m}, {m})")
        with np.errstate(invalid="ignore"):
            err = np.sqrt(np.maximum(np.diag(c), 0.0))
        err[~np.isfinite(err)] = np.nan
    with use_style(style):
        fig = figure(figsize=(max(7.5, 0.18 * m + 3), 5.5), layout="constrained")
        ax = fig.add_subplot()
        if m == 0:
            message_panel(ax, "no weights to show")
            return finish(fig, save, formats, dpi)
        w_drawn = np.where(np.isfinite(w), w, np.nan)
        idx = np.arange(m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axhline(1.0 / m, color=RECO, lw=1.2, ls="--", label=f"uniform 1/M = {1 / m:.3g}")
        ax.errorbar(idx, w_drawn, yerr=err, fmt="o", ms=4, color=REF, capsize=2,
                    label=rf"$\hat w_k \pm 1\sigma$ ($\Sigma\hat w$ = {np.nansum(w):.4f})")
        if not np.all(np.isfinite(w)):
            ax.set_title(f"{int(np.sum(~np.isfinite(w)))} non-finite weights not shown",
                         fontsize="x-small", color=RECO)
        ax.set_xlabel("member k")
        ax.set_ylabel(r"weight $\hat w_k$")
        # Above the axes: with M weights scattered anywhere, no corner is reliably empty.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, fontsize="x-small",
                  frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        return finish(fig, save, formats, dpi)


def plot_training(*, train_loss: Sequence[ArrayLike], val_loss: Sequence[ArrayLike] | None = None,
                  best_epoch: Sequence[int] | None = None, style: str | None = "CMS",
                  save: str | os.PathLike[str] | None = None,
                  formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> Figure:
    """Per-member training (solid) and validation (dashed) loss curves, best epochs marked.

    Non-finite losses (a diverged epoch) are gaps in the curves; no members gives a figure
    that says so.

    Args:
        train_loss: one sequence per member (lengths may differ: early stopping).
        val_loss: the same for the validation loss.
        best_epoch: per member, the epoch of the kept checkpoint.
    """
    n = len(train_loss)
    if val_loss is not None and len(val_loss) != n:
        raise InputError(f"val_loss has {len(val_loss)} members, train_loss {n}")
    with use_style(style):
        fig = figure(figsize=(7.5, 5.0), layout="constrained")
        ax = fig.add_subplot()
        if n == 0:
            message_panel(ax, "no members to show")
            return finish(fig, save, formats, dpi)
        cmap = __import__("matplotlib").colormaps["viridis"]
        for k, curve in enumerate(train_loss):
            colour = cmap(k / max(n - 1, 1))
            tr = _gaps(vec("train_loss", curve))
            ax.plot(np.arange(1, tr.size + 1), tr, color=colour, lw=0.9, alpha=0.8)
            if val_loss is not None:
                va = _gaps(vec("val_loss", val_loss[k]))
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
        return finish(fig, save, formats, dpi)


def _gaps(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[~np.isfinite(out)] = np.nan
    return out
