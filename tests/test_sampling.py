"""Exact sampling from signed mixtures and the products built on it."""

import numpy as np
import pytest
from scipy import stats

from genval.errors import InputError
from genval.members import GaussianMembers
from genval.products import (
    MemberIntegrals,
    estimate_observable,
    member_integrals,
    observable,
    oversample,
)
from genval.sampling import sample_mixture
from genval.wifi import fit_weights

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
