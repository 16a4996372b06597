"""The report stage: gather what earlier stages wrote into ``report.html``.

Everything is read back through :mod:`genval.pipeline.artifacts` as the stages' own result
objects, so the report shows exactly what the stages computed and whatever subset of them ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genval.config import Config
from genval.gof.kernels import kernel_basis_text
from genval.html_report import CoverageRow, GofRow, write_report
from genval.pipeline.artifacts import (
    GofRecord,
    has_fit,
    load_coverage,
    load_fit,
    load_gof,
    load_sampler,
)
from genval.pipeline.gof_stage import failed_toys_line
from genval.pipeline.log import Log, quiet
from genval.rundir import STAGES, RunDir

__all__ = ["stage_report"]

_FIGURE_CAPTIONS = {
    "marginals": "Marginals of REF (ensemble), DATA and LRT RECO with ±1σ/±2σ bands "
                 "(paper Fig. 1)",
    "null_single": "Null distribution, single member (paper Fig. 2)",
    "null_frozen": "Null distribution, ensemble with frozen weights (paper Fig. 2)",
    "null_ensemble": "Null distribution, ensemble with uncertainty (paper Fig. 2)",
    "coverage": "Coverage of the first moment per feature (paper Fig. 3)",
    "weights": "Fitted weights ŵ with ±1σ from Cov(ŵ)",
    "training": "Training curves of the members",
}

_GOF_SETTINGS = ("n_kernels", "centre", "poisson", "n_pools", "pool_size", "n_test", "overlap",
                 "seed", "null")
"""Settings of the test shown under the GoF table (attributes of :class:`GoFResult`)."""

_FIT_DIAGNOSTICS = ("converged", "n_iter", "nll", "grad_norm", "hessian_condition",
                    "effective_rank", "n_events", "n_unidentified")
"""Diagnostics of the w_i f_i fit shown in the report (attributes of :class:`WeightFit`)."""


def stage_report(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Write ``report.html`` from whatever the earlier stages produced."""
    cfg = run.config()
    records = [r for r in (load_gof(run, v) for v in cfg.gof.variants) if r is not None]
    gof_rows, settings, notes = _gof_section(cfg, records)
    fit_info, fit_notes = _fit_section(run)
    notes += fit_notes + _stage_notes(run)
    figures = _figures(run)
    write_report(run.report_path, title=cfg.report.title, gof=gof_rows, gof_settings=settings,
                 coverage=_coverage_rows(run), figures=figures, fit=fit_info,
                 metadata=_provenance(run),
                 config_yaml=run.config_path.read_text(encoding="utf-8"), notes=notes)
    return {"figures": len(figures), "variants": [r.variant for r in gof_rows]}


def _gof_section(cfg: Config, records: Sequence[GofRecord]
                 ) -> tuple[list[GofRow], dict[str, Any], list[str]]:
    """One row per variant (Eq. 5), the test's settings, and notes on failed toys and bounds."""
    rows: list[GofRow] = []
    settings: dict[str, Any] = {}
    notes: list[str] = []
    for record in records:
        res = record.result
        if record.error is not None or res is None:
            # No p and no Z: the row says why (undefined, or the cause of the failure).
            nan = float("nan")
            what = "undefined" if res is None else "FAILED"
            rows.append(GofRow(record.variant, nan if res is None else res.t_obs, nan, nan,
                               n_toys=None if res is None else res.n_toys,
                               note=f"{what}: {record.error}"))
            notes.append(f"{record.variant}: {what.lower()}, no p-value and no Z: "
                         f"{record.error}")
            continue
        z, band = res.z, None
        if record.z_summary is not None:
            z = record.z_summary.median
            band = (record.z_summary.lower, record.z_summary.upper)
        if res.n_failed:
            lo, hi = res.p_bounds
            notes.append(f"{record.variant}: {failed_toys_line(res)}, left out of p; p in "
                         f"[{lo:.3g}, {hi:.3g}] counting them below or above t_obs")
        rows.append(GofRow(record.variant, res.t_obs, res.p_value, z, z_chi2=res.z_chi2,
                           n_toys=res.n_toys, z_band=band, z_is_bound=res.z_is_bound,
                           p_interval=res.p_interval, p_interval_total=res.p_interval_total))
        settings = {k: getattr(res, k) for k in _GOF_SETTINGS}
    if any(r.z_is_bound for r in rows):
        notes.append("Z marked ≥: t_obs exceeds every toy, so the toys only bound Z from below; "
                     "run more toys, or read the χ² column (an extrapolation)")
    if rows:
        basis = next((r.result.kernel_basis for r in records if r.result is not None), {})
        # Which kernel basis the test used (units, transformed coordinates), as it recorded it.
        settings["kernel basis"] = kernel_basis_text(basis) or f"σ = {cfg.gof.sigma:g}"
        settings["λ_net"] = cfg.gof.lambda_net
    return rows, settings, notes


