"""The GoF stage (paper Step 4, Eq. 5; Figs. 1 and 2): the calibrated learned LRT per variant."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval import gof, plots
from genval.config import Config
from genval.errors import FitError, GenvalWarning
from genval.gof import VARIANT_LABELS
from genval.members import Members
from genval.pipeline.adapt import resolve_n_kernels
from genval.pipeline.artifacts import (
    load_fit,
    load_members,
    save_gof,
    save_gof_error,
    split_events,
)
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.products.binned import bin_integrals, binned_reference, histogram_counts
from genval.row_scaling import scale_rows
from genval.rundir import RunDir
from genval.sampling import sample_mixture
from genval.wifi import WeightFit

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
    seed = stage_seed(cfg, "gof")
    members, fit = load_members(run), load_fit(run)
    x_test, names = split_events(run, "test")
    x_centres, _ = split_events(run, "centres")
    n_kernels, _ = resolve_n_kernels(cfg, len(x_centres))  # as the split stage recorded
    basis = gof.KernelBasis.from_events(x_centres, n_kernels, cfg.gof.sigma,
                                        standardize=cfg.gof.standardize, seed=seed)
    # Several test sets: disjoint chunks of the test split, one result each (median Z, band).
    chunks = np.array_split(x_test, cfg.gof.n_test_sets)
    summary: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        log(f"[gof] {variant}: {cfg.gof.n_toys} toys x {len(chunks)} test set(s)")
    outcome = _run_variants(cfg, members, fit, chunks, basis, seed)
    for variant in cfg.gof.variants:
        results = outcome[variant]
        if isinstance(results, FitError):
            # One variant undefined (e.g. a signed mixture <= 0 at test events) must not cost
            # the others: record why, warn, and go on.
            save_gof_error(run, variant, str(results))
            warnings.warn(f"GoF variant {variant!r} undefined: {results}", GofVariantWarning,
                          stacklevel=2)
            summary[variant] = {"error": str(results)}
            continue
        z_summary = gof.summarize_z(results) if len(results) > 1 else None
        save_gof(run, results, z_summary)
        _null_figure(run, variant, results, z_summary)
        res = results[0]
        summary[variant] = {"t_obs": float(res.t_obs), "z": float(res.z),
                            "z_chi2": float(res.z_chi2), "n_sets": len(results)}
        observed[variant] = res.observed
        bound = "≥ " if res.z_is_bound else ""
        lo, hi = res.p_interval_total
        log(f"[gof] {variant}: t_obs = {res.t_obs:.4g}, p = {res.p_value:.3g} "
            f"[{lo:.3g}, {hi:.3g} with the pools' share], Z = {bound}{res.z:.2f} "
            f"({res.n_toys} toys), Z(χ² extrapolation) = {res.z_chi2:.2f}")
    # LRT RECO of Fig. 1 is the alternative profiled for the ensemble with uncertainty.
    reco_stat = observed.get("ensemble", next(iter(observed.values()), None))
    _marginals_figure(run, members, fit, basis, x_test, names, reco_stat,
                      stage_seed(cfg, "figures"))
    run.update_metadata(seeds={"gof": seed})
    return summary


def _run_variants(cfg: Config, members: Members, fit: WeightFit,
                  chunks: Sequence[NDArray[np.float64]], basis: gof.KernelBasis, seed: int
                  ) -> dict[str, list[gof.GoFResult] | FitError]:
    """Every variant on every test set (test set ``i`` seeds its pools and toys ``seed + i``).

    Per test set, the test events are evaluated once and the frozen and ensemble variants
    share their pools from f(x; ŵ) (:func:`genval.gof.prepare`); the results equal separate
    calls. A variant undefined on some test set maps to its :class:`FitError`.
    """
    out: dict[str, list[gof.GoFResult] | FitError] = {v: [] for v in cfg.gof.variants}
    settings = gof.GoFSettings(
        centre=cfg.gof.constraint_centre, toy_size=cfg.gof.toy_size, n_pools=cfg.gof.n_pools,
        pool_size=cfg.gof.pool_size, n_jobs=cfg.gof.n_jobs,
        max_negative_mass=cfg.gof.max_negative_mass,
        profile=gof.ProfileSettings(lam=cfg.gof.lambda_net))
    for i, chunk in enumerate(chunks):
        prepared = gof.prepare(members, chunk, basis, seed + i, settings=settings)
        for variant in cfg.gof.variants:
            done = out[variant]
            if isinstance(done, FitError):
                continue
            try:
                done.append(gof.goodness_of_fit(
                    members, fit, chunk, basis, n_toys=cfg.gof.n_toys, seed=seed + i,
                    variant=variant, settings=settings, prepared=prepared,
                    member=cfg.gof.single_member if variant == "single" else None,
                    progress=not cfg.quiet))
            except FitError as exc:
                out[variant] = exc
        prepared.clear()
    return out


def _null_figure(run: RunDir, variant: str, results: Sequence[gof.GoFResult],
                 z_summary: gof.ZSummary | None) -> None:
    """Paper Fig. 2; with several test sets, their median t and Z, and every t_obs."""
    res = results[0]
    several = z_summary is not None
    draw(run, f"null_{variant}", plots.plot_null, t_null=res.t_null,
         t_obs=float(np.median([r.t_obs for r in results])) if several else res.t_obs,
         z=z_summary.median if z_summary is not None else res.z,
         p_value=None if several else res.p_value, chi2_scale=res.chi2_fit.scale,
         chi2_dof=res.chi2_fit.dof, z_chi2=None if several else res.z_chi2,
         label=VARIANT_LABELS.get(variant, variant),
         t_obs_sets=[r.t_obs for r in results] if several else None)


def _marginals_figure(run: RunDir, members: Members, fit: WeightFit, basis: gof.KernelBasis,
                      x_test: NDArray[np.float64], names: Sequence[str], stat: Any,
                      seed: int) -> None:
    """Paper Fig. 1 from one pool drawn from f(x; ŵ) (see :mod:`genval.products.binned`).

    Every curve is a bin integral of ``h / f`` over the pool, a ratio, so the member and
    kernel densities enter with their rows scaled by one common factor per pool event (the
    scaling of :func:`genval.row_scaling.scale_rows`): nothing underflows in the tails.
    """
    cfg = run.config()
    # A pool independent of the GoF toys' pool; 20x the test size, within [5e4, 2e5].
    size = cfg.report.pool_size or int(np.clip(20 * len(x_test), 50_000, 200_000))
    pool = sample_mixture(members, fit.weights, size, seed)
    rows = scale_rows(pool.log_f, basis.log_pdf(pool.x), log=True)  # F = exp(log_s) · S
    S = rows.f
    f = S @ fit.weights
    reco_density = None
    phi, a = getattr(stat, "phi1", None), getattr(stat, "a", None)
    if phi is not None and a is not None and np.shape(phi) == fit.weights.shape:
        # H_{φ,a} is the density F·φ + G·a: the GoF profiles scale each row of F and G by the
        # same factor, so φ and a come back in density units; G takes the rows' scale too.
        reco_density = S @ np.asarray(phi) + rows.g @ np.asarray(a)
    hists = []
    for j, name in enumerate(names):
        lo, hi = np.quantile(x_test[:, j], [0.001, 0.999])
        edges = np.linspace(lo, hi, cfg.report.bins + 1)
        ref = binned_reference(pool.x[:, j], edges, S, fit.weights, fit.cov)
        reco = None
        if reco_density is not None:
            reco = bin_integrals(pool.x[:, j], edges, reco_density, f)[0][:, 0]
        hists.append(plots.MarginalHistogram(name, edges, ref.fraction, ref.std,
                                             histogram_counts(x_test[:, j], edges), reco))
    draw(run, "marginals", plots.plot_marginals, hists=hists)
