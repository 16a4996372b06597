"""Exact sampling from signed mixtures and the products built on it."""

import numpy as np
import pytest
from scipy import stats

from genval.errors import InputError, NegativeDensityWarning
from genval.members import GaussianMembers
from genval.products import (
    MemberIntegrals,
    estimate_observable,
    member_integrals,
    observable,
    oversample,
)
from genval.sampling import estimate_negative_mass, sample_mixture
from genval.wifi import fit_weights
from realistic_support import jittered_toy_ensemble

# f = 1.5 N(0, 1) − 0.5 N(0, 0.5²) + 0 N(2, 1) is positive everywhere (see the test below).
SIGNED = np.array([1.5, -0.5, 0.0])


def signed_members():
    return GaussianMembers([[0.0], [0.0], [2.0]], [[1.0], [0.25], [1.0]])


def signed_cdf(x):
    return 1.5 * stats.norm.cdf(x) - 0.5 * stats.norm.cdf(x, scale=0.5)


def test_signed_mixture_sampler_passes_ks(rng):
    grid = np.linspace(-6, 6, 1001)
    assert np.all(np.diff(signed_cdf(grid)) > 0)  # the mixture is a proper density
    drawn = sample_mixture(signed_members(), SIGNED, 40_000, rng)
    assert drawn.x.shape == (40_000, 1) and drawn.log_f.shape == (40_000, 3)
    assert stats.kstest(drawn.x[:, 0], signed_cdf).pvalue > 0.01
    # Acceptance rate is 1 / Σ|w| = 0.5 for a mixture that is positive everywhere.
    expected = 0.5
    sd = np.sqrt(expected * (1 - expected) / drawn.n_proposed)
    assert abs(drawn.acceptance_rate - expected) < 5 * sd
    # A wrong sampler (ignoring the negative member) fails the same test.
    wrong = sample_mixture(signed_members(), np.array([1.0, 0.0, 0.0]), 40_000, rng)
    assert stats.kstest(wrong.x[:, 0], signed_cdf).pvalue < 1e-6


def test_positive_mixture_sampler_passes_ks(rng):
    members = GaussianMembers([[-1.0], [1.5]], [[0.5], [1.0]])
    w = np.array([0.3, 0.7])
    drawn = sample_mixture(members, w, 30_000, rng)

    def cdf(x):
        return 0.3 * stats.norm.cdf(x, -1, np.sqrt(0.5)) + 0.7 * stats.norm.cdf(x, 1.5, 1.0)

    assert stats.kstest(drawn.x[:, 0], cdf).pvalue > 0.01
    assert drawn.acceptance_rate == 1.0


def test_sampler_bad_input(rng):
    members = signed_members()
    with pytest.raises(InputError, match="sum to"):
        sample_mixture(members, np.array([-1.0, 0.0, 0.0]), 10, rng)
    with pytest.raises(InputError, match="3 finite"):
        sample_mixture(members, np.array([1.0, np.nan, 0.0]), 10, rng)
    # ∫f = 1e-4: the |w| envelope (acceptance ∫f⁺/Σ|w|... of a mostly cancelled mixture)
    # gives up cleanly at max_proposals.
    with pytest.raises(InputError, match="non-positive almost everywhere"):
        sample_mixture(members, np.array([-1.0, 1.0001, 0.0]), 1000, rng, max_proposals=5000,
                       method="abs")
    with pytest.raises(InputError, match="method must be"):
        sample_mixture(members, SIGNED, 10, rng, method="box")


def test_observable_with_mc_error_matches_exact(rng):
    members = GaussianMembers([[0.0, 1.0], [1.0, -1.0], [2.0, 0.5]],
                              [[1.0, 0.5], [0.5, 1.0], [1.0, 1.0]])
    drawn = sample_mixture(members, np.array([0.5, 0.3, 0.2]), 5000, rng)
    fit = fit_weights(drawn.log_f, log=True)
    exact = estimate_observable(fit, MemberIntegrals.exact(members.means))
    mc = observable(members, fit, n_per_member=20_000, rng=rng)
    assert np.all(exact.std_mc == 0)
    assert np.all(mc.std_mc > 0) and np.all(mc.std > exact.std)
    assert np.all(np.abs(mc.value - exact.value) < 5 * mc.std_mc)
    np.testing.assert_allclose(exact.value, fit.weights @ members.means, rtol=1e-12)
    direct = np.sqrt(np.einsum("kp,kl,lp->p", members.means, fit.cov, members.means))
    np.testing.assert_allclose(exact.std, direct, rtol=1e-10)
    # A user function: second moment of feature 0, P = 1.
    second = observable(members, fit, lambda x: x[:, 0] ** 2, n_per_member=1000, rng=rng)
    assert second.value.shape == (1,)


