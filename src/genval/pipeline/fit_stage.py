"""The fit stage (paper Step 2, Eqs. 1–2): ŵ and Cov(ŵ) on the weight-fit split."""

from __future__ import annotations

from typing import Any

from genval import plots
from genval.members import log_density_matrix
from genval.pipeline.artifacts import load_members, save_fit, split_events
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.rundir import RunDir
from genval.wifi import fit_weights

__all__ = ["stage_fit"]


def stage_fit(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Fit ŵ and Cov(ŵ) (Eqs. 1–2) on the weight-fit split; save ``fit/fit.npz`` and JSON."""
    cfg = run.config()
    members = load_members(run)
    x_fit, _ = split_events(run, "weight_fit")
    log_f = log_density_matrix(members, x_fit)
    fit = fit_weights(log_f, log=True, max_iter=cfg.wifi.max_iter, tol=cfg.wifi.tol)
    save_fit(run, fit)
    draw(run, "weights", plots.plot_weights, weights=fit.weights, cov=fit.cov)
    log(f"[fit] {'converged' if fit.converged else 'NOT converged'} in {fit.n_iter} Newton "
        f"iterations on {len(x_fit)} events; cond(V) = {fit.hessian_condition:.3g}, "
        f"effective rank {fit.effective_rank:.2f} of {fit.n_members}")
    return {"converged": bool(fit.converged), "n_iter": int(fit.n_iter), "nll": float(fit.nll)}
