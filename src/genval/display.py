"""Notebook display of genval's results: PDG-rounded numbers, HTML tables, validity flags.

Every ``_repr_html_`` of genval delegates here (:class:`~genval.wifi.WeightFit`,
:class:`~genval.gof.GoFResult`, :class:`~genval.coverage.CoverageResult`,
:class:`~genval.runs.Run`), so a notebook shows each result the same way: a title, the flags
that say whether the number can be trusted (converged fits, failed toys, a Z that is only a
bound, negative mass, recorded warnings) before the numbers, and every value with its error
rounded by the Particle Data Group's rule.

The PDG rule (Review of Particle Physics, Introduction, "Rounding"): the three highest-order
digits of the error decide the precision. From 100 to 354 the error keeps two significant
digits, from 355 to 949 one, and from 950 to 999 it is rounded up to 1000 and keeps two; the
value is rounded to the same decimal place. :func:`pdg_exponent` applies it. Numbers are
handled as the decimals they print as (``repr``), so ``0.0355`` is 355, not 354.99...

This module works on any object with the attributes it reads (it imports no result class), so
the classes it renders can import it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np

from genval.errors import InputError

__all__ = [
    "pdg_exponent",
    "pdg_round",
    "format_measurement",
    "format_interval",
    "flag",
    "html_table",
    "kv_table",
    "figure_html",
    "weight_fit_html",
    "gof_result_html",
    "conditional_gof_html",
    "coverage_html",
    "run_html",
]

_OK, _BAD, _WARN = "#1a7f37", "#cf222e", "#9a6700"
_TABLE = "border-collapse:collapse;margin:.3em 0"
_CELL = "border:1px solid #d0d7de;padding:.2em .6em;text-align:right"
_HEAD = _CELL + ";background:#f0f3f8"
_FIRST = "border:1px solid #d0d7de;padding:.2em .6em;text-align:left"
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")

SCIENTIFIC_ABOVE = 5
"""Decimal exponent of the larger of |value| and error from which a common power of ten is
factored out (``(1.23 ± 0.05) × 10⁵``); also below ``-SCIENTIFIC_BELOW``."""
SCIENTIFIC_BELOW = 4


def _decimal(x: float) -> Decimal:
    """``x`` as the decimal it prints as (``repr``): the digits a reader sees."""
    return Decimal(repr(float(x)))


def pdg_exponent(error: float) -> int:
    """Decimal exponent ``q`` of the last digit the PDG rule keeps for ``error``.

    The error and the value are both rounded to a multiple of ``10**q``: two significant
    digits of the error when its three leading digits are 100–354 or 950–999 (the latter
    rounds up to 1000), one when they are 355–949.

    Raises:
        InputError: if ``error`` is not finite and positive.
    """
    if not (math.isfinite(error) and error > 0):
        raise InputError(f"the PDG rule needs a finite positive error, got {error!r}")
    e = _decimal(error)
    k = e.adjusted()
    leading = int(e.scaleb(2 - k).to_integral_value(rounding=ROUND_DOWN))
    return k - 1 if leading <= 354 else k


def _fixed(x: Decimal, q: int) -> str:
    """``x`` rounded half-up to a multiple of ``10**q``, in positional notation."""
    text = format(x.quantize(Decimal(1).scaleb(q), rounding=ROUND_HALF_UP), "f")
    # -0.00 reads as a sign the number does not have.
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def pdg_round(value: float, error: float) -> tuple[str, str]:
    """``value`` and ``error`` as strings, rounded by the PDG rule (:func:`pdg_exponent`).

    Examples: ``(1.23456, 0.0123) -> ("1.235", "0.012")``,
    ``(1.23456, 0.0355) -> ("1.23", "0.04")``, ``(1.23456, 0.0951) -> ("1.23", "0.10")``.

    Raises:
        InputError: if ``value`` is not finite, or ``error`` not finite and positive.
    """
    if not math.isfinite(value):
        raise InputError(f"cannot round a non-finite value {value!r}")
    q = pdg_exponent(error)
    return _fixed(_decimal(value), q), _fixed(_decimal(error), q)


def _scale_exponent(*magnitudes: float) -> int:
    """The power of ten to factor out of numbers this large or small (0 when none)."""
    largest = max(abs(m) for m in magnitudes)
    if largest == 0:
        return 0
    exponent = _decimal(largest).adjusted()
    return exponent if exponent >= SCIENTIFIC_ABOVE or exponent <= -SCIENTIFIC_BELOW else 0


def _power(exponent: int, html_: bool) -> str:
    if html_:
        return f" × 10<sup>{exponent}</sup>"
    return " × 10" + str(exponent).translate(_SUPERSCRIPT)


def _plain(value: float, digits: int = 4) -> str:
    """A number without an error: significant digits, special values spelled out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}"


