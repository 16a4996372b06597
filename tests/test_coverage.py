"""Coverage of the first moment (paper Step 3, Eq. 4) with the truth inside the span."""

import numpy as np
import pytest

from genval.coverage import run_coverage
from genval.members import GaussianMembers
from genval.products import MemberIntegrals
from genval.sampling import sample_mixture

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
