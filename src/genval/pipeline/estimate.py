"""The fit, sample and coverage stages (paper Steps 2–3)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import stats

from genval._atomic import atomic_write_json
from genval.io import write_events
from genval.members import log_density_matrix
from genval.pipeline._common import (
    FIT_ARRAYS,
    Log,
    draw,
    is_paper_toy,
    jsonable,
    load_fit,
    load_members,
    quiet,
    save_npz,
    split_events,
    stage_seed,
)
from genval.rundir import RunDir
from genval.splits import Splits

__all__ = ["stage_fit", "stage_sample", "stage_coverage"]


def stage_fit(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Fit ŵ and Cov(ŵ) (Eqs. 1–2) on the weight-fit split; save ``fit/fit.npz`` and JSON."""
    from genval.wifi import fit_weights

    cfg = run.config()
    members = load_members(run)
    x_fit, _ = split_events(run, "weight_fit")
    log_f = log_density_matrix(members, x_fit)
    fit = fit_weights(log_f, log=True, max_iter=cfg.wifi.max_iter, tol=cfg.wifi.tol)
    fields = {f.name: getattr(fit, f.name) for f in dataclasses.fields(fit)}
    out = run.dir("fit")
    save_npz(out / "fit.npz", **{k: fields[k] for k in FIT_ARRAYS})
    scalars = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()
               if k not in FIT_ARRAYS}
    atomic_write_json(out / "fit.json", {**jsonable(scalars),
                                         "weights": fit.weights.tolist(),
                                         "weight_std": fit.weight_std.tolist()})
    from genval import plots

    draw(run, "weights", plots.plot_weights, weights=fit.weights, cov=fit.cov)
    log(f"[fit] {'converged' if fit.converged else 'NOT converged'} in {fit.n_iter} Newton "
        f"iterations on {len(x_fit)} events; cond(V) = {fit.hessian_condition:.3g}, "
        f"effective rank {fit.effective_rank:.2f} of {fit.n_members}")
    return {"converged": bool(fit.converged), "n_iter": int(fit.n_iter), "nll": float(fit.nll)}


def stage_sample(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Draw ``sample.n_events`` events from f(x; ŵ) and write them with f̂ and σ_f̂ (Eq. 3)."""
    from genval.products import oversample

    cfg = run.config()
    members, fit = load_members(run), load_fit(run)
    _, names = split_events(run, "weight_fit")
    seed = stage_seed(cfg, "sample")
    drawn = oversample(members, fit, cfg.sample.n_events, seed)
    out = run.dir("samples")
    path = write_events(out / cfg.sample.output, drawn.x, names)
    save_npz(out / "density.npz", density=drawn.density, density_std=drawn.density_std)
    run.update_metadata(seeds={"sample": seed})
    log(f"[sample] {cfg.sample.n_events} events -> {path.name} "
        f"(acceptance {drawn.acceptance_rate:.1%})")
    return {"path": str(path.relative_to(run.root)), "n_events": cfg.sample.n_events,
            "acceptance_rate": float(drawn.acceptance_rate)}


def stage_coverage(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """The first-moment coverage study (Eq. 4) on synthetic data sets from the known truth."""
    cfg = run.config()
    if not cfg.coverage.enabled:
        return {"skipped": "coverage.enabled is false"}
    if cfg.data.path is not None:
        return {"skipped": "the truth is unknown for data read from a file"}
    from genval import plots
    from genval.coverage import run_coverage
    from genval.report import PAPER_COVERAGE

    gen = cfg.data.generate
    mean, std = np.asarray(gen.mean), np.asarray(gen.std)
    truth = np.asarray(cfg.coverage.truth if cfg.coverage.truth is not None else gen.mean)
    members = load_members(run)
    n_events = cfg.coverage.n_events or int(Splits.load(run.splits_path).sizes()["weight_fit"])
    seed = stage_seed(cfg, "coverage")
    # The first level is the one judged (Eq. 4 with z_alpha); 2σ is kept for the record.
    level = float(2 * stats.norm.cdf(cfg.coverage.z_alpha) - 1)
    result = run_coverage(members, lambda n, rng: rng.normal(mean, std, size=(n, mean.size)),
                          truth, n_datasets=cfg.coverage.n_datasets, n_events=n_events,
                          oversampling=cfg.coverage.n_generated / n_events, seed=seed,
                          levels=(level, 0.9545) if abs(level - 0.9545) > 1e-3 else (level,),
                          progress=not cfg.quiet)
    out = run.dir("coverage")
    save_npz(out / "coverage.npz", estimates=result.estimates, stds=result.stds,
             stds_weights=result.stds_weights, truth=result.truth,
             converged=result.converged)
    _, names = split_events(run, "weight_fit")
    summary = {"truth": result.truth.tolist(), "levels": result.levels.tolist(),
               "fractions": np.asarray(result.fractions).tolist(), "features": names,
               "n_datasets": result.n_datasets, "n_events": n_events,
               "n_generated": cfg.coverage.n_generated, "messages": list(result.messages)}
    atomic_write_json(out / "coverage.json", jsonable(summary))
    draw(run, "coverage", plots.plot_coverage, estimates=result.estimates, sigmas=result.stds,
         truth=result.truth, z_alpha=cfg.coverage.z_alpha, names=names,
         reference=PAPER_COVERAGE if is_paper_toy(cfg) else None)
    run.update_metadata(seeds={"coverage": seed})
    log("[coverage] " + ", ".join(f"{n}: {100 * c:.1f} %" for n, c in
                                  zip(names, result.fractions[:, 0], strict=True))
        + f" at nominal {100 * level:.1f} % over {result.n_datasets} data sets")
    return {"coverage": dict(zip(names, result.fractions[:, 0].tolist(), strict=True)),
            "level": level}