def test_oversample_attaches_density_and_band(rng):
    members = signed_members()
    drawn = sample_mixture(members, np.array([0.6, 0.1, 0.3]), 3000, rng)
    fit = fit_weights(drawn.log_f, log=True)
    events = oversample(members, fit, 6000, rng)
    assert events.x.shape == (6000, 1)
    F = np.exp(members.log_prob(events.x)).T
    np.testing.assert_allclose(events.density, F @ fit.weights, rtol=1e-10)
    np.testing.assert_allclose(events.density_std, fit.density_std(F), rtol=1e-8)
    assert 0 < events.acceptance_rate <= 1


def test_sampler_memory_is_bounded_by_max_batch(rng):
    """A large Σ|w| (acceptance 1/Σ|w|) must not make the sampler evaluate all proposals at
    once: every batch stays within max_batch and the result is still exact."""
    # 21 N(0,1) − 20 N(0,1) + 0: the density is N(0, 1), acceptance 1/41.
    base = GaussianMembers([[0.0], [0.0], [2.0]], [[1.0], [1.0], [1.0]])
    weights = np.array([21.0, -20.0, 0.0])
    seen = []

    class Recording:
        n_members, n_features = base.n_members, base.n_features

        def log_prob(self, x):
            seen.append(len(x))
            return base.log_prob(x)

        def sample(self, n, member, rng=None):
            return base.sample(n, member, rng)

    drawn = sample_mixture(Recording(), weights, 5000, rng, max_batch=4096, method="abs")
    assert max(seen) <= 4096 and sum(seen) == drawn.n_proposed
    assert abs(drawn.acceptance_rate - 1 / 41) < 5 * np.sqrt(1 / 41 / drawn.n_proposed)
    assert stats.kstest(drawn.x[:, 0], stats.norm.cdf).pvalue > 0.01
    # The default proposal (the members' mixture) needs no more than max_envelope per event.
    seen.clear()
    drawn = sample_mixture(Recording(), weights, 5000, rng, max_batch=4096)
    assert drawn.method == "mixture" and max(seen) <= 4096 and sum(seen) == drawn.n_proposed
    assert drawn.evaluations_per_event < 2.5
    assert stats.kstest(drawn.x[:, 0], stats.norm.cdf).pvalue > 0.01


def test_observable_variance_is_unbiased_with_noisy_member_integrals():
    """1500 replicas: fresh weight-fit data (1000 events) and 5 samples per member each time.
    The mean of σ² matches the mean squared error within 8 %; the naive plug-in
    Ôᵀ C Ô + Σ (ŵ² + C_kk) v (noise counted twice) overstates it by more than 12 %."""
    members = GaussianMembers([[-1.0], [0.0], [1.0], [0.3]], [[0.5], [1.0], [0.7], [2.0]])
    weights = np.full(4, 0.25)
    truth = weights @ members.means[:, 0]
    claimed, naive, squared_error = [], [], []
    for r in range(1500):
        gen = np.random.default_rng([11, r])
        fit = fit_weights(sample_mixture(members, weights, 1000, gen).log_f, log=True)
        integrals = member_integrals(members, None, 5, gen)
        estimate = estimate_observable(fit, integrals)
        claimed.append(estimate.std[0] ** 2)
        naive.append(estimate.std[0] ** 2 + 2 * np.diag(fit.cov) @ integrals.variances[:, 0])
        squared_error.append((estimate.value[0] - truth) ** 2)
    ratio = np.mean(claimed) / np.mean(squared_error)
    assert 0.92 < ratio < 1.08, ratio
    assert np.mean(naive) / np.mean(squared_error) > 1.12


# --- the members' mixture proposal: exactness, violations, negative mass, cost --------------

