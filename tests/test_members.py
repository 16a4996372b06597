import numpy as np
import pytest
from scipy import stats

import genval as gv
from genval.errors import InputError
from genval.members import CallableMembers, GaussianMembers, KDEMembers, log_density_matrix


def test_gaussian_members_match_scipy(rng):
    means = rng.normal(size=(3, 2))
    covs = np.stack([np.diag(rng.uniform(0.2, 1.0, 2)) for _ in range(3)])
    members = GaussianMembers(means, covs)
    x = rng.normal(size=(50, 2))
    expected = np.stack([stats.multivariate_normal(means[m], covs[m]).logpdf(x) for m in range(3)])
    np.testing.assert_allclose(members.log_prob(x), expected, rtol=1e-12)
    assert isinstance(members, gv.members.Members)


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_kde_members_match_scipy_gaussian_kde(rng, rule):
    # In 1D scipy's kernel is N(0, factor² var) with the same Scott/Silverman factors, so the
    # two densities agree exactly on each member's bootstrap replica.
    members = KDEMembers(rng.normal(size=(300, 1)), n_members=2, bandwidth=rule, seed=1,
                         block_elements=17 * 300)
    test = rng.normal(scale=2.0, size=(40, 1))
    for m in range(2):
        replica = members._replicas[m][:, 0]
        reference = stats.gaussian_kde(replica, bw_method=rule).logpdf(test[:, 0])
        np.testing.assert_allclose(members.log_prob(test)[m], reference, rtol=1e-10)


def test_kde_members_match_a_direct_sum_in_2d(rng):
    x = rng.normal(size=(300, 2))
    members = KDEMembers(x, n_members=2, bandwidth=0.3, seed=1, block_elements=17 * 300)
    test = rng.normal(size=(40, 2))
    for m in range(2):
        replica = members._replicas[m]
        # A direct O(N * n) sum over the replica, without the GEMM expansion.
        d2 = (((test[:, None, :] - replica[None]) / 0.3) ** 2).sum(-1)
        direct = np.log(np.exp(-0.5 * d2).mean(1) / (2 * np.pi * 0.3 ** 2))
        np.testing.assert_allclose(members.log_prob(test)[m], direct, rtol=1e-10)


def test_kde_members_integrate_to_one_and_sample(rng):
    members = KDEMembers(rng.normal(size=(200, 1)), n_members=3, seed=2)
    grid = np.linspace(-8, 8, 4001)[:, None]
    integral = np.exp(members.log_prob(grid)).sum(axis=1) * (grid[1, 0] - grid[0, 0])
    np.testing.assert_allclose(integral, 1.0, atol=1e-6)
    draws = members.sample(5000, 1, rng)
    assert draws.shape == (5000, 1)
    cdf_grid = np.cumsum(np.exp(members.log_prob(grid)[1])) * (grid[1, 0] - grid[0, 0])
    ks = stats.kstest(draws[:, 0], lambda v: np.interp(v, grid[:, 0], cdf_grid))
    assert ks.pvalue > 1e-3


def test_callable_members_and_errors(rng):
    samplers = [lambda n, g: g.normal(0, 1, n), lambda n, g: g.normal(1, 1, n)]
    members = CallableMembers([stats.norm(0, 1).logpdf, stats.norm(1, 1).logpdf], n_features=1,
                              samplers=samplers)
    log_f = log_density_matrix(members, np.array([[0.0], [1.0]]))
    assert log_f.shape == (2, 2)
    assert members.sample(10, 1, rng).shape == (10, 1)
    with pytest.raises(InputError, match="NaN/inf"):
        log_density_matrix(members, np.array([[np.nan]]))
    with pytest.raises(InputError, match="features"):
        log_density_matrix(members, np.zeros((3, 2)))
    broken = CallableMembers([lambda x: np.full(len(x), np.nan)], n_features=1)
    with pytest.raises(InputError, match="member 0"):
        log_density_matrix(broken, np.zeros((3, 1)))
    with pytest.raises(InputError, match="without samplers"):
        broken.sample(3, 0)


def test_kde_bad_input():
    with pytest.raises(InputError, match="at least 2"):
        KDEMembers(np.zeros((1, 2)), n_members=2)
    with pytest.raises(InputError, match="bandwidth rule"):
        KDEMembers(np.random.default_rng(0).normal(size=(10, 2)), 2, bandwidth="nope")