def _coverage_rows(run: RunDir) -> list[CoverageRow]:
    """Coverage at the judged (first) level per feature (Eq. 4), when the study ran."""
    record = load_coverage(run)
    if record is None:
        return []
    res = record.result
    return [CoverageRow(name, float(res.truth[j]), float(res.fractions[j, 0]), res.n_datasets,
                        float(res.levels[0]))
            for j, name in enumerate(record.features)]


def _fit_section(run: RunDir) -> tuple[dict[str, Any] | None, list[str]]:
    """The fit's diagnostics (Eqs. 1–2) and its warnings, when the fit stage ran."""
    if not has_fit(run):
        return None, []
    fit = load_fit(run)
    info = {k: getattr(fit, k) for k in _FIT_DIAGNOSTICS}
    info["Σ|ŵ|"] = fit.abs_weight_sum
    if fit.n_effective is not None:
        info["effective events (weighted, (Σs)²/Σs²)"] = fit.n_effective
    info.update(_negative_mass_rows(run))
    return info, [f"w_i f_i fit: {m}" for m in fit.messages]


def _negative_mass_rows(run: RunDir) -> dict[str, str]:
    """Where f(x; ŵ) < 0, as a fraction of ∫|f| (fit stage's quick estimate, sample stage's
    measurement), and the sampler's envelope diagnostics."""
    rows: dict[str, str] = {}
    fit_info = run.stage_info("fit") or {}
    if "negative_mass" in fit_info:
        rows["negative mass of f (fit, quick)"] = _mass(fit_info)
    sampler = load_sampler(run)
    if sampler is not None:
        rows["negative mass of f (samples)"] = _mass(sampler)
        rows["sampler"] = (f"{sampler['method']}: "
                           f"{float(sampler['evaluations_per_event']):.2f} evaluations per "
                           f"event, envelope C = {float(sampler['envelope']):.3g}, "
                           f"{sampler['n_violations']} violations, "
                           f"{sampler['n_duplicates']} copies")
    return rows


def _mass(record: dict[str, Any]) -> str:
    """``negative_mass ± negative_mass_error`` of a stage's record."""
    return f"{float(record['negative_mass']):.3g} ± {float(record['negative_mass_error']):.2g}"


def _stage_notes(run: RunDir) -> list[str]:
    """The warnings every finished stage recorded, and why a stage was skipped."""
    notes: list[str] = []
    for stage in STAGES:
        info = run.stage_info(stage)
        if info is None:
            continue
        notes += [f"{stage}: {w}" for w in info.get("warnings", [])]
        if "skipped" in info:
            notes.append(f"{stage} skipped: {info['skipped']}")
    return notes


def _figures(run: RunDir) -> dict[str, Path]:
    """Caption to PNG of every figure that was drawn, in the report's order."""
    figures = {}
    for stem, caption in _FIGURE_CAPTIONS.items():
        png = run.root / "figures" / f"{stem}.png"
        if png.is_file():
            figures[caption] = png
    return figures


def _provenance(run: RunDir) -> dict[str, Any]:
    """Versions, seeds, device, config hash and the seconds each stage took."""
    meta = run.metadata()
    provenance = {k: meta[k] for k in ("genval_version", "created", "python", "platform",
                                       "seed", "device", "config_hash") if k in meta}
    provenance["stage seconds"] = {s: v.get("seconds") for s, v in meta.get("stages",
                                                                            {}).items()}
    return provenance
