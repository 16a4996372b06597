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
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} >= {
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
    with pytest.raises(InputError, match="at least one feature"):
        plots.plot_marginals([])


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
    assert fig.axes[0].get_xlim()[1] >= 60.0
    assert "t on 3 test sets" in [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(InputError, match="t_null is empty"):
        plots.plot_null(t_null=[], t_obs=1.0)


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
    with pytest.raises(InputError, match="positive"):
        plots.plot_coverage(estimates=est, sigmas=0 * sig, truth=[0, 0])


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
    with pytest.raises(InputError, match="no members"):
        plots.plot_training(train_loss=[])


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
