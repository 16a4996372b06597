"""A self-contained ``report.html``: tables, notes and figures of a run in one file.

The report has no external references (figures are base64 PNGs, styles inline), so it can be
mailed or attached to a logbook as one file. It takes plain values (rows and PNG files), not
genval result objects, so it renders whatever subset of the stages has run, and whatever a
stage recorded: a GoF variant that failed shows its message, undefined numbers show as "—".
The paper's published numbers (from :mod:`genval.paper`) appear only when asked for
(``paper=True``, the paper's toy study): beside a user's own data they mean nothing.

References:
    Badaracco et al., Sec. 4 (Z = 20.29, 4.13, 0.92 for a single flow, the frozen ensemble and
    the ensemble with uncertainty) and App. A (coverage 61.3 % and 68.7 %).
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genval._atomic import atomic_write_text
from genval._version import __version__
from genval.coverage import COVERAGE_CL, coverage_interval
from genval.errors import InputError
from genval.gof.statistic import VARIANT_LABELS
from genval.paper import PAPER_COVERAGE, PAPER_Z

__all__ = ["GofRow", "CoverageRow", "render_report", "write_report"]


@dataclass(frozen=True)
class GofRow:
    """One GoF variant. ``z_band`` is the 16–84 % band over test sets, when there are several.

    ``p_interval`` is the Clopper–Pearson interval of the toys' tail fraction, ``p_interval_total``
    the same widened by the toy pools' share (``GoFResult.p_interval_total``). ``failure``:
    why the variant has no (trustworthy) result, shown in the row; numbers may then be NaN.
    """

    variant: str
    t_obs: float
    p_value: float
    z: float
    z_chi2: float | None = None
    n_toys: int | None = None
    z_band: tuple[float, float] | None = None
    z_is_bound: bool = False
    note: str = ""
    p_interval: tuple[float, float] | None = None
    p_interval_total: tuple[float, float] | None = None
    failure: str = ""


@dataclass(frozen=True)
class CoverageRow:
    """Coverage of one feature's observable at the nominal level (paper Eq. 4)."""

    feature: str
    truth: float
    coverage: float
    n_datasets: int
    nominal: float = 0.6827


def _num(value: float | None, digits: int = 4) -> str:
    """Significant digits, with the special values spelled out."""
    try:
        value = None if value is None else float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}"


def _paper_z(variant: str) -> str:
    if variant not in PAPER_Z:
        return "—"
    med, up, down = PAPER_Z[variant]
    return f"{med:.2f} ± {up:.2f}" if up == down else \
        f"{med:.2f} <sup>+{up:.2f}</sup><sub>−{down:.2f}</sub>"


def _interval(bounds: Sequence[float] | None) -> str:
    if bounds is None or len(bounds) != 2:
        return "—"
    return f"[{_num(bounds[0], 3)}, {_num(bounds[1], 3)}]"


def _z_cell(r: GofRow) -> str:
    """Z with "≥" when it is only a bound, and its 16–84 % band over test sets."""
    # t_obs beyond every toy: the toys only bound Z from below.
    if r.z is None or not math.isfinite(r.z):
        return _num(r.z)
    z = f"≥ {r.z:.2f}" if r.z_is_bound else f"{r.z:.2f}"
    if r.z_band is not None and all(math.isfinite(b) for b in r.z_band):
        z += f" <sup>+{r.z_band[1] - r.z:.2f}</sup><sub>−{r.z - r.z_band[0]:.2f}</sub>"
    return z


