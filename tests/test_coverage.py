"""Coverage of the first moment (paper Step 3, Eq. 4) with the truth inside the span, and the
observables from one common sample of f(x; ŵ) it rests on (Eq. 3, App. A)."""

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import genval.coverage
from genval.coverage import CoverageResult, run_coverage
from genval.errors import InputError
from genval.members import GaussianMembers, log_density_matrix
from genval.paper import PAPER_TOY_MEAN, PAPER_TOY_STD
from genval.products import (
    MemberIntegrals,
    common_sample_integrals,
    estimate_observable,
    observable,
)
from genval.products.binned import binned_reference
from genval.row_scaling import scale_log_rows
from genval.sampling import MixtureSample, sample_mixture
from genval.wifi import fit_weights
from realistic_support import ten_bootstrap_gaussians

MEANS = np.array([[-0.5, 0.6], [-0.2, 0.9], [-0.8, 0.4], [-0.4, 0.2]])
VARIANCES = np.array([[0.06, 0.16], [0.09, 0.12], [0.05, 0.2], [0.08, 0.1]])
TRUE_WEIGHTS = np.array([0.4, 0.25, 0.2, 0.15])


def truth_sampler(members):
    def sample(n, rng):
        return sample_mixture(members, TRUE_WEIGHTS, n, rng).x
    return sample


def test_first_moment_coverage_is_nominal():
    """400 data sets of 2000 events, member integrals from 2x oversampling: the 68.3 % coverage
    of each feature lies in [0.62, 0.74] and the 95.4 % coverage in [0.91, 0.99]."""
    members = GaussianMembers(MEANS, VARIANCES)
    result = run_coverage(members, truth_sampler(members), TRUE_WEIGHTS @ MEANS,
                          n_datasets=400, n_events=2000, oversampling=2.0, seed=3,
                          progress=False)
    assert result.n_generated == 4000
    assert np.all((result.fractions[:, 0] > 0.62) & (result.fractions[:, 0] < 0.74)), result
    assert np.all((result.fractions[:, 1] > 0.91) & (result.fractions[:, 1] < 0.99)), result
    bounds = result.intervals()
    assert np.all(bounds[..., 0] <= result.fractions) and np.all(result.fractions <= bounds[..., 1])
    assert "68.3%" in repr(result)
    np.testing.assert_allclose(result.z_values, [1.0, 2.0], atol=1e-3)


def test_coverage_needs_the_monte_carlo_error():
    """With only 10 samples per member the MC error dominates: propagated, coverage stays
    nominal; left out (weight error only, as in the paper's reference code), it collapses.
    A truth shifted by 3σ is covered rarely: the study can fail."""
    members = GaussianMembers(MEANS, VARIANCES)
    truth = TRUE_WEIGHTS @ MEANS
    result = run_coverage(members, truth_sampler(members), truth, n_datasets=300,
                          n_events=4000, oversampling=0.01, seed=4, progress=False)
    assert result.n_generated == 40
    assert np.all((result.fractions[:, 0] > 0.60) & (result.fractions[:, 0] < 0.76)), result
    weight_only = (np.abs(result.estimates - truth) < result.stds_weights).mean(axis=0)
    assert np.all(weight_only < 0.4), weight_only
    exact = run_coverage(members, truth_sampler(members), truth, n_datasets=100,
                         n_events=4000, integrals=MemberIntegrals.exact(MEANS), seed=5,
                         progress=False)
    assert np.all(exact.n_generated == 0)
    shifted = run_coverage(members, truth_sampler(members), truth + 3 * exact.stds.mean(axis=0),
                           n_datasets=100, n_events=4000, integrals=MemberIntegrals.exact(MEANS),
                           seed=5, progress=False)
    assert np.all(shifted.fractions[:, 0] < 0.2)


def test_coverage_bad_input():
    members = GaussianMembers(MEANS, VARIANCES)
    with pytest.raises(ValueError, match="at least 2 data sets"):
        run_coverage(members, truth_sampler(members), [0, 0], n_datasets=1, n_events=100)
    with pytest.raises(ValueError, match="NaN"):
        run_coverage(members, lambda n, rng: np.full((n, 2), np.nan), [0, 0], n_datasets=2,
                     n_events=100, progress=False)


# --- one common sample of f(x; ŵ) on a realistic, near-collinear ensemble --------------------
#
# The case: 10 Gaussians fitted by maximum likelihood (mean and covariance in closed
# form) on bootstrap replicas of 80k events of the paper's toy (Badaracco et al., Eq. 6). They
# differ by ~σ/√80k, so the weight fit cancels hundreds of units between them (Σ|ŵ| ≈ 600-5000).

TOY_MEAN, TOY_SD = np.array(PAPER_TOY_MEAN), np.array(PAPER_TOY_STD)


