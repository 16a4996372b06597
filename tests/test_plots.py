import io
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

matplotlib.use("Agg")

from genval import plots  # noqa: E402
from genval._optional import MissingDependencyError  # noqa: E402
from genval.coverage import COVERAGE_CL  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.members import GaussianMembers  # noqa: E402
from genval.products.binned import bin_integrals, binned_reference, histogram_counts  # noqa: E402
from genval.sampling import sample_mixture  # noqa: E402
from genval.stats import clopper_pearson  # noqa: E402


def marginal(rng, name="x", reco=True):
    edges = np.linspace(-3, 3, 13)
    ref = np.diff(stats.norm.cdf(edges))
    data = rng.poisson(1000 * ref).astype(float)
    return plots.MarginalHistogram(name, edges, ref, 0.05 * ref, data,
                                   ref * 1.01 if reco else None)


def test_marginals_figure_has_panels_and_saves_png_pdf(tmp_path, rng):
    fig = plots.plot_marginals([marginal(rng, "a"), marginal(rng, "b", reco=False)],
                               log=True, title="t", save=tmp_path / "marg", dpi=40)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.axes[0].get_yscale() == "log"
    # One legend above the grid serves every panel.
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "REF (ensemble)", "DATA", "LRT RECO", r"REF $\pm1\sigma$", r"REF $\pm2\sigma$"}
    assert fig.axes[2].get_xlabel() == "a"  # row-major: tops, then ratio panels
    assert (tmp_path / "marg.png").stat().st_size > 1000
    assert (tmp_path / "marg.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marg.pdf", "marg.png"]


def test_marginals_validate_shapes(rng):
    h = marginal(rng)
    bad = plots.MarginalHistogram("x", h.edges, h.ref[:-1], h.ref_std, h.data)
    with pytest.raises(InputError, match="ref has 11 entries, expected 12"):
        plots.plot_marginals([bad], style=None)
    with pytest.raises(InputError, match="DATA are not counts"):
        plots.plot_marginals([plots.MarginalHistogram("x", h.edges, h.ref, h.ref_std,
                                                      h.data + 0.5)], style=None)


def test_null_distribution_figure(tmp_path, rng):
    t = 1.2 * rng.chisquare(5, 200)
    fig = plots.plot_null(t_null=t, t_obs=40.0, z=2.9, p_value=1 / 201, chi2_scale=1.2,
                          chi2_dof=5, z_chi2=4.1, label="single", save=tmp_path / "null",
                          formats=("png",), dpi=40)
    ax = fig.axes[0]
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "Z = 2.90 (toys" in texts and "extrapolation" in texts
    assert ax.get_xlim()[1] >= 40.0  # t_obs is on the axis even beyond every toy
    assert "single" in ax.get_title()
    assert (tmp_path / "null.png").exists() and not (tmp_path / "null.pdf").exists()
    fig = plots.plot_null(t_null=t, t_obs=7.0, t_obs_sets=[5.0, 7.0, 60.0], style=None)
    assert fig.axes[-1].get_xlim()[1] >= 60.0  # on the axis, or beyond its break
    assert "t on 3 test sets" in [x.get_text() for x in fig.axes[0].get_legend().get_texts()]


def test_coverage_figure_reports_fraction(rng):
    est = rng.normal(size=(400, 2)) * 0.1 + [-0.5, 0.6]
    sig = np.full((400, 2), 0.1)
    fig = plots.plot_coverage(estimates=est, sigmas=sig, truth=[-0.5, 0.6],
                              names=["f1", "f2"], reference=[0.613, 0.687], style=None)
    assert len(fig.axes) == 2
    expected = 100 * np.mean(np.abs(est[:, 0] + 0.5) < 0.1)
    text = fig.axes[0].texts[0].get_text()
    assert f"coverage {expected:.1f}" in text and "nominal 68.3 %" in text
    assert "paper 61.3 %" in text
    # The same Clopper-Pearson interval as the report (not a Wald error).
    k = int(np.sum(np.abs(est[:, 0] + 0.5) < 0.1))
    lo, hi = clopper_pearson(k, 400, COVERAGE_CL)
    frac = k / 400
    assert (f"{100 * frac:.1f}$^{{+{100 * (hi - frac):.1f}}}_{{-{100 * (frac - lo):.1f}}}$ % "
            f"(68.3 % CL)") in text
    with pytest.raises(InputError, match="differ in shape"):
        plots.plot_coverage(estimates=est, sigmas=sig[:, :1], truth=[0, 0])


