"""Bring your own model: zuko, nflows, torch and scikit-learn members, and the factory hook."""

import numpy as np
import pytest
import scipy.stats
import torch

from genval import adapters, pipeline
from genval.adapters import (
    NflowsMembers,
    SklearnMembers,
    TorchMembers,
    ZukoMembers,
    as_members,
    build_members,
)
from genval.config import ConfigError, parse_config
from genval.errors import ArtifactError, InputError
from genval.members import GaussianMembers, Members, log_density_matrix
from genval.pipeline import artifacts
from genval.wifi import fit_weights


def _check_protocol(members, x, n_features):
    assert isinstance(members, Members)
    assert members.n_features == n_features
    log_f = members.log_prob(x)
    assert log_f.shape == (members.n_members, len(x)) and log_f.dtype == np.float64
    a = members.sample(50, 0, np.random.default_rng(3))
    b = members.sample(50, 0, np.random.default_rng(3))
    c = members.sample(50, 0, np.random.default_rng(4))
    assert a.shape == (50, n_features) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)  # the numpy generator decides the draws
    assert not np.array_equal(a, c)
    assert members.sample(0, 0, 1).shape == (0, n_features)
    with pytest.raises(InputError, match="out of range"):
        members.sample(5, members.n_members, 1)


def _gaussians(m=3, d=2):
    means = torch.tensor([[2.0 * k, -1.0 * k] for k in range(m)], dtype=torch.float64)[:, :d]
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)[:d, :d]
    return [torch.distributions.MultivariateNormal(mu, cov) for mu in means], means, cov


def test_torch_distributions_exact_densities_and_samples(rng):
    dists, means, cov = _gaussians()
    members = as_members(dists)
    assert type(members) is TorchMembers
    x = rng.normal(size=(200, 2))
    _check_protocol(members, x, 2)
    for m in range(3):
        ref = scipy.stats.multivariate_normal(means[m].numpy(), cov.numpy()).logpdf(x)
        np.testing.assert_allclose(members.log_prob(x)[m], ref, rtol=1e-12)
    # Samples belong to the member asked for: their mean is that member's, within 5 sigma.
    n = 20_000
    for m in range(3):
        draws = members.sample(n, m, rng)
        sigma = np.sqrt(np.diag(cov.numpy()) / n)
        assert np.all(np.abs(draws.mean(axis=0) - means[m].numpy()) < 5 * sigma)


