"""The GoF stage (paper Step 4, Eq. 5; Figs. 1 and 2)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval._atomic import atomic_write_json
from genval.errors import FitError, GenvalWarning
from genval.members import Members
from genval.pipeline._common import (
    Log,
    draw,
    jsonable,
    load_fit,
    load_members,
    module,
    quiet,
    split_events,
    stage_seed,
)
from genval.rundir import RunDir

__all__ = ["stage_gof", "GofVariantWarning"]


class GofVariantWarning(GenvalWarning):
    """A GoF variant could not be computed; the stage records why and runs the others."""


def stage_gof(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """The learned likelihood-ratio test (Eq. 5) for every configured variant.

    Writes ``gof/VARIANT.json`` (t_obs, p, Z, χ² extrapolation, t_null), the null figure of
    each variant (Fig. 2) and the marginals of REF / DATA / LRT RECO (Fig. 1).
    """
    cfg = run.config()
    if not cfg.gof.enabled:
        return {"skipped": "gof.enabled is false"}
    gof = module("genval.gof", "the gof stage")
    from genval import plots

    seed = stage_seed(cfg, "gof")
    members, fit = load_members(run), load_fit(run)
    x_test, names = split_events(run, "test")
    x_centres, _ = split_events(run, "centres")
    basis = gof.KernelBasis.from_events(x_centres, cfg.gof.n_kernels, cfg.gof.sigma,
                                        standardize=cfg.gof.standardize, seed=seed)
    # Several test sets: disjoint chunks of the test split, one result each (median Z, band).
    chunks = np.array_split(x_test, cfg.gof.n_test_sets)
    out = run.dir("gof")
    summary: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        log(f"[gof] {variant}: {cfg.gof.n_toys} toys x {len(chunks)} test set(s)")
        try:
            results = [gof.goodness_of_fit(
                members, fit, chunk, basis, n_toys=cfg.gof.n_toys, seed=seed + i,
                variant=variant, member=cfg.gof.single_member if variant == "single" else None,
                centre=cfg.gof.constraint_centre, toy_size=cfg.gof.toy_size,
                pool_size=cfg.gof.pool_size, n_jobs=cfg.gof.n_jobs, lam=cfg.gof.lambda_net,
                progress=not cfg.quiet)
                for i, chunk in enumerate(chunks)]
        except FitError as exc:
            # One variant undefined (e.g. a signed mixture <= 0 at test events) must not cost
            # the others: record why, warn, and go on.
            atomic_write_json(out / f"{variant}.json", {"variant": variant, "error": str(exc)})
            warnings.warn(f"GoF variant {variant!r} undefined: {exc}", GofVariantWarning,
                          stacklevel=2)
            summary[variant] = {"error": str(exc)}
            continue
        record = jsonable(results[0].to_dict())
        if len(results) > 1:
            z = gof.summarize_z(results)
            record["z_summary"] = {"median": z.median, "lower": z.lower, "upper": z.upper,
                                   "n_sets": z.n_sets}
            record["per_set"] = [jsonable({k: v for k, v in r.to_dict().items()
                                            if k not in ("t_null", "toy_index")})
                                 for r in results]
        atomic_write_json(out / f"{variant}.json", record)
        res = results[0]
        # Several test sets: the figure shows their median t and Z, and every t_obs.
        several = len(results) > 1
        draw(run, f"null_{variant}", plots.plot_null, t_null=res.t_null,
             t_obs=float(np.median([r.t_obs for r in results])) if several else res.t_obs,
             z=record["z_summary"]["median"] if several else res.z,
             p_value=None if several else res.p_value, chi2_scale=res.chi2_fit.scale,
             chi2_dof=res.chi2_fit.dof, z_chi2=None if several else res.z_chi2,
             label=_variant_label(variant),
             t_obs_sets=[r.t_obs for r in results] if several else None)
        summary[variant] = {"t_obs": float(res.t_obs), "z": float(res.z),
                            "z_chi2": float(res.z_chi2), "n_sets": len(results)}
        observed[variant] = res.observed
        bound = "≥ " if res.z_is_bound else ""
        log(f"[gof] {variant}: t_obs = {res.t_obs:.4g}, p = {res.p_value:.3g}, "
            f"Z = {bound}{res.z:.2f} ({res.n_toys} toys), Z(χ² extrapolation) = "
            f"{res.z_chi2:.2f}")
    # LRT RECO of Fig. 1 is the alternative profiled for the ensemble with uncertainty.
    reco_stat = observed.get("ensemble", next(iter(observed.values()), None))
    _marginals_figure(run, members, fit, basis, x_test, names, reco_stat,
                      stage_seed(cfg, "figures"))
    run.update_metadata(seeds={"gof": seed})
    return summary


def _variant_label(variant: str) -> str:
    from genval.report import VARIANT_LABELS

    return VARIANT_LABELS.get(variant, variant)


def _marginals_figure(run: RunDir, members: Members, fit: Any, basis: Any,
                      x_test: NDArray[np.float64], names: Sequence[str], stat: Any,
                      seed: int) -> None:
    """Paper Fig. 1 from one pool drawn from f(x; ŵ) (see :mod:`genval.binned`)."""
    from genval import plots
    from genval.products.binned import bin_integrals, binned_reference, histogram_counts
    from genval.sampling import sample_mixture

    cfg = run.config()
    # A pool independent of the GoF toys' pool; 20x the test size, within [5e4, 2e5].
    size = cfg.report.pool_size or int(np.clip(20 * len(x_test), 50_000, 200_000))
    pool = sample_mixture(members, fit.weights, size, seed)
    F = np.exp(pool.log_f)
    f = F @ fit.weights
    reco_density = None
    phi, a = getattr(stat, "phi1", None), getattr(stat, "a", None)
    if phi is not None and a is not None and np.shape(phi) == fit.weights.shape:
        # H_{φ,a} is the density F·φ + G·a: the GoF profiles scale each row of F and G by the
        # same factor, so φ and a come back in density units.
        reco_density = F @ np.asarray(phi) + basis.pdf(pool.x) @ np.asarray(a)
    hists = []
    for j, name in enumerate(names):
        lo, hi = np.quantile(x_test[:, j], [0.001, 0.999])
        edges = np.linspace(lo, hi, cfg.report.bins + 1)
        ref = binned_reference(pool.x[:, j], edges, F, fit.weights, fit.cov)
        reco = None
        if reco_density is not None:
            reco = bin_integrals(pool.x[:, j], edges, reco_density, f)[0][:, 0]
        hists.append(plots.MarginalHistogram(name, edges, ref.fraction, ref.std,
                                             histogram_counts(x_test[:, j], edges), reco))
    draw(run, "marginals", plots.plot_marginals, hists=hists)