def test_weights_and_training_figures(rng):
    fig = plots.plot_weights(weights=[0.5, 0.7, -0.2], cov=np.eye(3) * 0.01)
    lines = fig.axes[0].lines
    assert any(np.allclose(line.get_ydata(), 1 / 3) for line in lines)
    with pytest.raises(InputError, match=r"cov has shape \(2, 2\), expected \(3, 3\)"):
        plots.plot_weights(weights=[0.5, 0.7, -0.2], cov=np.eye(2))
    curves = [np.linspace(2, 1, n) for n in (10, 14)]
    fig = plots.plot_training(train_loss=curves, val_loss=[c + 0.1 for c in curves],
                              best_epoch=[8, 12])
    assert fig.axes[0].get_title() == "2 members"


def test_missing_matplotlib_names_the_extra(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"genval\[plots\]"):
        plots.plot_weights(weights=[1.0])


def test_bin_integrals_match_gaussian_cdfs(rng):
    means, sds = np.array([[-0.5], [0.3]]), np.array([[0.4], [0.6]])
    members = GaussianMembers(means, sds ** 2)
    w = np.array([0.7, 0.3])
    pool = sample_mixture(members, w, 40_000, rng)
    F = np.exp(pool.log_f)
    edges = np.linspace(-2, 2, 9)
    per_member, mc_var = bin_integrals(pool.x[:, 0], edges, F, F @ w)
    exact = np.stack([np.diff(stats.norm.cdf(edges, means[k, 0], sds[k, 0])) for k in range(2)],
                     axis=1)
    assert np.all(np.abs(per_member - exact) < 5 * np.sqrt(mc_var) + 1e-4)
    cov = np.array([[0.01, -0.01], [-0.01, 0.01]])
    ref = binned_reference(pool.x[:, 0], edges, F, w, cov)
    np.testing.assert_allclose(ref.fraction, histogram_counts(pool.x[:, 0], edges) / 40_000)
    # Eq. (3) with the member fractions' full pool covariance Σ̂_b, built here by brute force:
    # σ_w² = P_bᵀ C P_b − tr(C Σ̂_b), σ_mc² = ŵᵀ Σ̂_b ŵ (genval.products.binned).
    ratios = F / (F @ w)[:, None]
    in_bin = np.searchsorted(edges, pool.x[:, 0], side="right") - 1
    expected_w2, expected_mc2 = [], []
    for b in range(len(edges) - 1):
        y = ratios * (in_bin == b)[:, None]
        sigma_b = np.cov(y, rowvar=False) / len(y)
        expected_w2.append(per_member[b] @ cov @ per_member[b] - np.trace(cov @ sigma_b))
        expected_mc2.append(w @ sigma_b @ w)
    np.testing.assert_allclose(ref.std_weights, np.sqrt(expected_w2), rtol=1e-9)
    np.testing.assert_allclose(ref.std_mc, np.sqrt(expected_mc2), rtol=1e-9)
    np.testing.assert_allclose(ref.std, np.hypot(ref.std_weights, ref.std_mc), rtol=1e-12)
    # The noise bias removed is the pool's, small beside the band at 40k events.
    plug_in = np.sqrt(np.einsum("bk,kl,bl->b", per_member, cov, per_member))
    assert np.all(ref.std_weights < plug_in) and np.all(ref.std_weights > 0.99 * plug_in)


def test_bin_integrals_validate_inputs():
    with pytest.raises(InputError, match="pool sizes differ"):
        bin_integrals([0.0, 1.0], [0, 1], np.ones((3, 1)), [1.0, 1.0])
    with pytest.raises(InputError, match="strictly increasing"):
        bin_integrals([0.0], [1, 0], [1.0], [1.0])
    with pytest.raises(InputError, match="finite and positive"):
        bin_integrals([0.0], [0, 1], [1.0], [0.0])
    with pytest.raises(InputError, match="shapes do not match"):
        binned_reference([0.0], [0, 1], np.ones((1, 2)), [1.0], np.eye(2))


# --- figures for a user's data: grids, log scales, Poisson intervals, robustness -----------