def format_measurement(value: float, error: float, *, html: bool = False) -> str:
    """``value ± error`` with the PDG rounding, e.g. ``"0.035 ± 0.012"``.

    Very large or small numbers share one power of ten: ``"(1.23 ± 0.05) × 10⁻⁷"``. An error
    that is zero, negative or not finite gives the value with 4 significant digits and the
    error as it is (``"1.5 ± 0"``, ``"1.5 ± nan"``): no rounding rule applies to it.
    """
    if not math.isfinite(value) or not (math.isfinite(error) and error > 0):
        return f"{_plain(value)} ± {_plain(error)}"
    exponent = _scale_exponent(value, error)
    if exponent:
        v, e = (float(_decimal(x).scaleb(-exponent)) for x in (value, error))
        v_text, e_text = pdg_round(v, e)
        return f"({v_text} ± {e_text}){_power(exponent, html)}"
    v_text, e_text = pdg_round(value, error)
    return f"{v_text} ± {e_text}"


def format_interval(value: float, lower: float, upper: float, *, scale: float = 1.0,
                    html: bool = False) -> str:
    """``value [lower, upper]``, all rounded to one decimal place chosen by the PDG rule.

    The precision is that of the smaller non-zero distance from ``value`` to a bound (the
    stricter reading of an asymmetric error). ``scale`` multiplies every number first (100 for
    percent). Without a usable distance the numbers keep 4 significant digits.
    """
    v, lo, hi = (float(x) * scale for x in (value, lower, upper))
    if not all(math.isfinite(x) for x in (v, lo, hi)):
        return f"{_plain(v)} [{_plain(lo)}, {_plain(hi)}]"
    widths = [w for w in (abs(v - lo), abs(hi - v)) if w > 0]
    if not widths:
        return f"{_plain(v)} [{_plain(lo)}, {_plain(hi)}]"
    exponent = _scale_exponent(v, lo, hi)
    if exponent:
        v, lo, hi, width = (float(_decimal(x).scaleb(-exponent)) for x in
                            (v, lo, hi, min(widths)))
    else:
        width = min(widths)
    q = pdg_exponent(width)
    text = f"{_fixed(_decimal(v), q)} [{_fixed(_decimal(lo), q)}, {_fixed(_decimal(hi), q)}]"
    return f"({text}){_power(exponent, html)}" if exponent else text


# --- HTML building blocks --------------------------------------------------------------------

def flag(ok: bool | None, text: str) -> str:
    """A coloured validity flag: ✔ (green) when ``ok``, ✘ (red) when not, ⚠ (amber) for None."""
    symbol, colour = ("✔", _OK) if ok else ("⚠", _WARN) if ok is None else ("✘", _BAD)
    return f"<span style='color:{colour}'>{symbol} {html.escape(text)}</span>"