class _DropoutDensity(torch.nn.Module):
    """A 1D Gaussian whose log_prob is wrong in training mode (as with batch norm)."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def log_prob(self, x):
        centre = self.shift + (10.0 if self.training else 0.0)
        return torch.distributions.Normal(centre, 1.0).log_prob(x[:, 0])

    def sample(self, n):
        return torch.randn(n, 1, dtype=torch.float64) + self.shift


def test_torch_modules_are_evaluated_in_eval_mode_and_restored():
    module = _DropoutDensity()
    module.train()
    members = TorchMembers([module])
    x = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(members.log_prob(x)[0], scipy.stats.norm.logpdf(x[:, 0]))
    assert module.training  # restored
    assert members.n_features == 1  # inferred from one draw


def test_nflows_flows(rng):
    nflows = pytest.importorskip("nflows")  # noqa: F841 -- the test oracle of the flows
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.normalization import BatchNorm

    torch.manual_seed(0)
    flows = [Flow(MaskedAffineAutoregressiveTransform(2, 8), StandardNormal([2]))
             for _ in range(2)]
    flows.append(Flow(BatchNorm(2), StandardNormal([2])))
    flows[2].train()
    flows[2].log_prob(torch.randn(64, 2) * 3)  # batch norm gets running statistics
    members = as_members(flows)
    assert isinstance(members, TorchMembers)
    members = NflowsMembers(flows)
    x = rng.normal(size=(300, 2))
    _check_protocol(members, x, 2)
    with torch.no_grad():
        flows[2].eval()
        expected = [f.log_prob(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
                    for f in flows]
        flows[2].train()
    np.testing.assert_allclose(members.log_prob(x), np.stack(expected), rtol=1e-6, atol=1e-6)
    assert flows[2].training
    # The draws are the flow's own, under the seed drawn from the generator.
    seed = int(np.random.default_rng(11).integers(0, 2**63 - 1))
    torch.manual_seed(seed)
    with torch.no_grad():
        own = flows[0].sample(40).double().numpy()
    np.testing.assert_allclose(members.sample(40, 0, np.random.default_rng(11)), own)


def test_zuko_flows(rng):
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(1)
    flows = [zuko.flows.NSF(2, transforms=2, hidden_features=[16]) for _ in range(3)]
    members = as_members(flows)
    assert type(members) is ZukoMembers
    x = rng.normal(size=(300, 2))
    _check_protocol(members, x, 2)
    with torch.no_grad():
        expected = np.stack([f().log_prob(torch.as_tensor(x, dtype=torch.float32)).double()
                             .numpy() for f in flows])
    np.testing.assert_allclose(members.log_prob(x), expected, rtol=1e-6, atol=1e-6)
    seed = int(np.random.default_rng(5).integers(0, 2**63 - 1))
    torch.manual_seed(seed)
    with torch.no_grad():
        own = flows[1]().sample((30,)).double().numpy()
    np.testing.assert_allclose(members.sample(30, 1, np.random.default_rng(5)), own)
    # torch's global RNG is left as it was
    state = torch.random.get_rng_state()
    members.sample(10, 0, 1)
    assert torch.equal(state, torch.random.get_rng_state())


def test_sklearn_estimators(rng):
    pytest.importorskip("sklearn")
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    x_train = np.concatenate([rng.normal(-2, 0.5, (300, 2)), rng.normal(2, 0.5, (300, 2))])
    kdes = [KernelDensity(bandwidth=0.3).fit(x_train[rng.integers(0, 600, 600)])
            for _ in range(2)]
    members = as_members(kdes)
    assert type(members) is SklearnMembers
    x = rng.normal(size=(100, 2))
    _check_protocol(members, x, 2)
    np.testing.assert_array_equal(members.log_prob(x)[1], kdes[1].score_samples(x))

    gmm = GaussianMixture(2, random_state=0).fit(x_train)
    mixtures = SklearnMembers([gmm])
    _check_protocol(mixtures, x, 2)
    assert gmm.random_state == 0  # set for the call, restored
    draws = mixtures.sample(400, 0, rng)
    # shuffled: scikit-learn returns the draws grouped by component
    labels = gmm.predict(draws)
    assert 0 < labels.mean() < 1 and np.any(np.diff(labels) != 0) \
        and np.count_nonzero(np.diff(labels)) > 10
    # Two calls with different generators give different events (a fixed random_state
    # would repeat them).
    assert not np.array_equal(mixtures.sample(20, 0, 1), mixtures.sample(20, 0, 2))
    with pytest.raises(InputError, match="not fitted"):
        SklearnMembers([KernelDensity()])


def test_as_members_dispatch_and_refusals():
    gauss = GaussianMembers(np.zeros((2, 2)), np.ones((2, 2)))
    assert as_members(gauss) is gauss
    dists, _, _ = _gaussians(2)
    assert as_members(torch.nn.ModuleList([_DropoutDensity()])).n_members == 1
    assert as_members(dists[0]).n_members == 1  # one model: an ensemble of one
    with pytest.raises(InputError, match="needs"):
        as_members([object()])
    with pytest.raises(InputError, match="different kinds"):
        as_members([dists[0], object()])
    with pytest.raises(InputError, match="at least one"):
        as_members([])


def test_adapted_members_give_the_weight_fit_of_native_members(rng):
    means = np.array([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0]])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    native = GaussianMembers(means, np.stack([cov] * 3))
    adapted = as_members([torch.distributions.MultivariateNormal(
        torch.as_tensor(mu), torch.as_tensor(cov)) for mu in means])
    x = native.sample(3000, 0, rng)
    fit = fit_weights(log_density_matrix(adapted, x), log=True)
    ref = fit_weights(log_density_matrix(native, x), log=True)
    assert fit.converged
    np.testing.assert_allclose(fit.weights, ref.weights, atol=1e-9)
    np.testing.assert_allclose(fit.cov, ref.cov, atol=1e-9)


# --- the factory hook: members.kind: python ---------------------------------------------------

def test_factory_config_is_validated():
    with pytest.raises(ConfigError, match="needs members.factory"):
        parse_config({"members": {"kind": "python"}})
    with pytest.raises(ConfigError, match="set kind: python"):
        parse_config({"members": {"factory": "a:b"}})
    with pytest.raises(ConfigError, match="module:function"):
        parse_config({"members": {"kind": "python", "factory": "a.b"}})


def test_load_factory_errors():
    with pytest.raises(InputError, match="cannot import 'no_such_module_xyz'"):
        adapters.load_factory("no_such_module_xyz:f")
    with pytest.raises(InputError, match="has no 'nope'"):
        adapters.load_factory("byo_support:nope")
    with pytest.raises(InputError, match="returned 4 members but members.n_members is 3"):
        build_members("byo_support:wrong_size", np.zeros((50, 2)) + np.arange(50)[:, None],
                      n_members=3, seed=0)


def test_weighted_events_need_a_factory_that_takes_them(rng):
    pytest.importorskip("sklearn")
    import byo_support

    x = rng.normal(size=(60, 2))
    w = rng.uniform(0.5, 1.5, 60)
    with pytest.raises(InputError, match="takes no event_weights"):
        build_members("byo_support:gaussian_mixtures", x, n_members=2, seed=0, event_weights=w)
    members = build_members("byo_support:weighted", x, n_members=2, seed=0, event_weights=w)
    assert members.n_members == 2 and byo_support.CALLS["weights"] is w


def _python_config(tmp_path, factory, **extra):
    base = {"run_dir": str(tmp_path / "run"), "quiet": True,
            "data": {"generate": {"n_events": 800}},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "python", "n_members": 3, "factory": factory},
            "sample": {"n_events": 300},
            "coverage": {"enabled": False},
            "gof": {"n_kernels": 10, "n_toys": 5, "pool_size": 2000, "n_pools": 1,
                    "variants": ["ensemble"]},
            "report": {"formats": ["png"], "dpi": 30, "pool_size": 2000}}
    base.update(extra)
    return parse_config(base)


def test_pipeline_with_factory_members(tmp_path):
    pytest.importorskip("sklearn")
    import byo_support

    cfg = _python_config(tmp_path, "byo_support:with_device")
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "sample", "gof"])
    assert (run.root / "models" / "python.json").is_file()
    assert run.stage_info("train")["adapter"] == "SklearnMembers"
    assert byo_support.CALLS["device"] == "cpu"
    spec = artifacts.load_python_members(run)
    assert spec.fingerprint.shape == (3, artifacts.FINGERPRINT_EVENTS)
    fit = pipeline.load_fit(run)
    assert fit.converged and abs(fit.weights.sum() - 1) < 1e-9
    assert (run.root / "gof" / "ensemble.json").is_file()


def test_factory_returning_other_members_is_caught(tmp_path):
    pytest.importorskip("sklearn")
    cfg = _python_config(tmp_path, "byo_support:changes_every_call")
    with pytest.raises(ArtifactError, match="returned other members"):
        pipeline.run_pipeline(cfg, stages=["split", "train", "fit"])