def falling(rng, name, n=20_000, log_y=None):
    """An exponential spectrum (a pT-like feature) binned over its 0.1-99.9 % range."""
    edges = plots.nice_edges(*np.quantile(rng.exponential(50.0, n), [0.001, 0.999]), 40)
    ref = np.diff(stats.expon.cdf(edges, scale=50.0))
    data = rng.poisson(n * ref).astype(float)
    return plots.MarginalHistogram(name, edges, ref, 0.02 * ref, data, n_data=n,
                                   label=r"$p_T$", unit="GeV", log_y=log_y)


def test_eight_features_make_a_grid_not_a_row(rng):
    hists = [falling(rng, f"f{i}") if i % 2 else marginal(rng, f"f{i}") for i in range(8)]
    fig = plots.plot_marginals(hists, style=None)
    width, height = fig.get_size_inches()
    assert len(fig.axes) == 16  # 8 tops, then 8 ratio panels
    assert width <= 4 * 6.0 + 1e-9 and height < 2 * 6.5 + 1.0  # 2 rows of 4, not 48 inches
    fig.canvas.draw()
    tops = fig.axes[:8]
    rows = {round(ax.get_position().y0, 2) for ax in tops}
    cols = {round(ax.get_position().x0, 2) for ax in tops}
    assert len(rows) == 2 and len(cols) == 4
    fig = plots.plot_marginals(hists, max_columns=3, style=None)
    fig.canvas.draw()
    assert len({round(ax.get_position().y0, 2) for ax in fig.axes[:8]}) == 3


def test_log_y_is_chosen_for_a_falling_spectrum_not_a_gaussian(rng):
    exponential, gaussian = falling(rng, "pt"), marginal(rng, "eta")
    assert plots.prefers_log_y(exponential.ref)
    assert not plots.prefers_log_y(gaussian.ref)
    assert not plots.prefers_log_y(np.ones(40)) and not plots.prefers_log_y([np.nan, 0.0])
    # A power law (pT^-5 above 30 GeV) and two separated Gaussians (an eta-like feature).
    pt_edges = plots.nice_edges(30.0, 30.0 * 0.001 ** (-1 / 4), 40)
    assert plots.prefers_log_y(np.diff(-(pt_edges / 30.0) ** -4))
    x = np.linspace(-5, 5, 41)
    assert not plots.prefers_log_y(np.diff(stats.norm.cdf(x, -2, 1) + stats.norm.cdf(x, 2, 1)))
    fig = plots.plot_marginals([exponential, gaussian, falling(rng, "m", log_y=False)],
                               style=None)
    assert [ax.get_yscale() for ax in fig.axes[:3]] == ["log", "linear", "linear"]
    assert fig.axes[3].get_xlabel() == r"$p_T$ [GeV]"
    assert fig.axes[0].get_ylabel() == "Events / 10 GeV"  # a round bin width


def test_nice_edges_have_round_widths_and_cover_the_range():
    for lo, hi, bins in [(87.5, 1208.0, 40), (-3.43, 3.63, 40), (0.0, 6.19, 25), (1e-3, 2e-3, 7),
                         (5.0, 5.0, 10), (np.nan, 1.0, 5)]:
        edges = plots.nice_edges(lo, hi, bins)
        width = np.diff(edges)
        assert np.allclose(width, width[0]) and np.all(np.isfinite(edges))
        if np.isfinite(lo) and hi > lo:
            assert edges[0] <= lo and edges[-1] >= hi and 0.7 * bins <= width.size <= 1.4 * bins + 1
            mantissa = width[0] / 10.0 ** np.floor(np.log10(width[0]))
            assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-9


def test_garwood_intervals_are_the_exact_poisson_ones():
    n = np.arange(0, 60)
    lo, hi = plots_garwood(n).T
    alpha = 1 - 0.6827
    np.testing.assert_allclose(hi, stats.chi2.ppf(1 - alpha / 2, 2 * n + 2) / 2, rtol=1e-12)
    np.testing.assert_allclose(lo[1:], stats.chi2.ppf(alpha / 2, 2 * n[1:]) / 2, rtol=1e-12)
    assert lo[0] == 0.0
    # Published values (Garwood 1936; PDG "Poisson" table at 68.27 %): n = 0, 1, 10.
    np.testing.assert_allclose(plots_garwood([0, 1, 10]),
                               [[0.0, 1.841], [0.173, 3.300], [6.891, 14.267]], atol=1e-3)
    # Exact coverage: for every mean the interval of the observed n covers it with
    # probability >= 68.27 % (computed from the Poisson pmf, no sampling).
    k = np.arange(0, 400)
    bounds = plots_garwood(k)
    for mu in np.linspace(0.01, 80, 400):
        covered = (bounds[:, 0] <= mu) & (mu <= bounds[:, 1])
        assert stats.poisson.pmf(k, mu)[covered].sum() >= 0.6827 - 1e-9, mu
    with pytest.raises(ValueError, match="non-negative integers"):
        plots_garwood([1.5])