def _cell(content: Any, tag: str, first: bool) -> str:
    style = _HEAD if tag == "th" else _FIRST if first else _CELL
    return f"<{tag} style='{style}'>{content}</{tag}>"


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table; header cells are escaped, row cells are inserted as given (already HTML)."""
    head = "".join(_cell(html.escape(h), "th", False) for h in header)
    body = "".join("<tr>" + "".join(_cell(c, "td", i == 0) for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table style='{_TABLE}'><tr>{head}</tr>{body}</table>"


def kv_table(items: Mapping[str, Any]) -> str:
    """A two-column table of names and values (values escaped; floats with 4 digits)."""
    rows = "".join(f"<tr>{_cell(html.escape(str(k)), 'td', True)}"
                   f"{_cell(html.escape(_value(v)), 'td', False)}</tr>" for k, v in items.items())
    return f"<table style='{_TABLE}'>{rows}</table>"


def _value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return _plain(float(v))
    return str(v)


def figure_html(caption: str, png: bytes, *, width: int | None = None) -> str:
    """A PNG embedded as base64 with its caption (no external file, so it travels).

    Raises:
        InputError: if ``png`` is not a PNG image.
    """
    if not png.startswith(b"\x89PNG"):
        raise InputError(f"figure {caption!r} is not a PNG image")
    b64 = base64.b64encode(png).decode("ascii")
    size = f" width='{int(width)}'" if width else ""
    return (f"<figure style='display:inline-block;margin:.4em'><img{size} "
            f"alt='{html.escape(caption, quote=True)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption style='font-size:.85em;color:#555'>{html.escape(caption)}"
            "</figcaption></figure>")


def _flags(items: Iterable[str]) -> str:
    return "<div>" + " &nbsp; ".join(items) + "</div>"


def _messages(messages: Iterable[str]) -> str:
    items = "".join(f"<li>{html.escape(str(m))}</li>" for m in messages)
    return f"<ul style='color:{_WARN};margin:.2em 0'>{items}</ul>" if items else ""


def _box(title: str, *parts: str) -> str:
    return (f"<div class='genval' style='font-family:system-ui,sans-serif;font-size:.92em'>"
            f"<b>{html.escape(title)}</b>" + "".join(parts) + "</div>")


# --- result renderers ------------------------------------------------------------------------

WEIGHTS_SHOWN = 10
"""Weights listed by a fit's display (largest |ŵ| first); the rest are counted."""


def weight_fit_html(fit: Any) -> str:
    """A :class:`~genval.wifi.WeightFit`: flags, diagnostics and the largest weights ± σ."""
    flags = [flag(bool(fit.converged), f"converged in {fit.n_iter} Newton iterations"
                  if fit.converged else f"NOT converged after {fit.n_iter} iterations")]
    if fit.n_unidentified:
        flags.append(flag(None, f"{fit.n_unidentified} weight direction(s) not resolved at the "
                                "input's precision (held at equal weights, prior variance)"))
    if getattr(fit, "ridge", 0.0) > 0:
        flags.append(flag(None, f"ridge toward equal weights on {fit.n_regularised} weakly "
                                f"identified direction(s), prior sd {fit.prior_std:.3g}"))
    if getattr(fit, "unsupported", ()):
        flags.append(flag(None, f"member(s) {list(fit.unsupported)} without support in the "
                                "weight-fit events: weight fixed at 0"))
    if fit.messages:
        flags.append(flag(None, f"{len(fit.messages)} warning(s)"))
    diagnostics = {"members M": fit.n_members, "events N": fit.n_events,
                   "NLL (Eq. 1)": float(fit.nll), "|gradient|": float(fit.grad_norm),
                   "cond(V)": float(fit.hessian_condition),
                   "effective rank": float(fit.effective_rank),
                   "Σŵ": f"{float(np.sum(fit.weights)):.12f}",
                   "Σ|ŵ|": float(fit.abs_weight_sum)}
    if np.isfinite(getattr(fit, "leverage", float("nan"))):
        diagnostics["largest leverage"] = float(fit.leverage)
    order = np.argsort(-np.abs(fit.weights), kind="stable")[:WEIGHTS_SHOWN]
    std = fit.weight_std
    rows = [(str(k), format_measurement(float(fit.weights[k]), float(std[k]), html=True))
            for k in order]
    more = fit.n_members - len(order)
    tail = f"<div style='color:#555'>… {more} more weight(s)</div>" if more > 0 else ""
    return _box("WeightFit (w_i f_i, Eqs. 1–2)", _flags(flags), _messages(fit.messages),
                kv_table(diagnostics),
                html_table(["member", "ŵ ± σ (sandwich, Eq. 2)"], rows), tail)


