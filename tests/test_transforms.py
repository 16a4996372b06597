"""Feature transforms: bijections, Jacobians, physical-unit members and kernels, invariances.

Every map runs through the same checks (inverse, log-Jacobian against torch autograd in
float64, domain errors, serialisation); the densities in physical units integrate to one and
their samples follow them; ŵ, Cov(ŵ) and the GoF statistic t do not depend on the Jacobian.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from genval import gof
from genval.errors import InputError
from genval.members import GaussianMembers, log_density_matrix
from genval.transforms import (
    PERIODIC_MESSAGE,
    Bounded,
    FeatureTransform,
    Identity,
    Log,
    TransformedMembers,
    parse_feature_map,
)
from genval.wifi import fit_weights

MAPS = {
    "identity": Identity(),
    "log": Log(),
    "log shift -3": Log(-3.0),
    "log shift 100": Log(100.0),
    "bounded eta": Bounded(-2.5, 2.5),
    "bounded dphi": Bounded(0.0, np.pi),
}


def _torch_reference(fmap, x: torch.Tensor) -> torch.Tensor:
    """The map's definition, written independently in torch (float64)."""
    if isinstance(fmap, Identity):
        return x * 1.0
    if isinstance(fmap, Log):
        return torch.log(x - fmap.shift)
    return torch.logit((x - fmap.lo) / (fmap.hi - fmap.lo))