def toy_sampler(n, rng):
    return rng.normal(TOY_MEAN, TOY_SD, size=(n, 2))


class EnvelopeSampler:
    """Exact rejection sampling of f(x; ŵ) for :func:`ten_bootstrap_gaussians` (a test aid
    standing in for genval's sampler, whose cost grows with Σ|ŵ|; same call and result as
    :func:`genval.sampling.sample_mixture`).

    Proposal h: the members' equal-weight mixture with covariances × 1.3², so f̂/h falls to 0
    in the tails; envelope c = 1.2 × max f̂/h on a ±6σ grid. Every proposal is checked against
    c and a violation counted (the tests assert there is none), so nothing is approximate
    silently. Only events with f̂ > 0 are accepted (f̂ < 0 far out is cut, as genval's sampler
    does).
    """

    def __init__(self, members: GaussianMembers) -> None:
        self.members = members
        self.wide = GaussianMembers(members.means, members.covs * 1.3**2)
        self.chol = np.linalg.cholesky(self.wide.covs)
        axes = [np.linspace(m - 6 * s, m + 6 * s, 81)
                for m, s in zip(TOY_MEAN, TOY_SD, strict=True)]
        self.grid = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, 2)
        self.violations = 0
        self._envelope: dict[bytes, float] = {}

    def _ratio(self, x, w):
        log_f = log_density_matrix(self.members, x)
        scaled, log_s = scale_log_rows(log_f)
        log_h = logsumexp(self.wide.log_prob(x), axis=0) - np.log(self.members.n_members)
        return (scaled @ w) * np.exp(log_s - log_h), log_f

    def __call__(self, members, weights, n, rng):
        assert members is self.members
        w = np.asarray(weights, dtype=np.float64)
        c = self._envelope.setdefault(w.tobytes(), 1.2 * self._ratio(self.grid, w)[0].max())
        xs, log_fs, total = [], [], 0
        while total < n:
            k = rng.integers(0, members.n_members, int(1.3 * c * (n - total)) + 100)
            z = rng.standard_normal((len(k), 2))
            x = self.wide.means[k] + np.einsum("nij,nj->ni", self.chol[k], z)
            ratio, log_f = self._ratio(x, w)
            self.violations += int((ratio > c).sum())
            keep = rng.random(len(x)) * c < ratio
            xs.append(x[keep])
            log_fs.append(log_f[keep])
            total += int(keep.sum())
        return MixtureSample(x=np.concatenate(xs)[:n], log_f=np.concatenate(log_fs)[:n],
                             n_proposed=0, n_accepted=total)


def test_common_sample_integrals_are_unbiased_with_the_full_covariance():
    """One fit (2000 toy events, Σ|ŵ| ≈ 4800), 200 common samples of 2000 events from f̂.

    Against the exact member integrals (the members' means; bin fractions from normal CDFs):
    the member integrals are unbiased (4 reported standard errors); the spread of Ô matches
    σ_mc (variance ratio in [0.75, 1.3], ±3 sd at 200 replicas); the debiased weight part
    matches Oᵀ C O on average (4 standard errors) while the plug-in Ôᵀ C Ô is inflated by
    > 5; along C's leading eigenvector the reported covariance matches the spread of the
    member integrals (ratio in [0.75, 1.3]) where its diagonal alone is off by > 10³; the
    binned band's weight part likewise (4 standard errors per bin)."""
    members = ten_bootstrap_gaussians()
    # The plain maximum-likelihood fit (no ridge on its weak directions): the Monte-Carlo
    # machinery is tested at the largest Σ|ŵ|.
    fit = fit_weights(log_density_matrix(members, toy_sampler(2000, np.random.default_rng(5))),
                      log=True, max_leverage=None)
    assert fit.abs_weight_sum > 500
    sampler = EnvelopeSampler(members)
    exact, cov = members.means, fit.cov
    edges = np.linspace(-1.2, 0.2, 8)
    exact_bins = np.stack([np.diff(stats.norm.cdf(edges, mu[0], np.sqrt(c[0, 0])))
                           for mu, c in zip(members.means, members.covs, strict=True)], axis=1)
    values, sigmas, estimates, var_w, plug_in, bins_w = [], [], [], [], [], []
    for r in range(200):
        drawn = sampler(members, fit.weights, 2000, np.random.default_rng([9, r]))
        integrals = common_sample_integrals(drawn.x, drawn.log_f, fit.weights)
        estimate = estimate_observable(fit, integrals)
        np.testing.assert_allclose(estimate.value, drawn.x.mean(axis=0), rtol=0, atol=1e-10)
        values.append(integrals.values)
        sigmas.append(integrals.covariance)
        estimates.append(estimate)
        var_w.append(estimate.std_weights ** 2)
        plug_in.append(np.einsum("kp,kl,lp->p", integrals.values, cov, integrals.values))
        ref = binned_reference(drawn.x[:, 0], edges, np.exp(drawn.log_f), fit.weights, cov)
        bins_w.append(ref.std_weights ** 2)
    assert sampler.violations == 0
    values, sigmas = np.array(values), np.array(sigmas)
    mean_sigma = sigmas.mean(axis=0)  # (P, M, M)
    standard_error = np.sqrt(np.diagonal(mean_sigma, 0, 1, 2).T / len(values))
    assert np.all(np.abs(values.mean(axis=0) - exact) < 4 * standard_error)
    spread = np.var([e.value for e in estimates], axis=0, ddof=1)
    ratio = spread / np.mean([e.std_mc ** 2 for e in estimates], axis=0)
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    truth_w = np.einsum("kp,kl,lp->p", exact, cov, exact)
    var_w, plug_in = np.array(var_w), np.array(plug_in)
    se_w = var_w.std(axis=0) / np.sqrt(len(var_w))
    assert np.all(np.abs(var_w.mean(axis=0) - truth_w) < 4 * se_w), (var_w.mean(0), truth_w)
    assert np.all(plug_in.mean(axis=0) - truth_w > 5 * se_w)
    u = np.linalg.eigh(cov)[1][:, -1]
    empirical = np.var(values.transpose(0, 2, 1) @ u, axis=0, ddof=1)
    reported = np.einsum("k,pkl,l->p", u, mean_sigma, u)
    diagonal_only = np.einsum("k,pk->p", u ** 2, np.diagonal(mean_sigma, 0, 1, 2))
    assert np.all((empirical / reported > 0.75) & (empirical / reported < 1.3))
    assert np.all(diagonal_only > 1e3 * reported)
    bins_w = np.array(bins_w)
    truth_bins = np.einsum("bk,kl,bl->b", exact_bins, cov, exact_bins)
    se_bins = bins_w.std(axis=0) / np.sqrt(len(bins_w))
    assert np.all(np.abs(bins_w.mean(axis=0) - truth_bins) < 4 * se_bins + 1e-12)