def _cdf_1d(members, weights):
    mu, sd = members.means[:, 0], np.sqrt(members.covs[:, 0, 0])
    return lambda x: np.asarray(weights) @ stats.norm.cdf((np.atleast_1d(x)[None] - mu[:, None])
                                                          / sd[:, None]) / np.sum(weights)


def test_mixture_proposal_is_exact_on_a_signed_mixture(rng):
    drawn = sample_mixture(signed_members(), SIGNED, 40_000, rng, method="mixture")
    assert drawn.method == "mixture" and drawn.negative_mass == 0
    assert stats.kstest(drawn.x[:, 0], signed_cdf).pvalue > 0.01
    # sup f/q = 3 (the proven bound, within 1.5x the cap): independent draws, no copies
    assert drawn.envelope <= drawn.envelope_bound == 3.0 and drawn.evaluations_per_event < 3.1
    assert drawn.n_violations == 0 or drawn.envelope < 3.0


def test_mixture_proposal_is_exact_with_huge_cancellations(rng):
    """Σ|w| = 999 from three near-duplicate members: f = φ(x) (1 + 0.1 (x² − 1)) > 0 to second
    order. KS against the exact CDF, and the cost stays ≤ 2.5 proposals per event (the |w|
    envelope would need 999)."""
    members = GaussianMembers([[0.0], [-0.02], [0.02]], [[1.0], [1.0], [1.0]])
    w = np.array([-499.0, 250.0, 250.0])
    grid = np.linspace(-6, 6, 1001)
    assert np.all(np.diff(_cdf_1d(members, w)(grid)) > 0)  # a proper density
    drawn = sample_mixture(members, w, 40_000, rng)
    assert np.abs(w).sum() >= 500 and drawn.method == "mixture"
    assert stats.kstest(drawn.x[:, 0], _cdf_1d(members, w)).pvalue > 0.01
    assert drawn.evaluations_per_event <= 2.6 and drawn.negative_mass == 0
    # The wrong answer (no cancellation, plain N(0, 1)) is rejected by the same test.
    assert stats.kstest(drawn.x[:, 0], stats.norm.cdf).pvalue < 1e-6