def _gof_table(rows: Sequence[GofRow], paper: bool) -> str:
    head = ("<tr><th>variant</th><th>t<sub>obs</sub></th><th>p (toys)</th>"
            "<th>p interval: Clopper–Pearson</th><th>p interval: with the pools' share</th>"
            "<th>Z (toys)</th><th>Z (χ² extrapolation)</th><th>toys</th>"
            + ("<th>paper Z (2D toy)</th>" if paper else "") + "</tr>")
    body = []
    for r in rows:
        label = html.escape(VARIANT_LABELS.get(r.variant, r.variant))
        note = f"<br><small>{html.escape(r.note)}</small>" if r.note else ""
        failed = (f"<br><span class='failed'>failed: {html.escape(r.failure)}</span>"
                  if r.failure else "")
        body.append(f"<tr><td>{label}{failed}{note}</td><td>{_num(r.t_obs)}</td>"
                    f"<td>{_num(r.p_value)}</td><td>{_interval(r.p_interval)}</td>"
                    f"<td>{_interval(r.p_interval_total)}</td><td><b>{_z_cell(r)}</b></td>"
                    f"<td>{_num(r.z_chi2, 3)}</td>"
                    f"<td>{'—' if r.n_toys is None else r.n_toys}</td>"
                    + (f"<td>{_paper_z(r.variant)}</td>" if paper else "") + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _coverage_cell(row: CoverageRow) -> str:
    """The covered fraction with its Clopper–Pearson interval (as the coverage figure)."""
    if not math.isfinite(row.coverage):
        return "—"
    if not row.n_datasets:
        return f"{100 * row.coverage:.1f} %"
    lower, upper = coverage_interval(round(row.coverage * row.n_datasets), row.n_datasets)
    return (f"{100 * row.coverage:.1f} <sup>+{100 * (upper - row.coverage):.1f}</sup>"
            f"<sub>−{100 * (row.coverage - lower):.1f}</sub> %")


def _coverage_table(rows: Sequence[CoverageRow], paper: bool) -> str:
    head = ("<tr><th>feature</th><th>O*</th>"
            f"<th>coverage ({100 * COVERAGE_CL:.1f} % CL Clopper–Pearson)</th>"
            "<th>nominal</th><th>datasets</th>"
            + ("<th>paper (2D toy)</th>" if paper else "") + "</tr>")
    body = []
    for i, r in enumerate(rows):
        ref = f"{100 * PAPER_COVERAGE[i]:.1f} %" if i < len(PAPER_COVERAGE) else "—"
        body.append(f"<tr><td>{html.escape(r.feature)}</td><td>{_num(r.truth)}</td>"
                    f"<td><b>{_coverage_cell(r)}</b></td>"
                    f"<td>{100 * r.nominal:.1f} %</td><td>{r.n_datasets}</td>"
                    + (f"<td>{ref}</td>" if paper else "") + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _deviation_tables(record: Mapping[str, Any]) -> str:
    """The alternative's strongest kernels and, per feature, the largest |LRT RECO / REF − 1|."""
    parts = []
    variant = record.get("variant")
    if not variant:
        return "<p class='muted'>No GoF variant produced an alternative to show.</p>"
    who = html.escape(VARIANT_LABELS.get(str(variant), str(variant)))
    kernels = list(record.get("kernels") or [])
    units = {str(f.get("feature")): str(f.get("unit") or "") for f in record.get("features") or []}
    if kernels:
        features = list(kernels[0].get("centre", {}))
        head = ("<tr><th>kernel</th><th>a<sub>k</sub></th><th>≈ events N·a<sub>k</sub></th>"
                + "".join(f"<th>{html.escape(f)}"
                          f"{' [' + html.escape(units[f]) + ']' if units.get(f) else ''}</th>"
                          for f in features) + "</tr>")
        body = "".join(
            f"<tr><td>{html.escape(str(k.get('kernel')))}</td><td>{_num(k.get('a'), 3)}</td>"
            f"<td>{_num(k.get('events'), 3)}</td>"
            + "".join(f"<td>{_num(k.get('centre', {}).get(f), 4)}</td>" for f in features)
            + "</tr>" for k in kernels)
        parts.append(f"<p>Kernels of the alternative ({who}) with the largest |a<sub>k</sub>|, "
                     "at their centres: a positive a<sub>k</sub> adds events there (the data "
                     "exceed the model), a negative one removes them.</p>"
                     f"<table>{head}{body}</table>")
    rows = [f for f in record.get("features") or [] if f.get("max_abs_deviation") is not None]
    if rows:
        rows.sort(key=lambda f: -float(f["max_abs_deviation"]))
        body = "".join(
            f"<tr><td>{html.escape(str(f.get('feature')))}</td>"
            f"<td>{_num(100 * float(f['max_abs_deviation']), 3)} %</td>"
            f"<td>{_num(f.get('reco_over_ref'), 4)}</td><td>{_interval(f.get('bin'))}"
            f"{' ' + html.escape(str(f['unit'])) if f.get('unit') else ''}</td></tr>"
            for f in rows)
        parts.append("<p>Per feature, the bin (with at least 10 expected events) where LRT "
                     "RECO departs most from REF.</p><table><tr><th>feature</th>"
                     "<th>max |RECO / REF − 1|</th><th>RECO / REF</th><th>bin</th></tr>"
                     f"{body}</table>")
    return "".join(parts) or "<p class='muted'>The alternative did not move away from REF.</p>"


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table class='kv'>{rows}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return _num(value, 4)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _figure(caption: str, png: bytes | str | os.PathLike[str]) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise InputError(f"figure {caption!r} is not a PNG image")
    b64 = base64.b64encode(data).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption, quote=True)}' "
            f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(caption)}</figcaption>"
            "</figure>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccd;padding:.3em .7em;
