"""The fit stage (paper Step 2, Eqs. 1–2): ŵ and Cov(ŵ) on the weight-fit split."""

from __future__ import annotations

from typing import Any

from genval import plots
from genval.identification import members_precision
from genval.members import log_density_matrix
from genval.pipeline.artifacts import load_members, save_fit, split_events, split_weights
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
