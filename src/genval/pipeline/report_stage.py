"""The report stage: gather what earlier stages wrote into ``report.html``.

Everything is read back through :mod:`genval.pipeline.artifacts` as the stages' own result
objects, so the report shows exactly what the stages computed and whatever subset of them
finished. A stage without its marker (never run, killed, or made stale by re-running a stage
it reads) is left out even when files of an earlier run of it remain: the report never shows
a result as valid that the run directory does not count as finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genval.config import Config
from genval.gof.kernels import kernel_basis_text
from genval.html_report import CoverageRow, GofRow, write_report
from genval.paper import is_paper_toy
from genval.pipeline.artifacts import (
    GofRecord,
    has_fit,
    load_conditional_gof,
    load_coverage,
    load_deviations,
    load_fit,
    load_gof,
    load_gof_json,
    load_sampler,
)
from genval.pipeline.gof_figures import failure_of
from genval.pipeline.gof_stage import failed_toys_line
from genval.pipeline.log import Log, quiet
from genval.rundir import STAGES, RunDir

__all__ = ["stage_report"]

_FIGURES = (
    ("marginals", "Marginals of REF (ensemble), DATA and LRT RECO with the ±1σ/±2σ bands of "
                  "REF; DATA with 68.3 % Poisson (Garwood) intervals", "Fig. 1", "gof"),
    ("pairs", "DATA against REF in 2D for pairs of features, and the pull per bin; ▲/▼ mark "
              "the centres of the alternative's strongest kernels (adding / removing events)",
     None, "gof"),
    ("null_single", "Null distribution, single member", "Fig. 2", "gof"),
    ("null_frozen", "Null distribution, ensemble with frozen weights", "Fig. 2", "gof"),
    ("null_ensemble", "Null distribution, ensemble with uncertainty", "Fig. 2", "gof"),
    ("coverage", "Coverage of the first moment per feature", "Fig. 3", "coverage"),
    ("weights", "Fitted weights ŵ with ±1σ from Cov(ŵ)", None, "fit"),
    ("training", "Training curves of the members", None, "train"),
)
"""(figure stem, caption, the paper's figure it reproduces: cited for the paper's toy only,
the stage that draws it)."""

_GOF_SETTINGS = ("n_kernels", "centre", "poisson", "n_pools", "pool_size", "n_test", "overlap",
                 "seed", "null")
"""Settings of the test shown under the GoF table (attributes of :class:`GoFResult`)."""

_FIT_DIAGNOSTICS = ("converged", "n_iter", "nll", "grad_norm", "hessian_condition",
                    "effective_rank", "n_events", "n_unidentified")
"""Diagnostics of the w_i f_i fit shown in the report (attributes of :class:`WeightFit`)."""


def stage_report(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Write ``report.html`` from whatever the earlier stages produced.

    The paper's published numbers are shown only for the paper's toy study
    (:func:`genval.paper.is_paper_toy`).
    """
    cfg = run.config()
    paper = is_paper_toy(cfg)
    gof_rows, settings, notes = _gof_section(run, cfg)
    fit_info, fit_notes = _fit_section(run)
    notes += fit_notes + _stage_notes(run)
    figures = _figures(run, paper)
    write_report(run.report_path, title=cfg.report.title, gof=gof_rows, gof_settings=settings,
                 coverage=_coverage_rows(run), figures=figures, fit=fit_info,
                 metadata=_provenance(run),
                 config_yaml=run.config_path.read_text(encoding="utf-8"), notes=notes,
                 paper=paper, deviations=_deviations(run), context=_context_rows(run, cfg))
    return {"figures": len(figures), "variants": [r.variant for r in gof_rows]}


def _get(value: Callable[[], Any]) -> Any:
    """``value()``, or None when the saved result cannot give it (NaN t_obs, no toys, ...)."""
    try:
        return value()
    except Exception:  # noqa: BLE001 -- the report shows "—" for what cannot be computed
        return None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _gof_section(run: RunDir, cfg: Config) -> tuple[list[GofRow], dict[str, Any], list[str]]:
    """One row per variant (Eq. 5), the test's settings, and notes on failed toys and bounds.

    Renders whatever each ``gof/VARIANT.json`` holds: a failed variant shows its message, a
    file that cannot be read says so, non-finite numbers show as "—".
    """
    rows: list[GofRow] = []
    settings: dict[str, Any] = {}
    notes: list[str] = []
    bases: list[dict[str, Any]] = []
    if not run.has_results("gof"):
        return rows, settings, notes
    for variant in cfg.gof.variants:
        try:
            record = load_gof(run, variant)
        except Exception as exc:  # noqa: BLE001 -- one unreadable variant must not hide the rest
            rows.append(_raw_gof_row(run, variant, exc))
            continue
        if record is None:
            continue
        # Failure texts from the file too: a field the result object does not (yet) hold.
        raw = _get(lambda variant=variant: load_gof_json(run, variant)) or {}
        row, found = _gof_row(record, failure_of(raw))
        rows.append(row)
        res = record.result
        if res is not None:
            bases.append(_get(lambda res=res: res.kernel_basis) or {})
            n_failed = _get(lambda res=res: res.n_failed)
            bounds = _get(lambda res=res: res.p_bounds)
            if n_failed and bounds is not None and record.error is None:
                notes.append(f"{record.variant}: {failed_toys_line(res)}, left out of p; p in "
                             f"[{bounds[0]:.3g}, {bounds[1]:.3g}] counting them below or above "
                             "t_obs")
            elif n_failed:
                notes.append(f"{record.variant}: {failed_toys_line(res)}")
            if found:
                settings = {k: _get(lambda res=res, k=k: getattr(res, k)) for k in _GOF_SETTINGS}
    if any(r.z_is_bound for r in rows):
        notes.append("Z marked ≥: t_obs exceeds every toy, so the toys only bound Z from below; "
                     "run more toys, or read the χ² column (an extrapolation)")
    if rows:
        basis = next((b for b in bases if b), {})
        # Which kernel basis the test used (units, transformed coordinates), as it recorded it.
        settings["kernel basis"] = kernel_basis_text(basis) or f"σ = {cfg.gof.sigma:g}"
        settings["λ_net"] = cfg.gof.lambda_net
    return rows, settings, notes