def plots_garwood(n):
    from genval.stats import garwood_interval

    return garwood_interval(n)


def test_marginal_points_carry_garwood_or_sumw2_errors(rng):
    h = marginal(rng)
    down, up = plots.data_errors(h.data)
    bounds = plots_garwood(h.data)
    np.testing.assert_allclose(down, h.data - bounds[:, 0])
    np.testing.assert_allclose(up, bounds[:, 1] - h.data)
    fig = plots.plot_marginals([h], style=None)
    bars = fig.axes[0].containers[0].lines[2][0].get_segments()  # the DATA error bars
    shown = h.data > 0 if fig.axes[0].get_yscale() == "log" else np.ones(h.data.size, bool)
    np.testing.assert_allclose([s[0, 1] for s in bars], (h.data - down)[shown])
    np.testing.assert_allclose([s[1, 1] for s in bars], (h.data + up)[shown])
    # Weighted events, some negative (NLO-like): sums of weights with sqrt(sum w^2) errors.
    w = rng.normal(1.0, 1.5, 5000)
    x = rng.normal(size=5000)
    sumw = np.histogram(x, h.edges, weights=w)[0]
    sumw2 = np.histogram(x, h.edges, weights=w * w)[0]
    down, up = plots.data_errors(sumw, sumw2)
    np.testing.assert_allclose(down, np.sqrt(sumw2)) and np.testing.assert_allclose(up, down)
    weighted = plots.MarginalHistogram("x", h.edges, h.ref, h.ref_std, sumw, data_sumw2=sumw2,
                                       n_data=w.sum())
    fig = plots.plot_marginals([weighted], log=False, style=None)
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    assert fig.axes[0].get_ylim()[0] <= min(0.0, float(np.min(sumw - np.sqrt(sumw2))))


BAD = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("case", ["nan", "inf", "empty"])
def test_figures_never_raise_on_non_finite_or_empty_input(case, rng):
    """Every figure draws (and saves) NaN, ±inf and empty inputs, saying what it left out."""
    def spoil(a):
        a = np.array(a, dtype=float)
        if case == "empty":
            return a[:0]
        a.ravel()[::3] = np.nan if case == "nan" else np.inf
        return a

    h = marginal(rng)
    figures = []
    if case == "empty":
        figures.append(plots.plot_marginals([], style=None))
        empty_edges = plots.MarginalHistogram("x", [], [], [], [], None)
        figures.append(plots.plot_marginals([empty_edges], style=None))
    else:
        figures.append(plots.plot_marginals([plots.MarginalHistogram(
            "x", h.edges, spoil(h.ref), spoil(h.ref_std), spoil(h.data), spoil(h.reco))],
            style=None))
        figures.append(plots.plot_marginals([plots.MarginalHistogram(
            "x", spoil(h.edges), h.ref, h.ref_std, h.data)], style=None))
        figures.append(plots.plot_marginals([plots.MarginalHistogram(
            "x", h.edges, h.ref * np.nan, h.ref_std, h.data * 0)], log=True, style=None))
    t = 1.2 * rng.chisquare(5, 100)
    for t_obs in (np.nan, np.inf, -np.inf, 3.0):
        figures.append(plots.plot_null(t_null=spoil(t), t_obs=t_obs, z=np.nan, p_value=np.nan,
                                       chi2_scale=np.nan, chi2_dof=np.inf, z_chi2=np.inf,
                                       t_obs_sets=spoil([1.0, 2.0, 5e3]), style=None))
    est = rng.normal(size=(0 if case == "empty" else 50, 2))
    figures.append(plots.plot_coverage(estimates=spoil(est), sigmas=np.ones_like(est),
                                       truth=[0.0, 0.0], style=None))
    figures.append(plots.plot_coverage(estimates=est, sigmas=0 * est, truth=[0.0, 0.0],
                                       style=None))
    figures.append(plots.plot_weights(weights=spoil([0.5, 0.7, -0.2]),
                                      cov=None if case == "empty" else spoil(np.eye(3)),
                                      style=None))
    figures.append(plots.plot_training(train_loss=[spoil(np.linspace(2, 1, 9))], style=None))
    figures.append(plots.plot_training(train_loss=[], style=None))
    edges = np.linspace(0, 1, 6)
    grid = rng.poisson(20, (5, 5)).astype(float)
    if case == "empty":
        pairs = [plots.PairHistogram(("a", "b"), [], [], np.zeros((0, 0)), np.zeros((0, 0)),
                                     np.zeros((0, 0)))]
        figures.append(plots.plot_pairs([], style=None))
    else:
        pairs = [plots.PairHistogram(("a", "b"), edges, edges, spoil(grid / grid.sum()),
                                     np.zeros((5, 5)), spoil(grid),
                                     markers=spoil([[0.5, 0.5, 3.0], [0.2, 0.9, -1.0]]))]
    figures.append(plots.plot_pairs(pairs, style=None))
    for fig in figures:
        fig.savefig(io.BytesIO(), format="png", dpi=20)  # drawing is where limits are checked