def gof_result_html(res: Any, *, labels: Mapping[str, str] | None = None) -> str:
    """A :class:`~genval.gof.GoFResult`: validity flags, then t, p and Z with their intervals;
    a failed result (``GoFResult.failure``) shows its cause and no p or Z."""
    label = (labels or {}).get(res.variant, res.variant)
    title = f"GoFResult: {label} (learned likelihood-ratio test, Eq. 5)"
    failure = res.failure
    if failure is not None:
        rows = [("t<sub>obs</sub> (Eq. 5)", html.escape(_plain(res.t_obs))),
                ("toys", f"{res.n_toys} ({res.n_failed} failed)")]
        return _box(title, _flags([flag(False, f"FAILED, no p-value and no Z: {failure}")]),
                    html_table(["", "value"], rows))
    observed_ok = bool(getattr(res.observed, "converged", True))
    flags = [flag(observed_ok, "observed fits converged" if observed_ok
                  else "observed fit NOT converged"),
             flag(res.n_failed == 0, _failed_toys(res) if res.n_failed
                  else f"all {res.n_toys} toy fits converged")]
    if res.z_is_bound:
        flags.append(flag(None, "t_obs beyond every toy: Z is a lower bound"))
    if res.negative_mass > 0:
        flags.append(flag(None, f"f(x; ŵ) has negative mass {res.negative_mass:.2g}"))
    p_lo, p_hi = res.p_interval
    t_lo, t_hi = res.p_interval_total
    z_lo, z_hi = res.z_interval
    z_text = (f"≥ {res.z:.2f}" if res.z_is_bound
              else format_interval(res.z, z_lo, z_hi, html=True))
    try:
        z_chi2 = f"{res.z_chi2:.2f} (extrapolated)"
    except InputError:
        z_chi2 = "— (too few toys)"
    cl = f"{100 * res.cl:.1f} %"
    rows = [("t<sub>obs</sub> (Eq. 5)", html.escape(_plain(res.t_obs))),
            (f"p [Clopper–Pearson {cl}]", format_interval(res.p_value, p_lo, p_hi, html=True)),
            ("p [with the pools' share]", format_interval(res.p_value, t_lo, t_hi, html=True)
             if res.p_pool_sd is not None else f"not measured ({res.n_pools} pool)"),
            (f"Z [{cl}]", f"<b>{z_text}</b>"),
            ("Z from a scaled χ² fit", z_chi2),
            ("toys above t<sub>obs</sub>", f"{res.n_above} of {res.n_toys}")]
    settings = {"N_test": res.n_test, "kernels K": res.n_kernels,
                "constraint centre": res.centre,
                "toys": f"{'Poisson' if res.poisson else 'fixed'} size, pool {res.pool_size} "
                        f"× {res.n_pools}, overlap {100 * res.overlap:.1f} %",
                "null": res.null, "seed": res.seed}
    return _box(title, _flags(flags), html_table(["", "value"], rows), kv_table(settings))


def _failed_toys(res: Any) -> str:
    """Failed toys and the p-values that count them below and above t_obs."""
    lo, hi = res.p_bounds
    return (f"{res.n_failed} of {res.n_toys} toy fits failed, left out of p "
            f"(p in [{lo:.3g}, {hi:.3g}] counting them below or above t_obs)")


