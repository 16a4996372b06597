"""The fit stage (paper Step 2, Eqs. 1–2): ŵ and Cov(ŵ) on the weight-fit split."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval import plots
from genval.conditional import fit_conditional_weights
from genval.identification import members_precision
from genval.members import Members, log_density_matrix
from genval.pipeline.artifacts import (
    context_layout,
    load_members,
    save_conditional_fit,
    save_fit,
    split_events,
    split_weights,
)
from genval.pipeline.context import ContextLayout
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir
from genval.sampling import estimate_negative_mass
from genval.wifi import fit_weights

__all__ = ["stage_fit"]

NEGATIVE_MASS_PROPOSALS = 8192
"""Proposals of the fit stage's quick negative-mass estimate (resolution about 1e-4)."""


def stage_fit(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Fit ŵ and Cov(ŵ) (Eqs. 1–2) on the weight-fit split; save ``fit/fit.npz`` and JSON.

    Weighted events give the weighted likelihood and the general sandwich covariance.
    """
    cfg = run.config()
    members = load_members(run)
    x_fit, _ = split_events(run, "weight_fit")
    layout = context_layout(run)
    if layout is not None:
        return _conditional_fit(run, members, layout, x_fit, log)
    log_f = log_density_matrix(members, x_fit)
    # Flows compute log-densities in their own dtype (float32): the Hessian's precision floor.
    precision = members_precision(members)
    fit = fit_weights(log_f, log=True, max_iter=cfg.wifi.max_iter, tol=cfg.wifi.tol,
                      event_weights=split_weights(run, "weight_fit"), precision=precision)
    save_fit(run, fit)
    draw(run, "weights", plots.plot_weights, weights=fit.weights, cov=fit.cov)
    # A quick look at where f(x; ŵ) < 0 (the sample stage measures it on all its proposals).
    negative, negative_err = estimate_negative_mass(members, fit.weights,
                                                    NEGATIVE_MASS_PROPOSALS,
                                                    stage_seed(cfg, "fit-negative-mass"))
    weighted = "" if fit.n_effective is None else f" (weighted, N_eff {fit.n_effective:.4g})"
    log(f"[fit] {'converged' if fit.converged else 'NOT converged'} in {fit.n_iter} Newton "
        f"iterations on {len(x_fit)} events{weighted}; cond(V) = {fit.hessian_condition:.3g}, "
        f"effective rank {fit.effective_rank:.2f} of {fit.n_members}, "
        f"sum|w| = {fit.abs_weight_sum:.3g}, negative mass {negative:.2g} ± {negative_err:.1g}"
        + (f"; ridge toward equal weights (prior sd {fit.prior_std:.3g}) on "
           f"{fit.n_regularised} weakly identified direction(s)" if fit.n_regularised else "")
        + (f"; members {list(fit.unsupported)} without support in the events (weight 0)"
           if fit.unsupported else ""))
    return {"converged": bool(fit.converged), "n_iter": int(fit.n_iter), "nll": float(fit.nll),
            "abs_weight_sum": fit.abs_weight_sum, "negative_mass": negative,
            "negative_mass_error": negative_err, "ridge": float(fit.ridge),
            "n_regularised": int(fit.n_regularised), "unsupported": list(fit.unsupported)}


def _conditional_fit(run: RunDir, members: Members, layout: ContextLayout,
                     events: NDArray[np.float64], log: Log) -> dict[str, Any]:
    """Eqs. (1)–(2) on the rows ``f_k(x_n | c_n)`` (``context:`` runs): one ŵ shared by every
    context, or one per context bin (:func:`genval.conditional.fit_conditional_weights`)."""
    cfg = run.config()
    x_fit, c_fit = layout.split(events)
    index = layout.bins.assign(c_fit)
    log_f = log_density_matrix(members, x_fit, c_fit)
    fit = fit_conditional_weights(log_f, index, n_bins=layout.bins.n_bins,
                                  per_bin=layout.per_bin, log=True, max_iter=cfg.wifi.max_iter,
                                  tol=cfg.wifi.tol,
                                  event_weights=split_weights(run, "weight_fit"))
    save_conditional_fit(run, fit)
    if not fit.per_bin:
        draw(run, "weights", plots.plot_weights, weights=fit.fits[0].weights,
             cov=fit.fits[0].cov)
    kind = "per-bin weights" if fit.per_bin else "shared weights"
    log(f"[fit] x | c with {kind}: {'converged' if fit.converged else 'NOT converged'} on "
        f"{len(x_fit)} events in {layout.bins.n_bins} context bin(s) "
        f"({', '.join(str(int(n)) for n in fit.bin_counts)} events); "
        + "; ".join(f"{'' if not fit.per_bin else f'bin {b}: '}{f.n_iter} Newton iterations, "
                    f"effective rank {f.effective_rank:.2f} of {f.n_members}, "
                    f"sum|w| = {f.abs_weight_sum:.3g}" for b, f in enumerate(fit.fits)))
    return {"converged": bool(fit.converged), "per_bin": fit.per_bin,
            "bin_counts": fit.bin_counts.tolist(),
            "n_iter": [int(f.n_iter) for f in fit.fits],
            "nll": [float(f.nll) for f in fit.fits],
            "abs_weight_sum": [f.abs_weight_sum for f in fit.fits]}
