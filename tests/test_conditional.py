"""genval.conditional and genval.gof.conditional: context bins, exact x | c sampling, the weight
fit on conditional rows (shared and per bin, with the sandwich), the test within context bins
with its joint toys, the look-elsewhere correction, and targeted oversampling.

The statistical calibration of the test over many experiments is in
``tests/test_conditional_slow.py`` (``-m slow``) and ``studies/conditional.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from genval.conditional import (
    ConditionalWeightFit,
    ContextBins,
    fit_conditional_weights,
    oversample_conditional,
    oversample_region,
    region_contexts,
    sample_conditional_mixture,
)
from genval.errors import InputError, NegativeDensityWarning
from genval.gof import (
    ContextKernels,
    KernelBasis,
    bin_kernel_bases,
    conditional_goodness_of_fit,
    goodness_of_fit,
    look_elsewhere,
)
from genval.members import (
    CallableMembers,
    ConditionalGaussianMembers,
    GaussianMembers,
    log_density_matrix,
)
from genval.wifi import fit_weights


def linear_members(n_members: int = 3, seed: int = 0) -> ConditionalGaussianMembers:
    """1D x | c ~ N(a_k + b_k c, (s_k (1 + 0.2 c))^2), members scattered."""
    rng = np.random.default_rng(seed)
    a = 0.2 * rng.standard_normal(n_members)
    b = 1 + 0.1 * rng.standard_normal(n_members)
    s = 0.5 * (1 + 0.15 * rng.standard_normal(n_members))

    def mean(c):
        return (a[:, None] + b[:, None] * c[None, :, 0])[..., None]

    def var(c):
        return ((s[:, None] * (1 + 0.2 * c[None, :, 0])) ** 2)[..., None]

    return ConditionalGaussianMembers(mean, var, n_members=n_members, n_features=1, n_context=1)


def draw(members, w, n, rng):
    c = rng.exponential(1.0, size=(n, 1))
    return sample_conditional_mixture(members, w, c, rng).x, c


# -- bins ------------------------------------------------------------------------------------
def test_context_bins_assign_labels_and_round_trip():
    bins = ContextBins([1, 0], [[0, 1, np.inf], [-1, 0, 1]], 2, names=["eta", "pt"])
    assert bins.n_bins == 4 and bins.shape == (2, 2)
    ctx = np.array([[-0.5, 0.5], [0.5, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    # pt fastest-varying last: bin = i_pt * 2 + i_eta; eta's last edge 1 is included.
    np.testing.assert_array_equal(bins.assign(ctx), [0, 3, 3, 0])
    assert bins.labels[3] == "pt in [1, inf) & eta in [0, 1]"
    assert bins.bounds(1) == {1: (0.0, 1.0), 0: (0.0, 1.0)}
    assert ContextBins.from_dict(bins.to_dict()) == bins
    with pytest.raises(InputError, match="outside the context bins"):
        bins.assign(np.array([[2.0, 0.5]]))
    np.testing.assert_array_equal(bins.assign(np.array([[2.0, 0.5]]), outside="drop"), [-1])
    with pytest.raises(InputError, match="increasing"):
        ContextBins([0], [[1, 0]], 1)
    with pytest.raises(InputError, match="distinct"):
        ContextBins([0, 0], [[0, 1], [0, 1]], 1)
    assert ContextBins.single(1).assign(np.array([[-1e9], [1e9]])).tolist() == [0, 0]


# -- sampling --------------------------------------------------------------------------------
def test_conditional_mixture_samples_follow_the_signed_mixture(rng):
    # 1.5 N(c, 1) - 0.5 N(c, 0.5^2) is a density (positive everywhere) with a negative weight.
    def mean(c):
        return np.stack([c[:, :1], c[:, :1]])

    def var(c):
        return np.stack([np.ones((len(c), 1)), np.full((len(c), 1), 0.25)])

    members = ConditionalGaussianMembers(mean, var, n_members=2, n_features=1, n_context=1)
    c = np.full((20000, 1), 2.0)
    drawn = sample_conditional_mixture(members, [1.5, -0.5], c, rng)
    u = 1.5 * scipy.stats.norm.cdf(drawn.x[:, 0] - 2) - 0.5 * scipy.stats.norm.cdf(
        2 * (drawn.x[:, 0] - 2))
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
    assert drawn.negative_mass == 0.0
    np.testing.assert_allclose(drawn.log_f, log_density_matrix(members, drawn.x, c), rtol=1e-12)
    # Per-row weights: row n drawn with its own mixture.
    w_rows = np.tile([[1.0, 0.0], [0.0, 1.0]], (500, 1))
    mixed = sample_conditional_mixture(members, w_rows, np.zeros((1000, 1)), rng)
    assert abs(mixed.x[0::2].std() - 1.0) < 0.1 and abs(mixed.x[1::2].std() - 0.5) < 0.05


def test_conditional_mixture_measures_its_negative_mass(rng):
    def mean(c):
        return np.zeros((2, len(c), 1))

    def var(c):
        return np.stack([np.ones((len(c), 1)), np.full((len(c), 1), 4.0)])

    members = ConditionalGaussianMembers(mean, var, n_members=2, n_features=1, n_context=1)
    with pytest.warns(NegativeDensityWarning, match="negative"):
        drawn = sample_conditional_mixture(members, [2.0, -1.0], np.zeros((3000, 1)), rng)
    assert drawn.negative_mass > 0
    with pytest.raises(InputError, match="conditional members"):
        sample_conditional_mixture(GaussianMembers(np.zeros((2, 1)), np.ones((2, 1))),
                                   [0.5, 0.5], np.zeros((3, 1)))


# -- the weight fit on conditional rows --------------------------------------------------------
def test_shared_fit_is_the_paper_fit_on_conditional_rows(rng):
    members = linear_members()
    x, c = draw(members, [0.3, 0.3, 0.4], 3000, rng)
    log_f = log_density_matrix(members, x, c)
    shared = fit_conditional_weights(log_f, log=True)
    plain = fit_weights(log_f, log=True)
    np.testing.assert_array_equal(shared.weights, plain.weights)
    np.testing.assert_array_equal(shared.cov, plain.cov)
    assert shared.weights.sum() == pytest.approx(1.0, abs=1e-12)


# A bin's fit may add the ridge on weakly identified directions (genval.identification) and
# say so; the block structure checked here holds either way.
@pytest.mark.filterwarnings("ignore::genval.errors.IllConditionedWarning")
def test_per_bin_fit_is_block_diagonal_and_matches_each_bin(rng):
    members = linear_members()
    x, c = draw(members, [0.3, 0.3, 0.4], 4000, rng)
    bins = ContextBins([0], [[0, 0.7, np.inf]], 1)
    idx = bins.assign(c)
    F = np.exp(log_density_matrix(members, x, c))
    per_bin = fit_conditional_weights(F, idx, per_bin=True)
    m = members.n_members
    for b in range(2):
        alone = fit_weights(F[idx == b])
        np.testing.assert_array_equal(per_bin.weights[b], alone.weights)
        np.testing.assert_array_equal(per_bin.cov[b * m:(b + 1) * m, b * m:(b + 1) * m],
                                      alone.cov)
        np.testing.assert_allclose(per_bin.density(F, idx)[idx == b], alone.density(F[idx == b]))
        np.testing.assert_allclose(per_bin.density_std(F, idx)[idx == b],
                                   alone.density_std(F[idx == b]))
    assert np.all(per_bin.cov[:m, m:] == 0)
    assert ConditionalWeightFit.from_dict(per_bin.to_dict()).weights.tolist() == \
        per_bin.weights.tolist()
    assert "per-bin weights in 2 bins" in repr(per_bin)
    with pytest.raises(InputError, match="bin_index"):
        fit_conditional_weights(F, per_bin=True)
    with pytest.raises(InputError, match="not more than"):
        fit_conditional_weights(F[:50], np.r_[np.zeros(48, int), [1, 1]], per_bin=True)


@pytest.mark.parametrize("per_bin", [False, True])
def test_sandwich_covariance_matches_the_spread_of_conditional_fits(per_bin):
    # 300 replicas of the fit: the sample covariance of ŵ against the mean sandwich (Eq. 2).
    # The relative standard error of a variance from 300 replicas is sqrt(2/299) = 8 %; the
    # tolerance is 30 % per diagonal entry (about 3.7 standard errors).
    members = linear_members(seed=3)
    w_true = np.array([0.2, 0.5, 0.3])
    bins = ContextBins([0], [[0, 0.7, np.inf]], 1)
    weights, covs = [], []
    for r in range(300):
        gen = np.random.default_rng([5, r])
        x, c = draw(members, w_true, 1500, gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_conditional_weights(log_density_matrix(members, x, c), bins.assign(c),
                                          n_bins=2, per_bin=per_bin, log=True)
        weights.append(fit.weights.ravel())
        covs.append(fit.cov)
    empirical = np.cov(np.array(weights).T)
    predicted = np.mean(covs, axis=0)
    ratio = np.diag(empirical) / np.diag(predicted)
    assert np.all(np.abs(ratio - 1) < 0.3), ratio


# -- look-elsewhere ----------------------------------------------------------------------------
def test_look_elsewhere_is_uniform_and_sidak_for_independent_bins():
    gen = np.random.default_rng(2)
    null = gen.chisquare(3, size=(2000, 3))
    p_global, p_min = [], []
    for _ in range(300):
        obs = gen.chisquare(3, size=3)
        pm, pg, _ = look_elsewhere(obs, null)
        p_global.append(pg)
        p_min.append(pm)
    assert scipy.stats.kstest(p_global, "uniform").pvalue > 0.01
    sidak = 1 - (1 - np.array(p_min)) ** 3
    assert np.max(np.abs(np.array(p_global) - sidak)) < 0.06
    # Beyond every toy in bin 1: p_min = 1/2001; the toys that top bins 0 or 2 (where the data
    # are low) tie with it, each at rank 1 of 2001, so p_global counts them.
    pm, pg, where = look_elsewhere([0.1, 30.0, 0.1], null)
    n_tied = len({int(np.argmax(null[:, 0])), int(np.argmax(null[:, 2]))})
    assert where == 1 and pm == pytest.approx(1 / 2001)
    assert pg == pytest.approx((1 + n_tied) / 2001)


# -- the test within context bins -------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    members = linear_members(seed=1)
    w_true = np.array([0.3, 0.4, 0.3])
    gen = np.random.default_rng(9)
    x_fit, c_fit = draw(members, w_true, 3000, gen)
    bins = ContextBins([0], [[0, 0.5, 1.5, np.inf]], 1)
    log_f = log_density_matrix(members, x_fit, c_fit)
    shared = fit_conditional_weights(log_f, bins.assign(c_fit), n_bins=3, log=True)
    per_bin = fit_conditional_weights(log_f, bins.assign(c_fit), n_bins=3, log=True,
                                      per_bin=True)
    # One basis per bin, σ in units of the bin's spread of x: x | c is much narrower than the
    # marginal of x here, and kernels as wide as the marginal make t heavy-tailed and the
    # alternative's fits hit their iteration cap (docs/method.md, "Kernels per bin").
    x_h, c_h = draw(members, w_true, 900, gen)
    basis = bin_kernel_bases(x_h, c_h, bins, 8, 0.5, seed=1)
    x, c = draw(members, w_true, 600, gen)
    return dict(members=members, shared=shared, per_bin=per_bin, basis=basis, bins=bins, x=x,
                c=c)


def test_conditional_test_results_per_bin_and_combined(problem):
    p = problem
    res = conditional_goodness_of_fit(p["members"], p["shared"], p["x"], p["c"], p["basis"],
                                      p["bins"], n_toys=30, seed=4, n_jobs=1)
    counts = np.bincount(p["bins"].assign(p["c"]), minlength=3)
    assert [r.n_test for r in res.per_bin] == counts.tolist()
    assert res.combined.ok and res.combined.n_failed == 0
    t_bins = np.array([r.t_obs for r in res.per_bin])
    assert res.combined.t_obs == pytest.approx(t_bins.sum(), rel=1e-12)
    np.testing.assert_allclose(res.combined.t_null,
                               np.sum([r.t_null for r in res.per_bin], axis=0), rtol=1e-12)
    assert res.combined.overlap == pytest.approx(1 / res.n_pools_candidates)
    pm, pg, where = look_elsewhere(t_bins, np.stack([r.t_null for r in res.per_bin], axis=1))
    assert (res.p_min, res.p_global, res.bin_min) == (pm, pg, where)
    assert np.all(res.z_per_bin == [r.z for r in res.per_bin])
    text = repr(res)
    assert "combined (sum of t)" in text and "look-elsewhere" in text
    d = res.to_dict()
    assert len(d["per_bin"]) == 3 and d["labels"] == p["bins"].labels


def test_one_kernel_basis_per_bin(problem):
    p = problem
    gen = np.random.default_rng(4)
    x_h, c_h = draw(p["members"], np.array([0.3, 0.4, 0.3]), 900, gen)
    bases = bin_kernel_bases(x_h, c_h, p["bins"], 6, 0.5, seed=2)
    index = p["bins"].assign(c_h)
    for b, kb in enumerate(bases):  # centres from the bin's own held-out events
        assert set(map(tuple, kb.centers)) <= set(map(tuple, x_h[index == b]))
    res = conditional_goodness_of_fit(p["members"], p["shared"], p["x"], p["c"], bases,
                                      p["bins"], n_toys=5, seed=1, n_jobs=1)
    assert [r.n_kernels for r in res.per_bin] == [6, 6, 6] and res.combined.n_kernels == 18
    assert len(res.combined.kernel_basis["per_bin"]) == 3
    with pytest.raises(InputError, match="2 kernel bases for 3"):
        conditional_goodness_of_fit(p["members"], p["shared"], p["x"], p["c"], bases[:2],
                                    p["bins"], n_toys=2)
    with pytest.raises(InputError, match="fewer than the 500"):
        bin_kernel_bases(x_h, c_h, p["bins"], 500, 0.5)


def test_conditional_toys_are_reproducible_by_range_and_across_workers(problem):
    p = problem
    args = (p["members"], p["per_bin"], p["x"], p["c"], p["basis"], p["bins"])
    whole = conditional_goodness_of_fit(*args, n_toys=12, seed=3, n_jobs=1)
    first = conditional_goodness_of_fit(*args, n_toys=5, seed=3, n_jobs=1)
    rest = conditional_goodness_of_fit(*args, n_toys=7, seed=3, n_jobs=2, first_toy=5)
    np.testing.assert_array_equal(whole.combined.t_null,
                                  np.r_[first.combined.t_null, rest.combined.t_null])
    assert whole.per_bin_weights


def test_conditional_toys_do_not_fork_where_the_unconditional_ones_may_not(problem,
                                                                           monkeypatch):
    """Where forking is not allowed (a Dask worker is a daemon process: no children), the
    conditional toys run in this process, like the unconditional ones (one fork check for
    both), with the same toys."""
    import genval.gof.conditional as conditional
    import genval.gof.toys as toys

    p = problem
    args = (p["members"], p["per_bin"], p["x"], p["c"], p["basis"], p["bins"])
    alone = conditional_goodness_of_fit(*args, n_toys=6, seed=3, n_jobs=1)
    monkeypatch.setattr(toys, "can_fork_workers", lambda: False)

    def no_pool(*a, **kw):
        raise AssertionError("forked a worker pool")

    monkeypatch.setattr(conditional, "ProcessPoolExecutor", no_pool)
    here = conditional_goodness_of_fit(*args, n_toys=6, seed=3, n_jobs=2)
    np.testing.assert_array_equal(alone.combined.t_null, here.combined.t_null)


def test_one_bin_with_context_free_members_observes_the_unconditional_t(rng):
    # Members that ignore the context: the conditional test in one bin computes the same t on
    # the data as the unconditional test (same rows, same check points).
    means, sds = np.array([[0.0], [0.3], [-0.2]]), np.array([1.0, 0.8, 1.2])
    plain = GaussianMembers(means, sds[:, None] ** 2)

    def lp(k):
        return lambda x, c: scipy.stats.norm(means[k, 0], sds[k]).logpdf(x[:, 0])

    def sampler(k):
        return lambda n, g, c: means[k] + sds[k] * g.standard_normal((n, 1))

    ignoring = CallableMembers([lp(k) for k in range(3)], 1, [sampler(k) for k in range(3)],
                               n_context=1)
    x_fit = rng.normal(size=(2000, 1))
    fit = fit_weights(log_density_matrix(plain, x_fit), log=True)
    basis = KernelBasis.from_events(rng.normal(size=(300, 1)), 6, 0.5, seed=2)
    x, c = rng.normal(size=(400, 1)), rng.exponential(size=(400, 1))
    cond = conditional_goodness_of_fit(ignoring, fit, x, c, basis, ContextBins.single(1),
                                       n_toys=10, seed=1, n_jobs=1)
    with warnings.catch_warnings():
        # Signed weights may leave a tiny negative mass in the unconditional pool: the toys
        # are not compared here, only the observed t.
        warnings.simplefilter("ignore", NegativeDensityWarning)
        unc = goodness_of_fit(plain, fit, x, basis, n_toys=10, seed=1, n_jobs=1)
    assert cond.combined.t_obs == pytest.approx(unc.t_obs, rel=1e-9, abs=1e-9)


def test_conditional_test_errors(problem):
    p = problem
    args = (p["members"], p["shared"], p["x"], p["c"], p["basis"][0])
    with pytest.raises(InputError, match="fewer than 2"):
        conditional_goodness_of_fit(*args, ContextBins([0], [[0, 0.5, 1.5, 50, np.inf]], 1),
                                    n_toys=2)
    with pytest.raises(InputError, match="toy_size"):
        conditional_goodness_of_fit(*args, p["bins"], n_toys=2, toy_size="poisson")
    with pytest.raises(InputError, match="bins"):
        conditional_goodness_of_fit(p["members"], p["per_bin"], p["x"], p["c"], p["basis"],
                                    ContextBins.single(1), n_toys=2)
    with pytest.raises(InputError, match="conditional on 1"):  # the unconditional test
        goodness_of_fit(p["members"], p["shared"].fit_for(0), p["x"], p["basis"][0], n_toys=2)
    plain = GaussianMembers(np.zeros((2, 1)), np.ones((2, 1)))
    with pytest.raises(InputError, match="conditional members"):
        conditional_goodness_of_fit(plain, p["shared"], p["x"], p["c"], p["basis"], p["bins"],
                                    n_toys=2)


# -- targeted oversampling ---------------------------------------------------------------------
def test_oversampling_a_context_tail_with_the_band(problem, rng):
    p = problem
    events = oversample_region(p["members"], p["shared"], p["c"], {0: (1.5, np.inf)}, 3000, rng)
    assert np.all(events.context[:, 0] >= 1.5)
    assert set(np.unique(events.context[:, 0])) <= set(p["c"][p["c"][:, 0] >= 1.5, 0])
    F = np.exp(log_density_matrix(p["members"], events.x, events.context))
    np.testing.assert_allclose(events.density, p["shared"].density(F), rtol=1e-10)
    np.testing.assert_allclose(events.density_std, p["shared"].density_std(F), rtol=1e-10)
    binned = events.binned(0, np.linspace(-2, 12, 15))
    assert binned.fraction.sum() == pytest.approx(1.0, abs=0.01)
    assert np.all(binned.std[binned.fraction > 0] > 0)
    # Per-bin weights: each event carries its bin's weights and band.
    per = oversample_conditional(p["members"], p["per_bin"], events.context, rng, bins=p["bins"])
    np.testing.assert_array_equal(per.bin_index, 2)
    np.testing.assert_allclose(per.weights[0], p["per_bin"].weights[2])
    with pytest.raises(InputError, match="no context"):
        region_contexts(p["c"], {0: (1e6, np.inf)}, 5)
    with pytest.raises(InputError, match="bins="):
        oversample_conditional(p["members"], p["per_bin"], events.context, rng)


# -- kernels that follow the context -------------------------------------------------------------
def test_context_kernels_are_normalised_in_x_at_every_context(rng):
    c = rng.exponential(size=(3000, 1))
    x = np.column_stack([1.5 * c[:, 0], -c[:, 0]]) + (0.3 + 0.2 * c) * rng.standard_normal(
        (3000, 2))
    kernels = ContextKernels.from_events(x, c, n_kernels=5, sigma=0.5, seed=1)
    # The affine fits find the drift and the growing width.
    np.testing.assert_allclose(kernels.location[1], [1.5, -1.0], atol=0.05)
    assert np.all(kernels.log_scale[1] > 0.1)
    g = np.linspace(-15, 25, 1601)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    for ctx in (0.0, 2.0, 6.0):
        dens = np.exp(kernels.log_pdf(grid, context=np.full((len(grid), 1), ctx)))
        mass = np.trapezoid(np.trapezoid(dens.reshape(*xx.shape, -1), g, axis=1), g, axis=0)
        np.testing.assert_allclose(mass, 1.0, atol=1e-6)
    # Direct formula: the base kernels at the residual, divided by prod s(c).
    xt, ct = x[:7], c[:7]
    design = np.column_stack([np.ones(7), ct])
    s = np.exp(design @ kernels.log_scale)
    expected = kernels.basis.log_pdf((xt - design @ kernels.location) / s) - np.log(s).sum(1)[
        :, None]
    np.testing.assert_allclose(kernels.log_pdf(xt, context=ct), expected, rtol=1e-12)
    np.testing.assert_allclose(kernels.centers_at([2.0]),
                               (np.array([1, 2.0]) @ kernels.location)
                               + np.exp(np.array([1, 2.0]) @ kernels.log_scale)
                               * kernels.basis.centers)
    with pytest.raises(InputError, match="context"):
        kernels.log_pdf(xt)


def test_the_conditional_test_with_context_kernels(problem):
    p = problem
    gen = np.random.default_rng(5)
    x_h, c_h = draw(p["members"], np.array([0.3, 0.4, 0.3]), 900, gen)
    bases = bin_kernel_bases(x_h, c_h, p["bins"], 6, 0.5, follow_context=True, seed=2)
    assert all(isinstance(kb, ContextKernels) for kb in bases)
    res = conditional_goodness_of_fit(p["members"], p["shared"], p["x"], p["c"], bases,
                                      p["bins"], n_toys=8, seed=1, n_jobs=1)
    assert np.all(np.isfinite([r.t_obs for r in res.per_bin]))
    assert np.all(np.isfinite(res.combined.t_null))
    assert "residual" in str(res.per_bin[0].kernel_basis["coordinates"])