def coverage_html(res: Any, *, cl: float, features: Sequence[str] | None = None) -> str:
    """A :class:`~genval.coverage.CoverageResult`: covered fractions with Clopper–Pearson
    intervals at ``cl`` per observable and level, and the pulls' mean and spread (Eq. 4)."""
    n_bad = int(np.sum(~np.asarray(res.converged, dtype=bool)))
    flags = [flag(n_bad == 0, f"{n_bad} of {res.n_datasets} weight fits not converged"
                  if n_bad else f"all {res.n_datasets} weight fits converged")]
    if res.messages:
        flags.append(flag(None, f"{len(res.messages)} warning(s)"))
    names = list(features) if features else [f"observable {p}" for p in range(len(res.truth))]
    bounds = res.intervals(cl)
    header = ["observable", "O*"] + [f"covered at {100 * lvl:.1f} % [{100 * cl:.1f} % CL]"
                                      for lvl in res.levels] + ["pull mean", "pull std"]
    rows = []
    pulls = np.asarray(res.pulls)
    for p, name in enumerate(names):
        cells = [html.escape(str(name)), html.escape(_plain(float(res.truth[p])))]
        cells += [format_interval(res.fractions[p, i], bounds[p, i, 0], bounds[p, i, 1],
                                  scale=100.0, html=True) + " %"
                  for i in range(len(res.levels))]
        finite = pulls[:, p][np.isfinite(pulls[:, p])]
        if finite.size >= 2:
            cells += [format_measurement(float(finite.mean()),
                                         float(finite.std(ddof=1) / np.sqrt(finite.size)),
                                         html=True),
                      html.escape(_plain(float(finite.std(ddof=1)), 3))]
        else:
            cells += ["—", "—"]
        rows.append(cells)
    detail = (f"<div style='color:#555'>{res.n_datasets} data sets of {res.n_events} events; "
              f"{res.n_generated} events generated per set ({html.escape(res.integrals)})"
              "</div>")
    return _box("CoverageResult (Eq. 4)", _flags(flags), _messages(sorted(set(res.messages))),
                html_table(header, rows), detail)


_STATE_FLAGS = {"done": True, "skipped": None, "stale": False}

FIGURE_WIDTH = 320
"""Width in pixels of a run's figures in its notebook display (the PNGs keep their size)."""


def _gof_row(variant: str, record: Any, labels: Mapping[str, str]) -> list[str]:
    label = html.escape(labels.get(variant, variant))
    res = record.result
    if record.error is not None or res is None:
        what = "undefined" if res is None else "FAILED"
        return [label, flag(False, f"{what}: {record.error}"), "—", "—", "—",
                "—" if res is None else str(res.n_toys)]
    z_lo, z_hi = res.z_interval
    z_text = (f"≥ {res.z:.2f}" if res.z_is_bound
              else format_interval(res.z, z_lo, z_hi, html=True))
    if record.z_summary is not None:
        band = record.z_summary
        z_text = (f"{band.median:.2f} <sup>+{band.upper - band.median:.2f}</sup>"
                  f"<sub>−{band.median - band.lower:.2f}</sub> (median of {band.n_sets} sets)")
    try:
        z_chi2 = f"{res.z_chi2:.2f}"
    except InputError:
        z_chi2 = "—"
    ok = bool(getattr(res.observed, "converged", True)) and res.n_failed == 0
    checks = flag(ok, "fits converged" if ok else _failed_toys(res))
    if res.z_is_bound:
        checks += " " + flag(None, "Z is a lower bound")
    p_lo, p_hi = res.p_interval
    return [label, checks, format_interval(res.p_value, p_lo, p_hi, html=True),
            f"<b>{z_text}</b>", z_chi2, str(res.n_toys)]


