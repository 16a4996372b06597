"""The GoF stage's figures and where its alternative deviates (paper Figs. 1 and 2).

From one pool drawn from f(x; ŵ): the marginals of REF / DATA / LRT RECO per feature on a grid
(Fig. 1), 2D views of DATA against REF for chosen pairs of features, and a record of where the
learned alternative departs from the reference (the kernels with the largest |a_k| and the
features where LRT RECO / REF departs most from one), which the report shows as tables. Axis
labels and units come from ``data.labels`` / ``data.units``; per-event weights of the test
split, when the run has them, weight the DATA points.

A figure that cannot be drawn never costs the stage its results: it is skipped with a
:class:`~genval.pipeline.figures.FigureSkippedWarning` that names the reason.

References:
    Badaracco et al., Fig. 1 (marginals), Fig. 2 (null distributions), Eq. (3) (the bands),
    Eq. (5) (the kernels of the alternative).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from genval import gof, plots
from genval.config import Config
from genval.errors import InputError
from genval.gof import VARIANT_LABELS
from genval.members import Members
from genval.pipeline.artifacts import save_deviations
from genval.pipeline.figures import FigureSettingWarning, draw, figure_guard, remove_figure
from genval.products.binned import bin_integrals, binned_reference
from genval.row_scaling import scale_rows
from genval.rundir import RunDir
from genval.sampling import sample_mixture
from genval.wifi import WeightFit

__all__ = ["null_figure", "alternative_figures", "choose_pairs", "weights_of_test_split",
           "failure_of"]

PAIR_BINS = 20
"""Bins per axis of the 2D views."""

MAX_AUTO_PAIRS = 3
"""Pairs drawn with ``report.pairs: auto`` (the most correlated ones)."""

TOP_KERNELS = 5
"""Kernels of the alternative listed (and marked on the 2D views), by |a_k|."""

MIN_EXPECTED_EVENTS = 10.0
"""Bins where REF expects fewer events are left out of the LRT RECO / REF deviations."""


_FAILURE_FIELDS = ("error", "failure", "failure_message", "message", "cause")
"""Where a GoF record or result may say why a variant failed (read tolerantly, by name)."""


def failure_of(obj: Any) -> str:
    """Why a GoF variant has no trustworthy result: the texts a :class:`GofRecord`, a
    :class:`~genval.gof.GoFResult` or a raw ``gof/VARIANT.json`` mapping carries under
    :data:`_FAILURE_FIELDS`, joined ("" if none).
    """
    texts: list[str] = []
    for source in (obj, getattr(obj, "result", None)):
        for name in _FAILURE_FIELDS if source is not None else ():
            value = source.get(name) if isinstance(source, Mapping) else _or_none(
                lambda source=source, name=name: getattr(source, name, None))
            if isinstance(value, BaseException):
                value = f"{type(value).__name__}: {value}"
            if isinstance(value, str) and value.strip() and value.strip() not in texts:
                texts.append(value.strip())
    return "; ".join(texts)


def null_figure(run: RunDir, variant: str, results: Sequence[gof.GoFResult],
                z_summary: gof.ZSummary | None) -> None:
    """Paper Fig. 2; with several test sets, their median t and Z, and every t_obs.

    Whatever a result holds is drawn: non-finite t_obs or toys, a χ² that cannot be fitted,
    and the failure a result reports (:func:`failure_of`).
    """
    res = results[0]
    message = failure_of(res) or None
    several = z_summary is not None
    chi2 = _or_none(lambda: res.chi2_fit)
    # Failed toys are left out of p (GoFResult.toy_ok), so out of the histogram too.
    ok = _or_none(lambda: res.toy_ok)
    t_null = res.t_null if ok is None else np.asarray(res.t_null)[np.asarray(ok, dtype=bool)]
    draw(run, f"null_{variant}", plots.plot_null, t_null=t_null,
         t_obs=float(np.median([r.t_obs for r in results])) if several else res.t_obs,
         z=z_summary.median if z_summary is not None else _or_none(lambda: res.z),
         p_value=None if several else _or_none(lambda: res.p_value),
         chi2_scale=None if chi2 is None else chi2.scale,
         chi2_dof=None if chi2 is None else chi2.dof,
         z_chi2=None if several else _or_none(lambda: res.z_chi2),
         label=VARIANT_LABELS.get(variant, variant),
         t_obs_sets=[r.t_obs for r in results] if several else None, message=message)


def _or_none(get: Any) -> Any:
    """``get()``, or None when the value cannot be computed (too few finite toys, ...)."""
    try:
        return get()
    except Exception:  # noqa: BLE001 -- a figure shows what it can
        return None


def weights_of_test_split(run: RunDir) -> NDArray[np.float64] | None:
    """Per-event weights of the test split when the run has them (``data.weight``), else None.

    Read through ``genval.pipeline.artifacts.split_weights`` where that reader exists; runs
    without event weights (and versions without the reader) give None: unweighted DATA.
    """
    try:
        from genval.pipeline.artifacts import split_weights  # type: ignore[attr-defined]
    except ImportError:
        return None
    weights = split_weights(run, "test")
    return None if weights is None else np.asarray(weights, dtype=np.float64)


def choose_pairs(setting: str | Sequence[Sequence[str]], names: Sequence[str],
                 x: NDArray[np.float64]) -> list[tuple[int, int]]:
    """Feature index pairs of the 2D views.

    ``auto``: the one pair of a 2D data set; with more features the (up to
    :data:`MAX_AUTO_PAIRS`) pairs with the largest |Spearman rank correlation| on ``x``, the
    structure a model has to learn beyond the marginals. A list names the pairs.
    """
    d = len(names)
    if setting != "auto":
        index = {name: i for i, name in enumerate(names)}
        return [(index[a], index[b]) for a, b in setting if a in index and b in index]
    if d < 2:
        return []
    if d == 2:
        return [(0, 1)]
    ok = np.all(np.isfinite(x), axis=1)
    if ok.sum() < 3:
        return [(0, 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.corrcoef(stats.rankdata(x[ok], axis=0), rowvar=False)
    rho = np.nan_to_num(np.abs(rho))
    candidates = sorted(((rho[i, j], i, j) for i in range(d) for j in range(i + 1, d)),
                        key=lambda item: (-item[0], item[1], item[2]))
    return [(i, j) for _, i, j in candidates[:MAX_AUTO_PAIRS]]


def alternative_figures(run: RunDir, members: Members, fit: WeightFit, basis: gof.KernelBasis,
                        x_test: NDArray[np.float64], names: Sequence[str], stat: Any,
                        seed: int) -> None:
    """Fig. 1 (marginals), the 2D views and the alternative's deviations, from one pool.

    Every curve is a bin integral of ``h / f`` over a pool drawn from f(x; ŵ), a ratio, so the
    member and kernel densities enter with their rows scaled by one common factor per pool
    event (the scaling of :func:`genval.row_scaling.scale_rows`): nothing underflows in the
    tails.
    """
    cfg = run.config()
    _check_feature_settings(cfg, names)
    view = None
    with figure_guard("marginals"):
        # A pool independent of the GoF toys' pool; 20x the test size, within [5e4, 2e5].
        size = cfg.report.pool_size or int(np.clip(20 * len(x_test), 50_000, 200_000))
        pool = sample_mixture(members, fit.weights, size, seed)
        rows = scale_rows(pool.log_f, basis.log_pdf(pool.x), log=True)  # F = exp(log_s) · S
        reco_density = None
        phi, a = getattr(stat, "phi1", None), getattr(stat, "a", None)
        if phi is not None and a is not None and np.shape(phi) == fit.weights.shape:
            # H_{φ,a} is the density F·φ + G·a: the GoF profiles scale each row of F and G by
            # the same factor, so φ and a come back in density units; G takes the rows' scale.
            reco_density = rows.f @ np.asarray(phi) + rows.g @ np.asarray(a)
        view = _View(cfg, names, x_test, weights_of_test_split(run), pool.x, rows.f, fit,
                     reco_density)
        hists = [view.marginal(j) for j in range(len(names))]
        draw(run, "marginals", plots.plot_marginals, hists=hists,
             max_columns=cfg.report.max_columns)
    if view is None:
        return
    n_events = int(getattr(stat, "n_events", len(x_test)))
    kernels: list[dict[str, Any]] = []
    with figure_guard("deviations"):
        kernels = _top_kernels(basis, getattr(stat, "a", None), n_events, names)
        save_deviations(run, {
            "variant": getattr(stat, "variant", None), "n_events": n_events,
            "kernels": kernels,
            "features": [view.deviation(j, h) for j, h in enumerate(hists)],
        })
    with figure_guard("pairs"):
        pairs = choose_pairs(cfg.report.pairs, names, x_test)
        if pairs:
            draw(run, "pairs", plots.plot_pairs,
                 pairs=[view.pair(i, j, kernels) for i, j in pairs])
        else:
            remove_figure(run, "pairs")


def _check_feature_settings(cfg: Config, names: Sequence[str]) -> None:
    """Warn about figure settings that name no feature (the config cannot check them when
    ``data.features`` is null: every column of the file is read)."""
    used = {"data.labels": list(cfg.data.labels), "data.units": list(cfg.data.units)}
    if cfg.report.log_y != "auto":
        used["report.log_y"] = list(cfg.report.log_y)
    if cfg.report.pairs != "auto":
        used["report.pairs"] = [name for pair in cfg.report.pairs for name in pair]
    for key, listed in used.items():
        unknown = sorted(set(listed) - set(names))
        if unknown:
            warnings.warn(f"{key} names {unknown}, not features of the events "
                          f"({', '.join(names)}); ignored", FigureSettingWarning, stacklevel=3)


class _View:
    """Bins and reference integrals of one pool for the marginals and the 2D views."""

    def __init__(self, cfg: Config, names: Sequence[str], x: NDArray[np.float64],
                 weights: NDArray[np.float64] | None, pool_x: NDArray[np.float64],
                 S: NDArray[np.float64], fit: WeightFit, reco: NDArray[np.float64] | None):
        self.cfg, self.names, self.x, self.weights = cfg, list(names), x, weights
        self.pool_x, self.S, self.fit, self.reco = pool_x, S, fit, reco
        if weights is not None and weights.shape != (len(x),):
            raise InputError(f"the test split has {len(x)} events but {weights.size} event "
                             "weights")
        self.f = S @ fit.weights
        self.n_data = float(len(x) if weights is None else np.sum(weights))

    def _edges(self, j: int, bins: int, tail: float = 0.001) -> NDArray[np.float64]:
        """Round-width bins over the central ``1 − 2·tail`` of feature ``j``'s test events."""
        col = self.x[:, j][np.isfinite(self.x[:, j])]
        lo, hi = np.quantile(col, [tail, 1 - tail]) if col.size else (np.nan, np.nan)
        return plots.nice_edges(float(lo), float(hi), bins)

    def _label(self, j: int) -> tuple[str | None, str]:
        name = self.names[j]
        return self.cfg.data.labels.get(name), self.cfg.data.units.get(name, "")

    def marginal(self, j: int) -> plots.MarginalHistogram:
        """Feature ``j``: REF with its band (Eq. 3), DATA, LRT RECO."""
        edges = self._edges(j, self.cfg.report.bins)
        ref = binned_reference(self.pool_x[:, j], edges, self.S, self.fit.weights, self.fit.cov)
        reco = None
        if self.reco is not None:
            reco = bin_integrals(self.pool_x[:, j], edges, self.reco, self.f)[0][:, 0]
        data, sumw2 = _counts(self.x[:, j], edges, self.weights)
        log_y = self.cfg.report.log_y
        label, unit = self._label(j)
        return plots.MarginalHistogram(
            self.names[j], edges, ref.fraction, ref.std, data, reco, data_sumw2=sumw2,
            n_data=self.n_data, label=label, unit=unit,
            log_y=None if log_y == "auto" else self.names[j] in log_y)

    def pair(self, i: int, j: int, kernels: Sequence[dict[str, Any]]) -> plots.PairHistogram:
        """Features ``i`` and ``j`` in 2D: REF through a flat index of the 2D bins."""
        # 20 bins a side: leave the sparsest 0.5 % tails out, or they take half the plane.
        xe, ye = self._edges(i, PAIR_BINS, 0.005), self._edges(j, PAIR_BINS, 0.005)
        nx, ny = xe.size - 1, ye.size - 1
        flat = np.arange(nx * ny + 1) - 0.5  # bin k of the flat index holds the value k
        ref = binned_reference(_flat_index(self.pool_x[:, [i, j]], xe, ye), flat, self.S,
                               self.fit.weights, self.fit.cov)
        w = self.weights
        data, _, _ = np.histogram2d(self.x[:, i], self.x[:, j], [xe, ye], weights=w)
        sumw2 = None if w is None else np.histogram2d(self.x[:, i], self.x[:, j], [xe, ye],
                                                      weights=w * w)[0]
        (li, ui), (lj, uj) = self._label(i), self._label(j)
        names = (self.names[i], self.names[j])
        markers = [(k["centre"][names[0]], k["centre"][names[1]], k["events"]) for k in kernels]
        return plots.PairHistogram(
            names, xe, ye, ref.fraction.reshape(nx, ny), ref.std.reshape(nx, ny), data,
            data_sumw2=sumw2, n_data=self.n_data,
            labels=(li or names[0], lj or names[1]), units=(ui, uj),
            markers=np.array(markers, dtype=np.float64).reshape(-1, 3))

    def deviation(self, j: int, h: plots.MarginalHistogram) -> dict[str, Any]:
        """Where LRT RECO departs most from REF in feature ``j`` (bins with >= 10 expected)."""
        out: dict[str, Any] = {"feature": self.names[j], "unit": h.unit,
                               "max_abs_deviation": None, "bin": None, "reco_over_ref": None}
        if h.reco is None:
            return out
        ref, reco = np.asarray(h.ref), np.asarray(h.reco)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref * self.n_data >= MIN_EXPECTED_EVENTS, reco / ref, np.nan)
        dev = np.abs(ratio - 1)
        if not np.any(np.isfinite(dev)):
            return out
        b = int(np.nanargmax(dev))
        edges = np.asarray(h.edges)
        return {**out, "max_abs_deviation": float(dev[b]), "reco_over_ref": float(ratio[b]),
                "bin": [float(edges[b]), float(edges[b + 1])]}