def test_mixture_proposal_is_exact_in_2d(rng):
    """χ² on a 6×6 grid of rectangles with exact probabilities (diagonal members); Σ|w| = 401
    from a second difference of near-duplicates along the diagonal, f ≥ 0 on a fine grid."""
    members = GaussianMembers([[0.0, 0.0], [0.03, 0.03], [-0.03, -0.03], [1.0, 1.0]],
                              [[1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [0.5, 0.5]])
    w = np.array([-199.3, 100.0, 100.0, 0.3])
    grid = np.stack(np.meshgrid(np.linspace(-6, 6, 121), np.linspace(-6, 6, 121)), -1)
    assert np.all(w @ np.exp(members.log_prob(grid.reshape(-1, 2))) >= 0)
    drawn = sample_mixture(members, w, 60_000, rng)
    assert drawn.method == "mixture" and drawn.negative_mass == 0
    edges = np.array([-np.inf, -1.5, -0.5, 0.0, 0.5, 1.5, np.inf])
    sd = np.sqrt(np.diagonal(members.covs, axis1=1, axis2=2))
    cdf = stats.norm.cdf((edges[None, :, None] - members.means[:, None, :]) / sd[:, None, :])
    per_axis = np.diff(cdf, axis=1)  # (M, 6, 2)
    expected = np.einsum("k,ki,kj->ij", w, per_axis[:, :, 0], per_axis[:, :, 1]) / w.sum()
    assert np.all(expected > 0)
    observed, _, _ = np.histogram2d(drawn.x[:, 0], drawn.x[:, 1], bins=[edges, edges])
    chi2 = stats.chisquare(observed.ravel(), expected.ravel() * len(drawn.x))
    assert chi2.pvalue > 0.001


def test_envelope_violations_are_counted_and_stay_exact(rng):
    """A starting C far too low: every proposal above it is a violation, returned with the
    multiplicity r/C, and C is raised for the next batches; a cap at 1.2 ∫f⁺ keeps violating
    to the end (a quarter of the events are copies, so KS, which assumes independent draws, is
    only checked at the fixed seed). Both pass KS against the exact CDF."""
    raised = sample_mixture(signed_members(), SIGNED, 40_000, rng, method="mixture",
                            envelope=0.5, max_batch=8192)
    assert raised.n_violations > 0 and raised.n_duplicates > 0
    assert raised.envelope > 0.5
    assert stats.kstest(raised.x[:, 0], signed_cdf).pvalue > 0.01
    capped = sample_mixture(signed_members(), SIGNED, 40_000, rng, method="mixture",
                            max_envelope=1.2)
    assert capped.envelope <= 1.2 * 1.05 < capped.max_ratio
    assert capped.n_violations > 100 and capped.n_duplicates > 0
    assert stats.kstest(capped.x[:, 0], signed_cdf).pvalue > 0.01
    assert capped.diagnostics()["n_violations"] == capped.n_violations


NEG_MEMBERS = GaussianMembers([[0.0], [0.0]], [[1.0], [1.44]])
NEG_WEIGHTS = np.array([2.2, -1.2])  # 2.2 N(0, 1) − 1.2 N(0, 1.2²): negative in the tails


def _negative_fraction() -> float:
    x = np.linspace(-15, 15, 300_001)
    f = 2.2 * stats.norm.pdf(x) - 1.2 * stats.norm.pdf(x, scale=1.2)
    return float(np.trapezoid(np.maximum(-f, 0), x) / np.trapezoid(np.abs(f), x))


def test_negative_mass_matches_quadrature_and_warns(rng):
    exact = _negative_fraction()
    assert 0.01 < exact < 0.2
    for method in ("mixture", "abs"):
        with pytest.warns(NegativeDensityWarning, match="negative"):
            drawn = sample_mixture(NEG_MEMBERS, NEG_WEIGHTS, 20_000, rng, method=method)
        assert 0 < drawn.negative_mass_error < 0.1 * exact
        assert abs(drawn.negative_mass - exact) < 4 * drawn.negative_mass_error
    # Events follow the positive part f⁺ / ∫f⁺.
    x = np.linspace(-15, 15, 300_001)
    f_plus = np.maximum(2.2 * stats.norm.pdf(x) - 1.2 * stats.norm.pdf(x, scale=1.2), 0)
    cdf = np.concatenate([[0], np.cumsum((f_plus[1:] + f_plus[:-1]) / 2 * np.diff(x))])
    assert stats.kstest(drawn.x[:, 0], lambda t: np.interp(t, x, cdf / cdf[-1])).pvalue > 0.01
    with pytest.warns(NegativeDensityWarning, match="negative"):
        quick, err = estimate_negative_mass(NEG_MEMBERS, NEG_WEIGHTS, 20_000, rng)
    assert abs(quick - exact) < 4 * err
    # No warning where f ≥ 0 (pytest turns warnings into errors).
    assert estimate_negative_mass(signed_members(), SIGNED, 5000, rng) == (0.0, 0.0)


def test_cost_on_a_realistic_near_collinear_ensemble():
    """60 jittered Gaussians, ŵ fitted on 20k events: Σ|ŵ| = 410, yet at most 3 evaluations
    of log F per event (the |w| envelope needs Σ|ŵ|)."""
    ens = jittered_toy_ensemble()
    assert 300 < ens.fit.abs_weight_sum < 1000
    with pytest.warns(NegativeDensityWarning, match="negative"):
        drawn = sample_mixture(ens.members, ens.weights, 30_000, 5)
    assert drawn.n_proposed / len(drawn.x) <= 3.0
    assert drawn.n_duplicates <= 1e-3 * len(drawn.x)
    assert 0 < drawn.negative_mass < 1e-2
    np.testing.assert_allclose(drawn.log_f, ens.members.log_prob(drawn.x).T, rtol=1e-12)


def test_oversample_reports_the_sampler(rng):
    fit = fit_weights(sample_mixture(NEG_MEMBERS, np.array([0.5, 0.5]), 3000, rng).log_f,
                      log=True)
    events = oversample(NEG_MEMBERS, fit, 2000, rng)
    assert events.negative_mass == events.sampler["negative_mass"]
    assert events.sampler["n_proposed"] >= 2000
