"""The report stage: gather what earlier stages wrote into ``report.html``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from genval.pipeline._common import Log, quiet
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


def stage_report(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Write ``report.html`` from whatever the earlier stages produced."""
    from genval.report import CoverageRow, GofRow, write_report

    cfg = run.config()
    notes: list[str] = []
    gof_rows = []
    settings: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        path = run.root / "gof" / f"{variant}.json"
        if not path.is_file():
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        if "error" in rec:
            gof_rows.append(GofRow(variant, float("nan"), float("nan"), float("nan"),
                                   note=f"undefined: {rec['error']}"))
            continue
        band = None
        z = float(rec["z"])
        if "z_summary" in rec:
            z = float(rec["z_summary"]["median"])
            band = (float(rec["z_summary"]["lower"]), float(rec["z_summary"]["upper"]))
        if rec.get("n_failed"):
            notes.append(f"{variant}: {rec['n_failed']} toy fits did not converge")
        gof_rows.append(GofRow(variant, float(rec["t_obs"]), float(rec["p_value"]), z,
                               z_chi2=_float_or_none(rec.get("z_chi2_extrapolated")),
                               n_toys=rec.get("n_toys"), z_band=band,
                               z_is_bound=bool(rec.get("z_is_lower_bound"))))
        settings = {k: rec[k] for k in ("n_kernels", "centre", "poisson", "pool_size",
                                        "n_test", "overlap", "seed") if k in rec}
    if any(r.z_is_bound for r in gof_rows):
        notes.append("Z marked ≥: t_obs exceeds every toy, so the toys only bound Z from below; "
                     "run more toys, or read the χ² column (an extrapolation)")
    if gof_rows:
        settings["kernel σ"] = cfg.gof.sigma
        settings["λ_net"] = cfg.gof.lambda_net
    coverage_rows = []
    cov_path = run.root / "coverage" / "coverage.json"
    if cov_path.is_file():
        rec = json.loads(cov_path.read_text(encoding="utf-8"))
        fractions = np.asarray(rec["fractions"], dtype=np.float64)
        for j, name in enumerate(rec["features"]):
            frac = fractions[j, 0] if fractions.ndim > 1 else fractions[j]
            coverage_rows.append(CoverageRow(name, rec["truth"][j], float(frac),
                                             int(rec["n_datasets"]), rec["levels"][0]))
    fit_info = None
    fit_path = run.root / "fit" / "fit.json"
    if fit_path.is_file():
        rec = json.loads(fit_path.read_text(encoding="utf-8"))
        notes += [f"w_i f_i fit: {m}" for m in rec.get("messages", [])]
        fit_info = {k: rec[k] for k in ("converged", "n_iter", "nll", "grad_norm",
                                        "hessian_condition", "effective_rank", "n_events",
                                        "n_unidentified") if k in rec}
    for stage in STAGES:
        marker = run.root / ".stages" / f"{stage}.json"
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8")).get("info", {})
            notes += [f"{stage}: {w}" for w in info.get("warnings", [])]
            if "skipped" in info:
                notes.append(f"{stage} skipped: {info['skipped']}")
    figures = {}
    for stem, caption in _FIGURE_CAPTIONS.items():
        png = run.root / "figures" / f"{stem}.png"
        if png.is_file():
            figures[caption] = png
    meta = run.metadata()
    provenance = {k: meta[k] for k in ("genval_version", "created", "python", "platform",
                                       "seed", "device", "config_hash") if k in meta}
    provenance["stage seconds"] = {s: v.get("seconds") for s, v in meta.get("stages",
                                                                            {}).items()}
    write_report(run.report_path, title=cfg.report.title, gof=gof_rows, gof_settings=settings,
                 coverage=coverage_rows,
                 figures=figures, fit=fit_info, metadata=provenance,
                 config_yaml=run.config_path.read_text(encoding="utf-8"), notes=notes)
    return {"figures": len(figures), "variants": [r.variant for r in gof_rows]}


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
