"""Weakly identified weight directions (issue 10): leverage, the ridge toward the equal-weight
mixture, the posterior covariance, the input's precision floor and the prior's share."""

import warnings

import numpy as np
import pytest

from genval.errors import IllConditionedWarning, InputError
from genval.identification import (
    MAX_LEVERAGE,
    PRIOR_STD,
    input_precision,
    leverages,
    precision_floor,
    ridge_cap,
)
from genval.linalg import sum_to_one_basis
from genval.members import GaussianMembers, log_density_matrix
from genval.paper import PAPER_TOY_MEAN, PAPER_TOY_STD
from genval.products import common_sample_integrals, estimate_observable, oversample
from genval.sampling import sample_mixture
from genval.wifi import WeightFit, fit_weights
from realistic_support import jittered_members

MU, SD = np.asarray(PAPER_TOY_MEAN), np.asarray(PAPER_TOY_STD)
#: Points along the first feature at 0, 2, 4 and 6 standard deviations from the toy's mean.
ALONG = np.array([0.0, 2.0, 4.0, 6.0])
POINTS = np.stack([MU[0] + ALONG * SD[0], np.full(ALONG.size, MU[1])], axis=1)


def weak_instance(seed: int, n_members: int = 30, n_events: int = 10_000):
    """30 Gaussians jittered by 5 % around the paper's toy, a Dirichlet truth in their span and
    ``log F`` of a fresh weight-fit sample: weakly identified (ridge in every replica)."""
    members, truth = jittered_members(n_members, 0.05, seed=1)
    rng = np.random.default_rng([seed, 3])
    counts = rng.multinomial(n_events, truth)
    x = np.concatenate([members.sample(int(c), k, rng) for k, c in enumerate(counts)])
    return members, truth, log_density_matrix(members, x)


def quiet_fit(log_f, **kwargs) -> WeightFit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # weak by construction
        return fit_weights(log_f, log=True, **kwargs)


def random_instance(seed: int, m: int = 5, n: int = 4000):
    rng = np.random.default_rng(seed)
    members = GaussianMembers(rng.normal(0.0, 1.0, (m, 2)), rng.uniform(0.4, 1.5, (m, 2)))
    return sample_mixture(members, rng.dirichlet(np.ones(m)), n, rng).log_f