text-align:right}th{background:#eef2f8}td:first-child,.kv th{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}.muted{color:#666}
ul.notes li{color:#8a4b00}.failed{color:#b00020;font-weight:600}
"""


def render_report(*, title: str = "genval report", gof: Sequence[GofRow] = (),
                  gof_settings: Mapping[str, Any] | None = None,
                  coverage: Sequence[CoverageRow] = (),
                  figures: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
                  fit: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                  config_yaml: str | None = None, notes: Sequence[str] = (),
                  paper: bool = False, deviations: Mapping[str, Any] | None = None,
                  context: Mapping[str, Sequence[GofRow]] | None = None) -> str:
    """The report as one HTML string.

    Args:
        title: page title.
        gof: one row per GoF variant (shown beside the paper's Z with ``paper``).
        gof_settings: kernels, σ, toys, constraint centre, pool size, ... shown below it.
        coverage: one row per feature (shown beside the paper's coverage with ``paper``).
        figures: caption to PNG (bytes or a path), embedded in order.
        fit: w_i f_i fit diagnostics (converged, iterations, NLL, condition number, ...).
        metadata: run provenance (versions, seeds, device, timings).
        config_yaml: the resolved configuration.
        notes: caveats to show prominently (non-converged fits, extrapolated Z, ...).
        paper: the run is the paper's toy study (:func:`genval.paper.is_paper_toy`): show the
            paper's published Z and coverage beside genval's.
        deviations: where the alternative departs from REF (the gof stage's
            ``gof/deviations.json``), shown as tables.
        context: conditional runs: per variant, one row per context bin, the combined test
            and the look-elsewhere-corrected smallest p (Z per bin beside the combined Z).
    """
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='muted'>genval {html.escape(__version__)} — uncertainty-aware validation "
             "of generative models (Badaracco et al., <i>An end-to-end pipeline for "
             "uncertainty-aware validation of generative AI</i>).</p>"]
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f"<h2>Notes</h2><ul class='notes'>{items}</ul>")
    if gof:
        parts.append("<h2>Goodness of fit (Eq. 5)</h2>"
                     "<p>Learned likelihood-ratio test of each variant on held-out test data; "
                     "p from the null toys, Z = Φ⁻¹(1 − p). Beyond the toys' reach Z comes from "
                     "a scaled χ² fitted to the null, labelled as an extrapolation.</p>")
        parts.append(_gof_table(gof, paper))
        if gof_settings:
            parts.append(_kv_table(gof_settings))
    for variant, rows in (context or {}).items():
        label = html.escape(VARIANT_LABELS.get(variant, variant))
        parts.append(f"<h2>Per context bin: {label}</h2>"
                     "<p>The test of Eq. (5) within each context bin of the conditional "
                     "members, the sum of the bins' t, and the smallest p corrected for the "
                     "look elsewhere, all calibrated with the same joint toys.</p>")
        parts.append(_gof_table(rows, False))
    if coverage:
        parts.append("<h2>Coverage of the first moment (Eq. 4)</h2>")
        parts.append(_coverage_table(coverage, paper))
    if deviations:
        parts.append("<h2>Where the alternative deviates</h2>" + _deviation_tables(deviations))
    if fit:
        parts.append("<h2>w<sub>i</sub>f<sub>i</sub> fit (Eqs. 1–2)</h2>" + _kv_table(fit))
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(caption, png) for caption, png in figures.items())
    if metadata:
        parts.append("<h2>Provenance</h2>" + _kv_table(metadata))
    if config_yaml:
        parts.append(f"<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Render with :func:`render_report` (same keyword arguments) and write atomically."""
    return atomic_write_text(path, render_report(**kwargs))