def conditional_gof_html(result: Any, *, labels: Mapping[str, str] | None = None,
                         variant: str | None = None) -> str:
    """A :class:`~genval.gof.ConditionalGoFResult`: Z per context bin beside the combined Z
    and the look-elsewhere-corrected smallest p."""
    name = variant or result.combined.variant
    label = html.escape((labels or {}).get(name, name))
    rows = []
    for bin_label, res in [*zip(result.bins.labels, result.per_bin, strict=True),
                           ("combined (sum of the bins' t)", result.combined)]:
        if not res.ok:
            rows.append([html.escape(bin_label), str(res.n_test),
                         flag(False, f"FAILED: {res.failure}"), "—", "—"])
            continue
        p_lo, p_hi = res.p_interval
        z = f"≥ {res.z:.2f}" if res.z_is_bound else f"{res.z:.2f}"
        rows.append([html.escape(bin_label), str(res.n_test), f"{res.t_obs:.4g}",
                     format_interval(res.p_value, p_lo, p_hi, html=True), f"<b>{z}</b>"])
    lee = ""
    if result.bin_min >= 0:
        lee = _flags([html.escape(
            f"smallest p = {result.p_min:.3g} in {result.bins.labels[result.bin_min]}; "
            f"look-elsewhere corrected p = {result.p_global:.3g}, Z = {result.z_global:.2f} "
            f"({result.n_toys} joint toys)")])
    return (f"<b>Per context bin: {label}</b>"
            + html_table(["context bin", "N", "t_obs", "p", "Z"], rows) + lee)


def run_html(run: Any, *, coverage_cl: float, labels: Mapping[str, str] | None = None) -> str:
    """A :class:`~genval.runs.Run`: stage status, the GoF variants, coverage (intervals at
    ``coverage_cl``), the fit's flags, recorded warnings and the figures."""
    labels = labels or {}
    status = run.status
    rows = []
    warnings: list[str] = []
    for stage, st in status.items():
        state = st.state
        mark = flag(_STATE_FLAGS[state], state) if state in _STATE_FLAGS else "—"
        if st.skipped:
            mark += f" <small>({html.escape(st.skipped)})</small>"
        rows.append([html.escape(stage), mark,
                     "—" if st.seconds is None else f"{float(st.seconds):.1f} s",
                     str(len(st.warnings)) if st.warnings else ""])
        warnings += [f"{stage}: {w}" for w in st.warnings]
    parts = [f"<div style='color:#555'>{html.escape(str(run.root))}</div>",
             html_table(["stage", "state", "time", "warnings"], rows)]
    fit = run.fit if status["fit"].done else None
    if fit is not None:
        fit_flags = [flag(bool(fit.converged), "w_i f_i fit converged" if fit.converged
                          else "w_i f_i fit NOT converged"),
                     html.escape(f"Σ|ŵ| = {fit.abs_weight_sum:.3g}, cond(V) = "
                                 f"{fit.hessian_condition:.3g}, M = {fit.n_members}")]
        parts.append(_flags(fit_flags))
    records = run.gof_records if status["gof"].done else {}
    if records:
        cl = next((f"{100 * r.result.cl:.1f} %" for r in records.values()
                   if r.result is not None), "68.3 %")
        parts.append("<b>Goodness of fit (Eq. 5)</b>" + html_table(
            ["variant", "checks", f"p [{cl}]", f"Z [{cl}]", "Z (χ² extrapolation)", "toys"],
            [_gof_row(v, r, labels) for v, r in records.items()]))
    for variant, result in (run.conditional_gof if status["gof"].done else {}).items():
        parts.append(conditional_gof_html(result, labels=labels, variant=variant))
    coverage = run.coverage if status["coverage"].done else None
    if coverage is not None:
        parts.append(coverage_html(coverage, cl=coverage_cl, features=run.coverage_features))
    parts.append(_messages(warnings))
    figures = [figure_html(name, path.read_bytes(), width=FIGURE_WIDTH)
               for name, path in run.figures.items()]
    if figures:
        parts.append("<div>" + "".join(figures) + "</div>")
    return _box("genval run", *parts)