def test_failed_variant_null_figure_says_why(rng):
    fig = plots.plot_null(t_null=[np.nan] * 5, t_obs=np.nan, label="ensemble",
                          message="FitError: f(x; w) <= 0 at 3 test events", style=None)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "no finite toy statistics" in texts and "FitError" in texts
    fig = plots.plot_null(t_null=[1.0, 2.0, np.nan], t_obs=np.nan, z=np.nan, style=None)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "t_obs undefined" in texts and "Z undefined" in texts and "1 toy with non-finite" \
        in texts


def test_null_axis_breaks_when_t_obs_is_far_beyond_the_toys(rng):
    t = 1.2 * rng.chisquare(5, 300)
    fig = plots.plot_null(t_null=t, t_obs=812.0, chi2_scale=1.2, chi2_dof=5, style=None)
    left, right = fig.axes
    assert left.get_xlim()[1] < 2 * t.max()  # the toys keep their width
    assert right.get_xlim()[0] < 812.0 < right.get_xlim()[1]
    top = max(patch.get_xy()[:, 1].max() for patch in left.patches)
    assert top == pytest.approx(left.get_ylim()[1] / 1.6)  # the toys fill the panel's height
    fig = plots.plot_null(t_null=t, t_obs=1.5 * t.max(), style=None)
    assert len(fig.axes) == 1 and fig.axes[0].get_xlim()[1] >= 1.5 * t.max()


def test_pairs_show_data_ref_and_pulls(rng):
    edges = np.linspace(0, 1, 5)
    ref = np.full((4, 4), 1 / 16)
    data = rng.poisson(1000 / 16, (4, 4)).astype(float)
    std = np.full((4, 4), 0.001)
    pair = plots.PairHistogram(("pt", "m"), edges, edges, ref, std, data, n_data=1000,
                               labels=(r"$p_T$", "$m$"), units=("GeV", "GeV"),
                               markers=[[0.3, 0.6, 12.0], [0.8, 0.1, -4.0]])
    fig = plots.plot_pairs([pair, pair], style=None)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6
    assert panels[0].get_xlabel() == r"$p_T$ [GeV]" and panels[0].get_ylabel() == "$m$ [GeV]"
    pulls = panels[2].collections[0].get_array().reshape(4, 4).T
    expected = 1000 * ref
    np.testing.assert_allclose(pulls, (data - expected) / np.sqrt(expected + (1000 * std) ** 2))
    assert [line.get_marker() for line in panels[2].lines] == ["^", "v"]


def test_broken_mathtext_labels_do_not_break_the_figure(rng):
    h = marginal(rng)
    bad = plots.MarginalHistogram("x", h.edges, h.ref, h.ref_std, h.data,
                                  label=r"$\frac{p_T$ of $j_1$", unit="GeV")
    fig = plots.plot_marginals([bad], style=None)
    fig.savefig(io.BytesIO(), format="png", dpi=20)
    assert plots.axis_label("$p_T$", "GeV") == "$p_T$ [GeV]"