@pytest.mark.parametrize("seed", range(6))
def test_well_identified_fits_are_the_plain_maximum_likelihood_fit(seed):
    """Random well-separated members: no ridge, nothing unresolved, no prior, and the very fit
    without the leverage criterion (itself checked against scipy in test_wifi.py)."""
    log_f = random_instance(seed, m=3 + seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_weights(log_f, log=True)
    assert fit.ridge == 0.0 and fit.n_unidentified == 0 and fit.n_regularised == 0
    assert fit.cov_prior_reduced is None and fit.prior_std == np.inf
    plain = fit_weights(log_f, log=True, max_leverage=None)
    np.testing.assert_array_equal(fit.weights, plain.weights)
    np.testing.assert_array_equal(fit.cov, plain.cov)
    assert fit.converged and fit.grad_norm < 1e-9 and abs(fit.weights.sum() - 1) < 1e-12
    band = fit.density_band(np.exp(log_f[:50]))
    assert not band.prior_share.any() and not band.flagged.any()
    np.testing.assert_allclose(band.std, np.sqrt(np.einsum(
        "ij,jk,ik->i", np.exp(log_f[:50]), fit.cov, np.exp(log_f[:50]))), rtol=1e-8)
    assert 0 < fit.leverage < MAX_LEVERAGE


def test_leverage_is_the_squared_relative_band_at_each_event():
    """``h_n = σ²(x_n) / f̂(x_n)²`` at the weight-fit events and ``Σ h_n = M − 1``."""
    log_f = random_instance(11, m=6)
    fit = fit_weights(log_f, log=True)
    S = np.exp(log_f - log_f.max(axis=1, keepdims=True))
    A = S / (S @ fit.weights)[:, None]
    h = leverages(A.T @ A / len(A), A)
    assert h.sum() == pytest.approx(fit.n_members - 1, rel=1e-9)
    np.testing.assert_allclose(h, (fit.density_std(S) / fit.density(S)) ** 2, rtol=1e-6)
    assert h.max() == pytest.approx(fit.leverage, rel=1e-9)


def test_weak_directions_get_a_ridge_and_never_zero_variance():
    members, truth, log_f = weak_instance(0)
    with pytest.warns(IllConditionedWarning, match="weakly identified weights"):
        fit = fit_weights(log_f, log=True)
    assert fit.ridge > 0 and fit.converged and fit.n_regularised > 0
    assert fit.ridge <= ridge_cap(fit.n_events) * (1 + 1e-12)
    assert fit.prior_std >= PRIOR_STD * (1 - 1e-12)
    assert fit.hessian_condition > 1e7  # the weak directions are there ...
    eigen = np.linalg.eigvalsh(fit.cov_reduced)
    assert eigen.min() > 0  # ... and none of them has zero variance
    # The weakest directions carry the prior's variance s² = 1/(Nτ) (up to the data's share).
    assert eigen.max() == pytest.approx(fit.prior_std ** 2, rel=0.05)
    assert abs(fit.weights.sum() - 1) < 1e-12 and fit.grad_norm < 1e-9
    band = fit.density_band(np.exp(log_density_matrix(members, POINTS)))
    assert np.all((band.prior_share >= 0) & (band.prior_share <= 1))
    assert band.prior_share[0] < 0.5 and band.prior_share[-1] > band.prior_share[0]
    assert "ridge τ=" in repr(fit) and "prior sd" in repr(fit)
    plain = quiet_fit(log_f, max_leverage=None)
    assert plain.ridge == 0 and plain.abs_weight_sum > 10 * fit.abs_weight_sum


def test_the_ridge_covariance_is_the_posterior_of_the_gaussian_prior():
    """``C_r = H⁻¹ (U_r + τ) H⁻¹ / N`` with ``H = V_r + τ``, built here from the events."""
    _, _, log_f = weak_instance(1)
    fit = quiet_fit(log_f)
    S = np.exp(log_f - log_f.max(axis=1, keepdims=True))
    A = S / (S @ fit.weights)[:, None]
    n, m = A.shape
    B = sum_to_one_basis(m)
    scores = A @ B
    V_r = scores.T @ scores / n
    U_r = np.cov(scores, rowvar=False, bias=True)
    H_inv = np.linalg.inv(V_r + fit.ridge * np.eye(m - 1))
    expected = H_inv @ (U_r + fit.ridge * np.eye(m - 1)) @ H_inv / n
    np.testing.assert_allclose(fit.cov_reduced, expected, rtol=1e-6,
                               atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(fit.cov_prior_reduced, fit.ridge * H_inv @ H_inv / n, rtol=1e-6,
                               atol=1e-9 * np.abs(expected).max())
    # The penalised score equation: mean(Bᵀ A) = τ Bᵀ (ŵ − w̄).
    np.testing.assert_allclose(scores.mean(axis=0), fit.ridge * B.T @ (fit.weights - 1 / m),
                               atol=1e-10)


def test_the_estimate_does_not_move_with_the_starting_point():
    """Four starts (uniform and three Dirichlet draws): ŵ and f̂ at 0–6 sd agree to far below
    their reported uncertainty."""
    members, _, log_f = weak_instance(2)
    rng = np.random.default_rng(5)
    starts = [None] + [rng.dirichlet(np.ones(members.n_members)) for _ in range(3)]
    fits = [quiet_fit(log_f, w0=w0) for w0 in starts]
    F = np.exp(log_density_matrix(members, POINTS))
    for other in fits[1:]:
        assert np.all(np.abs(other.weights - fits[0].weights) < 1e-6 * fits[0].weight_std)
        assert np.all(np.abs(F @ (other.weights - fits[0].weights))
                      < 1e-6 * fits[0].density_std(F))
    assert len({f.ridge for f in fits}) == 1


def test_pointwise_coverage_on_a_weakly_identified_ensemble():
    """100 replicas (seed [r, 3]) of the 30 jittered Gaussians at 10k events: the Eq. (3) band
    covers the Dirichlet truth at 0, 2, 4 and 6 sd in ≥ 58 % (68.3 % band; binomial sd 0.047)
    and ≥ 85 % (95.4 %) of the replicas. Without the ridge (``max_leverage=None``) the 95.4 %
    band measured 0.85 / 0.82 at 4 / 6 sd over 40 of these replicas."""
    members, truth, _ = weak_instance(0)
    F = np.exp(log_density_matrix(members, POINTS))
    covered = []
    for r in range(100):
        _, _, log_f = weak_instance(r)
        fit = quiet_fit(log_f)
        error = np.abs(F @ (fit.weights - truth))
        std = fit.density_std(F)
        covered.append([error < std, error < 2 * std])
    fractions = np.mean(covered, axis=0)
    assert np.all(fractions[0] >= 0.58), fractions
    assert np.all(fractions[1] >= 0.85), fractions


def test_observables_and_samples_carry_the_prior_share():
    members, _, log_f = weak_instance(3)
    fit = quiet_fit(log_f)
    rng = np.random.default_rng(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # f̂ < 0 far out is incidental here
        drawn = sample_mixture(members, fit.weights, 5000, rng)
        events = oversample(members, fit, 2000, rng)
    estimate = estimate_observable(fit, common_sample_integrals(drawn.x, drawn.log_f,
                                                                fit.weights))
    assert estimate.prior_share.shape == (2,)
    assert np.all((estimate.prior_share >= 0) & (estimate.prior_share < 0.5))
    assert events.prior_share.shape == (2000,) and not estimate.flagged.any()
    band = fit.density_band(np.exp(log_density_matrix(members, events.x)))
    np.testing.assert_allclose(events.prior_share, band.prior_share, rtol=1e-8, atol=1e-12)
    # A plain fit: no prior anywhere.
    simple = GaussianMembers([[0.0], [1.0], [-1.0]], [[1.0], [0.5], [2.0]])
    weights = np.array([0.5, 0.3, 0.2])
    plain = fit_weights(sample_mixture(simple, weights, 3000, rng).log_f, log=True)
    assert plain.ridge == 0 and not plain.cov_prior.any()
    sample = sample_mixture(simple, plain.weights, 1000, rng)
    plain_estimate = estimate_observable(plain, common_sample_integrals(sample.x, sample.log_f,
                                                                        plain.weights))
    assert not plain_estimate.prior_share.any()


def test_the_input_precision_sets_the_floor():
    assert input_precision(np.float32) == np.finfo(np.float32).eps
    assert input_precision(np.dtype("float64")) == np.finfo(np.float64).eps
    assert input_precision("torch.float32") == np.finfo(np.float32).eps
    assert input_precision("torch.bfloat16") == 2.0 ** -7
    assert input_precision(object()) == np.finfo(np.float64).eps
    assert precision_floor(np.finfo(np.float64).eps, 5.0, 60) == pytest.approx(
        60 * np.finfo(np.float64).eps)
    assert precision_floor(np.finfo(np.float32).eps, 5.0, 60) == pytest.approx(
        60 * (5 * np.finfo(np.float32).eps) ** 2)
    _, _, log_f = weak_instance(4)
    double = quiet_fit(log_f)
    single = quiet_fit(log_f.astype(np.float32))
    flagged = quiet_fit(log_f, precision=float(np.finfo(np.float32).eps))
    assert double.precision_floor < 1e-13 < single.precision_floor
    assert flagged.precision_floor == pytest.approx(single.precision_floor, rel=1e-6)
    assert double.n_unidentified == single.n_unidentified == 0  # cond(V) ≈ 1e8 here
    # Densities good to 1e-4 only: the weakest directions are unresolved, held at the
    # equal-weight mixture with the prior's variance.
    coarse = quiet_fit(log_f, precision=1e-4)
    assert coarse.precision_floor > 1e-7 and coarse.n_unidentified > 0
    assert coarse.n_regularised >= coarse.n_unidentified
    assert np.linalg.eigvalsh(coarse.cov_reduced).min() > 0
    assert "not resolved at the input's precision" in " ".join(coarse.messages)


def test_an_exact_duplicate_is_held_at_equal_weights_with_the_prior_variance():
    log_f = random_instance(7, m=4)
    twin = np.column_stack([log_f, log_f[:, 2]])
    with pytest.warns(IllConditionedWarning, match=r"1 direction\(s\): members \[(2, 4|4, 2)"):
        fit = fit_weights(twin, log=True)
    single = fit_weights(log_f, log=True)
    assert fit.n_unidentified == 1 and fit.ridge == 0 and fit.prior_std == PRIOR_STD
    assert fit.weights[2] == pytest.approx(fit.weights[4], rel=1e-9)
    np.testing.assert_allclose(fit.weights[2] + fit.weights[4], single.weights[2], rtol=1e-8)
    direction = np.array([0, 0, 1, 0, -1]) / np.sqrt(2)
    assert direction @ fit.cov @ direction == pytest.approx(PRIOR_STD ** 2, rel=1e-6)
    # The twin's difference never changes the density: σ(x) is the fit's without the twin.
    F = np.exp(twin[:30])
    np.testing.assert_allclose(fit.density_std(F), single.density_std(F[:, :4]), rtol=1e-6)
    assert fit.density_band(F).prior_share.max() < 1e-12


def test_bad_max_leverage_and_saved_fits():
    log_f = random_instance(8)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(InputError, match="max_leverage"):
            fit_weights(log_f, log=True, max_leverage=bad)
    _, _, weak = weak_instance(5)
    fit = quiet_fit(weak)
    again = WeightFit.from_dict(fit.to_dict())
    np.testing.assert_array_equal(again.cov_prior_reduced, fit.cov_prior_reduced)
    assert (again.ridge, again.n_regularised, again.leverage, again.precision_floor) == (
        fit.ridge, fit.n_regularised, fit.leverage, fit.precision_floor)
    # A fit saved before the ridge existed: no prior, the old cut recorded.
    old = {k: v for k, v in fit_weights(log_f, log=True).to_dict().items()
           if k not in ("ridge", "cov_prior_reduced", "n_regularised", "leverage",
                        "precision_floor")}
    legacy = WeightFit.from_dict(old)
    assert legacy.ridge == 0 and legacy.cov_prior_reduced is None
    assert legacy.precision_floor == 1e-12 and np.isnan(legacy.leverage)
    assert not legacy.density_band(np.exp(log_f[:5])).prior_share.any()