def _counts(values: NDArray[np.float64], edges: NDArray[np.float64],
            weights: NDArray[np.float64] | None
            ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """DATA per bin: counts, or the sums of weights and of squared weights."""
    if weights is None:
        return np.histogram(values, bins=edges)[0].astype(np.float64), None
    return (np.histogram(values, bins=edges, weights=weights)[0],
            np.histogram(values, bins=edges, weights=weights * weights)[0])


def _flat_index(xy: NDArray[np.float64], xe: NDArray[np.float64], ye: NDArray[np.float64]
                ) -> NDArray[np.float64]:
    """The 2D bin ``(a, b)`` of each point as ``a · n_y + b``; −1 outside (histogram edges)."""
    nx, ny = xe.size - 1, ye.size - 1
    ia = np.clip(np.searchsorted(xe, xy[:, 0], side="right") - 1, 0, nx - 1)
    ib = np.clip(np.searchsorted(ye, xy[:, 1], side="right") - 1, 0, ny - 1)
    inside = ((xy[:, 0] >= xe[0]) & (xy[:, 0] <= xe[-1]) & (xy[:, 1] >= ye[0])
              & (xy[:, 1] <= ye[-1]))
    return np.where(inside, ia * ny + ib, -1).astype(np.float64)


def _top_kernels(basis: gof.KernelBasis, a: Any, n_events: int, names: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """The kernels with the largest |a_k|: coefficient, ≈ events ``N a_k`` and centre.

    Each kernel is a normalised density, so the alternative moves ``N a_k`` events into
    (``a_k > 0``) or out of (``a_k < 0``) the neighbourhood of its centre (Eq. 5).
    """
    if a is None:
        return []
    coef = np.asarray(a, dtype=np.float64).reshape(-1)
    if coef.size != basis.n_kernels:
        return []
    order = [k for k in np.argsort(-np.abs(np.nan_to_num(coef)), kind="stable")
             if np.isfinite(coef[k]) and coef[k] != 0][:TOP_KERNELS]
    return [{"kernel": int(k), "a": float(coef[k]), "events": float(n_events * coef[k]),
             "centre": {name: float(v) for name, v in zip(names, basis.centers[k],
                                                          strict=True)}}
            for k in order]