def collinear_study(monkeypatch, n_datasets, n_events, *, envelope: bool):
    members = ten_bootstrap_gaussians()
    sampler = EnvelopeSampler(members)
    if envelope:
        monkeypatch.setattr(genval.coverage, "sample_mixture", sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_coverage(members, toy_sampler, TOY_MEAN, n_datasets=n_datasets,
                              n_events=n_events, oversampling=2.0, seed=7, progress=False)
    # Allowed: the study's summaries (e.g. f̂ < 0 far in the tails seen by a sampler), each
    # with its per-data-set details kept in result.messages.
    assert all(str(w.message).startswith("coverage study:") for w in caught)
    assert len(result.messages) >= len(caught)
    assert sampler.violations == 0
    # The same data sets and fits with exact member integrals: Ô = ŵ·μ.
    exact_spread = (result.weights @ members.means).std(axis=0, ddof=1)
    return members, result, result.estimates.std(axis=0, ddof=1) / exact_spread


def test_collinear_coverage_with_a_common_sample(monkeypatch):
    """Reduced acceptance: 120 data sets of 2000 toy events, 2x oversampling from f̂.

    Σ|ŵ| is in the hundreds (thousands without the ridge on weakly identified directions,
    which every one of these 2000-event fits gets); the spread of Ô is < 2x its spread with
    exact member integrals (expected √1.5 ≈ 1.22: the mean of 2N events from f̂ adds Var(g)/2N
    to the weight error ≈ Var(g)/N), and the 68.3 % coverage over both features (240
    intervals, sd 0.03) lies in [0.60, 0.77]. Per-member samples of the same total size would
    have a Monte-Carlo error > 100x larger (~4700x without the ridge) (Σ ŵ_k² σ_k² / n_k,
    computed, not drawn)."""
    members, result, spread_ratio = collinear_study(monkeypatch, 120, 2000, envelope=True)
    assert result.integrals == "common sample" and result.n_generated == 4000
    assert np.median(np.abs(result.weights).sum(axis=1)) > 200
    assert np.all(spread_ratio < 2.0), spread_ratio
    coverage = result.covered[..., 0].mean()
    assert 0.60 <= coverage <= 0.77, result
    n_per_member = result.n_generated / members.n_members
    per_member_mc = np.sqrt((result.weights ** 2) @ np.diagonal(members.covs, 0, 1, 2)
                            / n_per_member)
    assert np.all(np.median(per_member_mc / result.stds_mc, axis=0) > 100)


@pytest.mark.slow
@pytest.mark.parametrize("envelope", [False, True], ids=["genval-sampler", "test-envelope"])
def test_collinear_coverage_acceptance(monkeypatch, envelope):
    """The issue's acceptance study, 20k events per data set, oversampling 2 (App. A), over 400
    data sets: the spread of Ô < 2x its spread with exact member integrals, the 68.3 % coverage
    of each feature in [0.60, 0.77] and the pulls' standard deviation in [0.9, 1.1].

    400, not 100: at 100 data sets [0.60, 0.77] is only ±1.8 sd of a binomial per feature, so
    an exact method fails it for about one seed in seven; at 400 it is ±3.5 sd. Data set r
    uses the stream ``[seed, r]``, so the first 100 are the issue's 100-data-set study (printed).
    ``genval-sampler`` draws with :func:`genval.sampling.sample_mixture`, ``test-envelope``
    with :class:`EnvelopeSampler` (both exact)."""
    _, result, spread_ratio = collinear_study(monkeypatch, 400, 20_000, envelope=envelope)
    first = result.covered[:100, :, 0].mean(axis=0)
    print(result, "\nspread ratio", spread_ratio, "\npull sd", result.pulls.std(axis=0),
          "\nfirst 100 data sets: coverage", first, "\nmedian Σ|ŵ|",
          np.median(np.abs(result.weights).sum(axis=1)))
    assert np.all(spread_ratio < 2.0), spread_ratio
    assert np.all((result.fractions[:, 0] >= 0.60) & (result.fractions[:, 0] <= 0.77)), result
    pull_sd = result.pulls.std(axis=0)
    assert np.all((pull_sd > 0.9) & (pull_sd < 1.1)), pull_sd


def test_observable_total_variance_with_a_common_sample():
    """600 replicas of the whole chain (fresh 1000-event fit, then ``observable`` with its
    default common sample of 30 events from f̂): the mean σ² matches the mean squared error
    within 15 % (±3 sd of the MSE at 600 replicas)."""
    members = GaussianMembers([[-1.0], [0.0], [1.0], [0.3]], [[0.5], [1.0], [0.7], [2.0]])
    weights = np.full(4, 0.25)
    truth = weights @ members.means[:, 0]
    claimed, squared_error = [], []
    for r in range(600):
        gen = np.random.default_rng([12, r])
        fit = fit_weights(sample_mixture(members, weights, 1000, gen).log_f, log=True)
        estimate = observable(members, fit, n_samples=30, rng=gen)
        claimed.append(estimate.std[0] ** 2)
        squared_error.append((estimate.value[0] - truth) ** 2)
    ratio = np.mean(claimed) / np.mean(squared_error)
    assert 0.85 < ratio < 1.15, ratio


def test_common_sample_input_checks_and_old_files(rng):
    members = GaussianMembers([[0.0], [0.0]], [[1.0], [0.25]])
    x = rng.normal(size=(50, 1))
    log_f = log_density_matrix(members, x)
    with pytest.raises(InputError, match="not positive at"):
        common_sample_integrals(x, log_f, np.array([-1.0, 2.0]))  # f̂ < 0 in the tails
    with pytest.raises(InputError, match="at least 2 events"):
        common_sample_integrals(x[:1], log_f[:1], np.array([0.5, 0.5]))
    with pytest.raises(InputError, match="does not match"):
        common_sample_integrals(x, log_f, np.array([1.0]))
    fit = fit_weights(log_f, log=True)
    with pytest.raises(InputError, match="not both"):
        observable(members, fit, n_samples=10, n_per_member=10)
    integrals = common_sample_integrals(x, log_f, fit.weights, lambda v: v[:, 0] ** 2)
    assert integrals.covariance.shape == (1, 2, 2) and integrals.n_samples == 50
    np.testing.assert_allclose(integrals.variances[:, 0], np.diag(integrals.covariance[0]))
    # Independent estimates: the full covariance is their diagonal.
    independent = MemberIntegrals(values=integrals.values, variances=integrals.variances)
    np.testing.assert_allclose(independent.mc_covariance[0], np.diag(integrals.variances[:, 0]))
    # A study saved before the common sample reads as per-member samples, and round-trips.
    result = run_coverage(GaussianMembers(MEANS, VARIANCES), truth_sampler(
        GaussianMembers(MEANS, VARIANCES)), TRUE_WEIGHTS @ MEANS, n_datasets=2, n_events=300,
        seed=1, progress=False)
    saved = result.to_dict()
    assert saved["integrals"] == "common sample" and result.n_generated == 600
    old = {k: v for k, v in saved.items() if k != "integrals"}
    assert CoverageResult.from_dict(old).integrals == "member samples"
    assert CoverageResult.from_dict({**old, "n_generated": 0}).integrals == "exact"
    again = CoverageResult.from_dict(saved)
    assert again.integrals == "common sample"
    np.testing.assert_allclose(again.stds_mc, np.sqrt(result.stds ** 2 - result.stds_weights ** 2))
