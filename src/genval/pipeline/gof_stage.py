"""The GoF stage (paper Step 4, Eq. 5; Figs. 1 and 2): the calibrated learned LRT per variant."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval import gof
from genval.config import Config
from genval.errors import FitError, GenvalWarning
from genval.members import Members
from genval.pipeline.artifacts import (
    load_fit,
    load_members,
    load_transform,
    save_gof,
    save_gof_error,
    split_events,
    split_weights,
)
from genval.pipeline.gof_figures import alternative_figures, null_figure
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir
from genval.wifi import WeightFit

__all__ = ["stage_gof", "GofVariantWarning", "one_line", "failed_toys_line"]


class GofVariantWarning(GenvalWarning):
    """A GoF variant could not be computed; the stage records why and runs the others."""


def one_line(message: str) -> str:
    """``message`` on one line (numpy prints long arrays over several)."""
    return " ".join(message.split())


def failed_toys_line(res: gof.GoFResult) -> str:
    """How many toys failed and why, e.g. "3 of 200 toys failed (3 alternative fit hit the
    iteration cap)"."""
    why = ", ".join(f"{n} {reason}" for reason, n in res.failure_reasons.items())
    return f"{res.n_failed} of {res.n_toys} toys failed ({why})"


def stage_gof(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """The learned likelihood-ratio test (Eq. 5) for every configured variant.

    Writes ``gof/VARIANT.json`` (t_obs, p, Z, χ² extrapolation, t_null), the null figure of
    each variant (Fig. 2) and the marginals of REF / DATA / LRT RECO (Fig. 1). A variant that
    is undefined (FitError) or failed (``GoFResult.failure``: t_obs not finite or its fit
    stopped, too many failed toys) is recorded with its cause in one line, warned about
    (:class:`GofVariantWarning`) and logged; the other variants and the figures go on.

    Raises:
        InputError: the test events are weighted (:func:`genval.gof.require_unweighted`).
    """
    cfg = run.config()
    if not cfg.gof.enabled:
        return {"skipped": "gof.enabled is false"}
    x_test, names = split_events(run, "test")
    # Before anything is evaluated: the calibration holds for unweighted test events only.
    gof.require_unweighted(split_weights(run, "test"), len(x_test),
                           name=f"test events (data.weight {cfg.data.weight!r})")
    seed = stage_seed(cfg, "gof")
    members, fit = load_members(run), load_fit(run)
    x_centres, _ = split_events(run, "centres")
    # The kernels are Gaussian in the members' (transformed) coordinates: docs/method.md.
    basis = gof.KernelBasis.from_events(
        x_centres, cfg.gof.n_kernels, cfg.gof.sigma,
        standardize=cfg.gof.kernel_units == "standardised", transform=load_transform(run),
        seed=seed)
    log(f"[gof] kernels: K = {basis.n_kernels}, {gof.kernel_basis_text(basis.describe())}")
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
            message = one_line(str(results))
            save_gof_error(run, variant, message)
            warnings.warn(f"GoF variant {variant!r} undefined: {message}", GofVariantWarning,
                          stacklevel=2)
            log(f"[gof] {variant}: UNDEFINED: {message}")
            summary[variant] = {"error": message}
            continue
        failed = [(i, r) for i, r in enumerate(results) if not r.ok]
        if failed:
            # A failed t (observed or too many toys) has no p and no Z: record the result with
            # its cause, warn, and go on with the other variants.
            i, res = failed[0]
            where = f" (test set {i + 1} of {len(results)})" if len(results) > 1 else ""
            message = one_line(f"{res.failure}{where}")
            save_gof(run, [res], None)
            warnings.warn(f"GoF variant {variant!r} failed: {message}", GofVariantWarning,
                          stacklevel=2)
            log(f"[gof] {variant}: FAILED: {message}")
            summary[variant] = {"error": message}
            continue
        z_summary = gof.summarize_z(results) if len(results) > 1 else None
        save_gof(run, results, z_summary)
        null_figure(run, variant, results, z_summary)
        res = results[0]
        summary[variant] = {"t_obs": float(res.t_obs), "z": float(res.z),
                            "z_chi2": float(res.z_chi2), "n_sets": len(results),
                            "n_failed_toys": res.n_failed}
        observed[variant] = res.observed
        bound = "≥ " if res.z_is_bound else ""
        lo, hi = res.p_interval_total
        log(f"[gof] {variant}: t_obs = {res.t_obs:.4g}, p = {res.p_value:.3g} "
            f"[{lo:.3g}, {hi:.3g} with the pools' share], Z = {bound}{res.z:.2f} "
            f"({res.n_used} toys), Z(χ² extrapolation) = {res.z_chi2:.2f}")
        if res.n_failed:
            blo, bhi = res.p_bounds
            log(f"[gof] {variant}: {failed_toys_line(res)}; p in [{blo:.3g}, {bhi:.3g}] "
                "counting them below or above t_obs")
    # LRT RECO of Fig. 1 is the alternative profiled for the ensemble with uncertainty.
    reco_stat = observed.get("ensemble", next(iter(observed.values()), None))
    alternative_figures(run, members, fit, basis, x_test, names, reco_stat,
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
        max_failed_fraction=cfg.gof.max_failed_fraction,
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