def _gof_row(record: GofRecord, saved_failure: str = "") -> tuple[GofRow, bool]:
    """The table row of one saved variant, and whether it holds a result."""
    nan = math.nan
    res = record.result
    failure = "; ".join(dict.fromkeys(t for t in (failure_of(record), saved_failure) if t))
    if res is None:
        return GofRow(record.variant, nan, nan, nan, failure=failure or "no result saved"), False
    t_obs = _float(res.t_obs)
    if math.isnan(t_obs):
        # No observed statistic: p and Z computed against it would be numbers about nothing.
        return GofRow(record.variant, nan, nan, nan, n_toys=_get(lambda: res.n_toys),
                      failure=failure or "t_obs is undefined (NaN)"), True
    z, band = _get(lambda: res.z), None
    if record.z_summary is not None:
        z = record.z_summary.median
        band = (record.z_summary.lower, record.z_summary.upper)
    return GofRow(record.variant, t_obs, _float(_get(lambda: res.p_value)), _float(z),
                  z_chi2=_get(lambda: res.z_chi2), n_toys=_get(lambda: res.n_toys),
                  z_band=band, z_is_bound=bool(_get(lambda: res.z_is_bound)),
                  p_interval=_get(lambda: res.p_interval),
                  p_interval_total=_get(lambda: res.p_interval_total),
                  failure=failure), True


def _raw_gof_row(run: RunDir, variant: str, exc: Exception) -> GofRow:
    """What a ``gof/VARIANT.json`` that :func:`load_gof` cannot read still says."""
    raw = _get(lambda: load_gof_json(run, variant))
    raw = raw if isinstance(raw, dict) else {}
    why = failure_of(raw)
    toys = raw.get("t_null")
    return GofRow(variant, _float(raw.get("t_obs")), _float(raw.get("p_value")),
                  _float(raw.get("z")), z_chi2=_float(raw.get("z_chi2_extrapolated")),
                  n_toys=len(toys) if isinstance(toys, list) else None,
                  failure=(why + "; " if why else "") + "the saved result cannot be read "
                          f"({type(exc).__name__}: {exc})")


def _context_rows(run: RunDir, cfg: Config) -> dict[str, list[GofRow]]:
    """Conditional runs: per variant, a row per context bin, the combined test (the sum of
    the bins' t) and the look-elsewhere-corrected smallest p."""
    if cfg.context is None:
        return {}
    out: dict[str, list[GofRow]] = {}
    for variant in cfg.gof.variants:
        result = _get(lambda variant=variant: load_conditional_gof(run, variant))
        if result is None:
            continue
        rows = [_gof_row(GofRecord(label, res))[0]
                for label, res in zip(result.bins.labels, result.per_bin, strict=True)]
        rows.append(_gof_row(GofRecord("combined (sum of the bins' t)", result.combined))[0])
        rows.append(GofRow("smallest p, look-elsewhere corrected", math.nan,
                           _float(result.p_global), _float(result.z_global),
                           n_toys=result.n_toys,
                           note=f"smallest per-bin p = {result.p_min:.3g} in "
                                f"{result.bins.labels[result.bin_min]}"
                           if result.bin_min >= 0 else ""))
        out[variant] = rows
    return out


def _deviations(run: RunDir) -> dict[str, Any] | None:
    """Where the alternative departs from REF, when the gof stage recorded it."""
    return _get(lambda: load_deviations(run)) if run.has_results("gof") else None


def _coverage_rows(run: RunDir) -> list[CoverageRow]:
    """Coverage at the judged (first) level per feature (Eq. 4), when the study ran."""
    record = load_coverage(run) if run.has_results("coverage") else None
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
    sampler = load_sampler(run) if run.is_done("sample") else None
    if sampler is not None:
        rows["negative mass of f (samples)"] = _mass(sampler)
    if sampler is not None and "method" in sampler:  # the conditional sampler has no method
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
        info = run.stage_info(stage) if run.is_done(stage) else None
        if info is None:
            continue
        notes += [f"{stage}: {w}" for w in info.get("warnings", [])]
        if "skipped" in info:
            notes.append(f"{stage} skipped: {info['skipped']}")
    return notes


def _figures(run: RunDir, paper: bool) -> dict[str, Path]:
    """Caption to PNG of every figure that was drawn, in the report's order (the paper's
    figure number cited for the paper's toy study only)."""
    figures = {}
    done = {stage: run.has_results(stage) for stage in STAGES}
    for stem, caption, paper_figure, stage in _FIGURES:
        png = run.root / "figures" / f"{stem}.png"
        if png.is_file() and done[stage]:
            cite = f" (paper {paper_figure})" if paper and paper_figure else ""
            figures[caption + cite] = png
    return figures


def _provenance(run: RunDir) -> dict[str, Any]:
    """Versions, seeds, device, config hash and the seconds each stage took."""
    meta = run.metadata()
    provenance = {k: meta[k] for k in ("genval_version", "created", "python", "platform",
                                       "seed", "device", "config_hash") if k in meta}
    provenance["stage seconds"] = {s: v.get("seconds") for s, v in meta.get("stages",
                                                                            {}).items()}
    return provenance