def _inside(fmap, rng, n=2000):
    """Values across the domain, including some near its edges (from y over a wide range)."""
    y = np.concatenate([rng.normal(0.0, 2.0, n), rng.uniform(-30, 30, n // 10)])
    return fmap.inverse(y)


@pytest.mark.parametrize("name", list(MAPS))
def test_inverse_undoes_forward(name, rng):
    fmap = MAPS[name]
    x = _inside(fmap, rng)
    assert not fmap.outside(x).any()
    back = fmap.inverse(fmap.forward(x))
    # relative to the distance from the nearest edge (what the map resolves)
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-12)
    y = rng.normal(0.0, 3.0, 500)
    np.testing.assert_allclose(fmap.forward(fmap.inverse(y)), y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(MAPS))
def test_forward_and_log_jacobian_match_torch_autograd(name, rng):
    fmap = MAPS[name]
    x = _inside(fmap, rng)
    # away from the edges, where float64 resolves the derivative of the definition
    x = x[np.abs(fmap.forward(x)) < 12]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = _torch_reference(fmap, xt)
    (grad,) = torch.autograd.grad(yt.sum(), xt)
    np.testing.assert_allclose(fmap.forward(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fmap.log_abs_det(x), np.log(np.abs(grad.numpy())),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in MAPS if n != "identity"])
def test_inverse_stays_inside_the_domain_far_in_the_tails(name):
    fmap = MAPS[name]
    x = fmap.inverse(np.array([-1e4, -800.0, -40.0, 40.0, 800.0, 1e4]))
    assert np.all(np.isfinite(x)) and not fmap.outside(x).any()
    assert np.all(np.isfinite(fmap.log_abs_det(x)))


def test_out_of_domain_values_are_named_with_count_and_range():
    t = FeatureTransform([Log(), Bounded(-2.5, 2.5), Identity()], ["pt", "eta", "m"])
    x = np.array([[10.0, 0.0, 1.0], [0.0, 2.5, 1.0], [-4.0, 0.1, 1.0], [5.0, 2.49, -3.0]])
    with pytest.raises(InputError) as err:
        t.forward(x)
    msg = str(err.value)
    assert "feature 'pt': 2 of 4 values outside (0, inf) (they span [-4, 0])" in msg
    assert "feature 'eta': 1 of 4 values outside (-2.5, 2.5) (they span [2.5, 2.5])" in msg
    assert "'m'" not in msg
    with pytest.raises(InputError, match="feature 'pt'"):
        t.log_abs_det(x)
    with pytest.raises(InputError, match="NaN"):
        t.forward(np.array([[np.nan, 0.0, 1.0]]))
    # a shift close to the values: x - shift rounds to 0 is outside, not log(0)
    assert Log(1e20).outside(np.array([1e20 + 1.0])).all()


def test_parse_forms_and_refusals():
    assert parse_feature_map("log") == Log() == parse_feature_map({"log": {"shift": 0}})
    assert parse_feature_map({"log": None}) == Log()
    assert parse_feature_map({"log": {"shift": 2}}) == Log(2.0)
    assert parse_feature_map({"bounded": [0, 1]}) == Bounded(0.0, 1.0)
    assert parse_feature_map("identity") == Identity()
    for spec in ("periodic", {"periodic": [-3.2, 3.2]}):
        with pytest.raises(InputError) as err:
            parse_feature_map(spec)
        assert str(err.value) == PERIODIC_MESSAGE and "uniform" in PERIODIC_MESSAGE
    for spec, message in [("bounded", "needs its interval"), ({"bounded": [0, "1"]}, "number"),
                          ({"bounded": [1, 1]}, "lo < hi"), ({"log": {"shift": True}}, "number"),
                          ({"log": 2}, "log takes"), ("exp", "unknown transform"),
                          ({"log": {}, "bounded": [0, 1]}, "unknown transform"),
                          ({"bounded": [0, float("inf")]}, "finite")]:
        with pytest.raises(InputError, match=message):
            parse_feature_map(spec)


def test_transform_serialises_to_json_and_back():
    t = FeatureTransform.from_spec({"pt": "log", "eta": {"bounded": [-2.5, 2.5]},
                                    "m": {"log": {"shift": -1.5}}}, ["pt", "eta", "m", "dr"])
    data = json.loads(json.dumps(t.to_dict()))
    back = FeatureTransform.from_dict(data)
    assert back == t and back.describe() == ["log(pt)", "logit(eta in (-2.5, 2.5))",
                                             "log(m + 1.5)", "dr"]
    assert not back.is_identity and FeatureTransform.identity(["a", "b"]).is_identity
    assert FeatureTransform.from_spec({}, ["a"]) == FeatureTransform.identity(["a"])
    for bad in ({"format": "other"}, {"format": "genval.transform/1"},
                {"format": "genval.transform/1", "features": [{"name": "x", "map": "sqrt"}]}):
        with pytest.raises(InputError):
            FeatureTransform.from_dict(bad)
    with pytest.raises(InputError, match="did you mean 'pt'"):
        FeatureTransform.from_spec({"Pt": "log"}, ["pt", "eta"])


# --- densities in physical units --------------------------------------------------------------

def _members_1d(fmap):
    base = GaussianMembers([[0.3], [-0.4]], [[0.5], [1.2]])
    return TransformedMembers(base, FeatureTransform([fmap], ["v"]))


@pytest.mark.parametrize("fmap,lo,hi", [(Log(), 0.0, np.inf), (Log(-3.0), -3.0, np.inf),
                                        (Bounded(-2.5, 2.5), -2.5, 2.5)])
def test_transformed_member_density_integrates_to_one(fmap, lo, hi):
    members = _members_1d(fmap)
    for m in range(members.n_members):
        def density(v, m=m):
            return float(np.exp(members.log_prob(np.array([[v]]))[m, 0]))
        # split at the median of the member so quad sees the peak
        mid = float(fmap.inverse(np.array([members.base.means[m, 0]]))[0])
        total = sum(scipy.integrate.quad(density, a, b, epsabs=1e-11, epsrel=1e-10,
                                         limit=200)[0] for a, b in ((lo, mid), (mid, hi)))
        assert total == pytest.approx(1.0, abs=1e-8)


def test_transformed_2d_density_integrates_to_one():
    base = GaussianMembers([[3.0, 0.2]], [[[0.3, 0.1], [0.1, 0.6]]])
    members = TransformedMembers(base, FeatureTransform([Log(), Bounded(-2.5, 2.5)]))

    def density(eta, pt):
        return float(np.exp(members.log_prob(np.array([[pt, eta]]))[0, 0]))

    total, err = scipy.integrate.dblquad(density, 0.0, 400.0, -2.5, 2.5, epsabs=1e-9,
                                         epsrel=1e-8)
    # mass above pT = 400 (log pT > 5.99, 5 standard deviations): 3e-7 of the member
    beyond = scipy.stats.norm.sf(np.log(400.0), 3.0, np.sqrt(0.3))
    assert total + beyond == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("fmap", [Log(), Bounded(-2.5, 2.5)])
def test_samples_follow_the_physical_density(fmap):
    # Kolmogorov-Smirnov against the exact CDF of each member in x (seeded; p > 0.001).
    members = _members_1d(fmap)
    for m in range(members.n_members):
        x = members.sample(20_000, m, np.random.default_rng(17 + m))[:, 0]
        assert not fmap.outside(x).any()
        mu, sd = members.base.means[m, 0], np.sqrt(members.base.covs[m, 0, 0])

        def cdf(v, mu=mu, sd=sd):
            return scipy.stats.norm.cdf(fmap.forward(v), mu, sd)

        assert scipy.stats.kstest(x, cdf).pvalue > 1e-3
    # and they do not follow a visibly different density (the test has power)
    x = members.sample(20_000, 0, np.random.default_rng(5))[:, 0]
    assert scipy.stats.kstest(x, lambda v: scipy.stats.norm.cdf(
        fmap.forward(v), members.base.means[0, 0] + 0.05, 0.5 ** 0.5)).pvalue < 1e-3


def test_transformed_members_check_their_input():
    members = _members_1d(Log())
    with pytest.raises(InputError, match="feature 'v': 1 of 2 values outside"):
        members.log_prob(np.array([[1.0], [-1.0]]))
    with pytest.raises(InputError, match="members have 1 features, the transform 2"):
        TransformedMembers(members.base, FeatureTransform([Log(), Log()]))
    assert members.n_members == 2 and members.n_features == 1


# --- invariances: the Jacobian is a common factor per event ------------------------------------

PHYSICAL = FeatureTransform([Log(), Bounded(-2.5, 2.5)], ["pt", "eta"])


def _ensemble():
    """Four Gaussian members in the transformed coordinates (log pT, logit eta)."""
    means = np.array([[3.0, 0.0], [3.05, 0.1], [2.95, -0.05], [3.0, 0.08]])
    covs = np.array([[0.30, 0.50], [0.28, 0.55], [0.33, 0.45], [0.31, 0.52]])
    return GaussianMembers(means, covs)


def _events(n, seed, shift=0.0):
    """Physical events (pT, eta), drawn in the transformed coordinates."""
    y = np.random.default_rng(seed).normal([3.0 + shift, 0.02], [0.55, 0.72], size=(n, 2))
    return PHYSICAL.inverse(y)


def test_weights_and_covariance_do_not_depend_on_the_jacobian():
    base = _ensemble()
    members = TransformedMembers(base, PHYSICAL)
    x = _events(4000, 1)
    y = PHYSICAL.forward(x)
    log_fx, log_fy = log_density_matrix(members, x), log_density_matrix(base, y)
    # the physical densities really differ from the transformed ones, by one factor per event
    jac = PHYSICAL.log_abs_det(x)
    assert np.ptp(jac) > 3
    np.testing.assert_allclose(log_fx - log_fy, np.repeat(jac[:, None], 4, axis=1),
                               rtol=1e-12, atol=1e-12)
    fit_x, fit_y = fit_weights(log_fx, log=True), fit_weights(log_fy, log=True)
    assert fit_x.converged and fit_y.converged
    np.testing.assert_allclose(fit_x.weights, fit_y.weights, rtol=1e-8, atol=1e-9)
    scale = np.abs(fit_y.cov).max()
    np.testing.assert_allclose(fit_x.cov, fit_y.cov, rtol=1e-7, atol=1e-9 * scale)
    # the band of Eq. (3) is then the transformed band times the same Jacobian
    fx, fy = np.exp(log_fx[:50]), np.exp(log_fy[:50])
    np.testing.assert_allclose(fit_x.density_std(fx), fit_y.density_std(fy) * np.exp(jac[:50]),
                               rtol=1e-6)


def _bases(seed):
    """The same kernels, once on physical events with the transform, once on transformed."""
    held = _events(600, seed)
    with_transform = gof.KernelBasis.from_events(held, 10, 1.0, standardize=True,
                                                 transform=PHYSICAL, seed=3)
    transformed = gof.KernelBasis.from_events(PHYSICAL.forward(held), 10, 1.0,
                                              standardize=True, seed=3)
    return with_transform, transformed


def test_kernels_in_the_transformed_space_are_physical_densities():
    basis, plain = _bases(4)
    assert basis.units == "standardised" and basis.describe()["coordinates"] == [
        "log(pt)", "logit(eta in (-2.5, 2.5))"]
    np.testing.assert_allclose(PHYSICAL.forward(basis.centers), plain.centers, rtol=1e-12)
    k = int(np.argmin(np.abs(plain.centers[:, 0] - 3.0)))

    def density(eta, pt):
        return float(basis.pdf(np.array([[pt, eta]]))[0, k])

    c_pt = float(basis.centers[k, 0])
    total = sum(scipy.integrate.dblquad(density, a, b, -2.5, 2.5, epsabs=1e-10,
                                        epsrel=1e-8)[0]
                for a, b in ((0.0, c_pt), (c_pt, 50 * c_pt)))
    assert total == pytest.approx(1.0, abs=1e-6)
    assert "of log(pt), logit(eta in (-2.5, 2.5))" in repr(basis)
    assert gof.kernel_basis_text(basis.describe()) == (
        "σ = 1 in standardised units of log(pt), logit(eta in (-2.5, 2.5))")
    with pytest.raises(InputError, match="outside"):
        basis.log_pdf(np.array([[-1.0, 0.0]]))


def test_test_statistic_is_invariant_with_kernels_in_the_transformed_space():
    base = _ensemble()
    members = TransformedMembers(base, PHYSICAL)
    fit = fit_weights(log_density_matrix(members, _events(4000, 1)), log=True)
    basis, plain = _bases(2)
    seen = []
    for shift in (0.0, 0.08):
        x = _events(3000, 7, shift)
        y = PHYSICAL.forward(x)
        check = dict(F_ref=log_density_matrix(members, basis.centers),
                     G_ref=basis.log_pdf(basis.centers))
        t_x = gof.test_statistic(log_density_matrix(members, x), basis.log_pdf(x), fit,
                                 log=True, **check)
        t_y = gof.test_statistic(log_density_matrix(base, y), plain.log_pdf(y), fit, log=True,
                                 F_ref=log_density_matrix(base, plain.centers),
                                 G_ref=plain.log_pdf(plain.centers))
        assert t_x.converged and t_y.converged
        assert float(t_x) == pytest.approx(float(t_y), rel=1e-6, abs=1e-6)
        seen.append(float(t_x))
    assert seen[1] > seen[0] + 20  # the shifted set is seen
    # kernels standardised in the physical coordinates are a different test
    physical = gof.KernelBasis.from_events(_events(600, 2), 10, 1.0, standardize=True, seed=3)
    t_phys = gof.test_statistic(log_density_matrix(members, x), physical.log_pdf(x), fit,
                                log=True, F_ref=log_density_matrix(members, physical.centers),
                                G_ref=physical.log_pdf(physical.centers))
    assert abs(float(t_phys) - float(t_x)) > 1e-3 * max(1.0, float(t_x))


def test_calibrated_test_is_the_same_in_physical_and_transformed_coordinates():
    base = _ensemble()
    members = TransformedMembers(base, PHYSICAL)
    fit = fit_weights(log_density_matrix(members, _events(4000, 1)), log=True)
    basis, plain = _bases(2)
    x = _events(1500, 9, 0.05)
    common = dict(n_toys=16, seed=11, variant="ensemble", n_pools=2, pool_size=7500, n_jobs=1)
    res_x = gof.goodness_of_fit(members, fit, x, basis, **common)
    res_y = gof.goodness_of_fit(base, fit, PHYSICAL.forward(x), plain, **common)
    # the pools are the same draws (samples are T^-1 of the base members' samples)
    assert res_x.t_obs == pytest.approx(res_y.t_obs, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(res_x.t_null, res_y.t_null, rtol=1e-5, atol=1e-5)
    assert res_x.kernel_basis["coordinates"] == ["log(pt)", "logit(eta in (-2.5, 2.5))"]
    assert res_y.kernel_basis["coordinates"] is None
    assert res_x.kernel_basis["units"] == "standardised"
    back = gof.GoFResult.from_dict(json.loads(json.dumps(res_x.to_dict())))
    assert back.kernel_basis == res_x.kernel_basis
    assert "σ = 1 in standardised units of log(pt)" in repr(res_x)
    with pytest.raises(InputError, match="kernel_basis differs"):
        gof.merge_results([res_x, gof.GoFResult.from_dict(res_y.to_dict())])
