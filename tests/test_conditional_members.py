"""Conditional members f_m(x | c): exact densities, normalisation in x for every context,
sampling x | c, flows with a context conditioner, training with contexts, and the guarantee
that members without a context behave exactly as before (float64 where it matters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from genval.errors import InputError
from genval.flows import FlowEnsemble, load, save, train
from genval.members import (
    CallableMembers,
    ConditionalGaussianMembers,
    GaussianMembers,
    KDEMembers,
    Members,
    log_density_matrix,
    n_context_of,
)
from genval.transforms import FeatureTransform, Log, TransformedMembers


def gaussian_truth(n_members: int = 3) -> ConditionalGaussianMembers:
    """x | c ~ N(mu_m(c), sigma_m(c)^2) in 1D, members differing in slope and width."""
    slopes = np.linspace(0.8, 1.2, n_members)
    widths = np.linspace(0.9, 1.1, n_members)

    def mean(c):
        return slopes[:, None, None] * c[None, :, :1]

    def var(c):
        return (widths[:, None, None] * (0.2 + 0.1 * np.abs(c[None, :, :1]))) ** 2

    return ConditionalGaussianMembers(mean, var, n_members=n_members, n_features=1, n_context=1)


def perturbed_flow(n_context: int = 1, n_features: int = 2, seed: int = 0, scale: float = 0.2,
                   **kwargs) -> FlowEnsemble:
    ens = FlowEnsemble(n_features, 2, layers=2, hidden=10, blocks=1, bins=5, seed=seed,
                       n_context=n_context, **kwargs).double()
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return ens


# -- analytic members -----------------------------------------------------------------------
def test_conditional_gaussian_matches_scipy_per_event(rng):
    mu0 = rng.normal(size=(2, 2))
    a = rng.normal(size=(2, 2, 2)) * 0.3
    base = np.array([[1.0, 0.3], [0.3, 0.5]])

    def mean(c):
        return mu0[:, None, :] + np.einsum("mdc,nc->mnd", a, c)

    def cov(c):
        scale = 1.0 + 0.5 * np.abs(c[:, 0])
        return np.stack([base[None] * scale[:, None, None] * (1 + m) for m in range(2)])

    members = ConditionalGaussianMembers(mean, cov, n_members=2, n_features=2, n_context=2)
    x, c = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    lp = members.log_prob(x, context=c)
    mus, covs = mean(c), cov(c)
    expected = np.array([[stats.multivariate_normal(mus[m, n], covs[m, n]).logpdf(x[n])
                          for n in range(30)] for m in range(2)])
    np.testing.assert_allclose(lp, expected, rtol=1e-12)
    assert isinstance(members, Members) and n_context_of(members) == 2
    assert log_density_matrix(members, x, c).shape == (30, 2)


def test_conditional_gaussian_samples_follow_the_conditional(rng):
    members = gaussian_truth()
    c = np.full((20000, 1), 1.5)
    draws = members.sample(20000, 2, rng, context=c)
    expected_sd = 1.1 * (0.2 + 0.15)
    ks = stats.kstest(draws[:, 0], stats.norm(1.2 * 1.5, expected_sd).cdf)
    assert ks.pvalue > 1e-3
    # One context row for every draw (broadcast) equals the explicit rows.
    again = members.sample(20000, 2, np.random.default_rng(20261128), context=np.array([1.5]))
    assert again.shape == (20000, 1)


def test_unconditional_members_refuse_a_context_and_conditional_need_one(rng):
    x = rng.normal(size=(5, 1))
    unconditional = GaussianMembers(np.zeros((2, 1)), np.ones((2, 1)))
    with pytest.raises(InputError, match="unconditional"):
        unconditional.log_prob(x, context=np.zeros((5, 1)))
    with pytest.raises(InputError, match="unconditional"):
        log_density_matrix(unconditional, x, np.zeros((5, 1)))
    conditional = gaussian_truth()
    with pytest.raises(InputError, match="conditional on 1"):
        log_density_matrix(conditional, x)
    with pytest.raises(InputError, match="shape"):
        conditional.log_prob(x, context=np.zeros((4, 1)))
    with pytest.raises(InputError, match="NaN"):
        conditional.log_prob(x, context=np.full((5, 1), np.nan))


# -- KDE -------------------------------------------------------------------------------------
def test_conditional_kde_matches_the_nadaraya_watson_formula(rng):
    x, c = rng.normal(size=(200, 2)), rng.normal(size=(200, 1))
    members = KDEMembers(x, 2, seed=3, bandwidth=0.4, context=c, context_bandwidth=0.3,
                         block_elements=37 * 200)
    xt, ct = rng.normal(size=(25, 2)), rng.normal(size=(25, 1))
    lp = members.log_prob(xt, context=ct)
    for m in range(2):
        cx, cc = members._replicas[m], members._context_replicas[m]
        kc = np.exp(-0.5 * ((ct - cc.T) / 0.3) ** 2)  # (25, n)
        pi = kc / kc.sum(1, keepdims=True)
        kx = np.exp(-0.5 * (((xt[:, None, :] - cx[None]) / 0.4) ** 2).sum(-1)) \
            / (2 * np.pi * 0.4 ** 2)
        np.testing.assert_allclose(lp[m], np.log((pi * kx).sum(1)), rtol=1e-10)
    assert members.n_context == 1 and members.context_bandwidths.shape == (2, 1)


def test_conditional_kde_replicas_equal_the_unconditional_ones(rng):
    # The context rides along with the bootstrap: the same centres as without a context.
    x, c = rng.normal(size=(100, 1)), rng.normal(size=(100, 1))
    with_c = KDEMembers(x, 3, seed=5, context=c)
    without = KDEMembers(x, 3, seed=5)
    for a, b in zip(with_c._replicas, without._replicas, strict=True):
        np.testing.assert_array_equal(a, b)
    assert without.n_context == 0


def test_conditional_kde_is_far_from_every_centre_still_finite(rng):
    x, c = rng.normal(size=(100, 1)), rng.normal(size=(100, 1))
    members = KDEMembers(x, 2, seed=1, context=c)
    lp = members.log_prob(np.zeros((2, 1)), context=np.array([[40.0], [-1e3]]))
    assert np.isfinite(lp).all()


def test_weighted_conditional_kde_samples_match_its_density(rng):
    c = rng.uniform(0, 2, size=(400, 1))
    x = c + 0.3 * rng.normal(size=(400, 1))
    weights = rng.uniform(0.2, 1.0, 400)
    members = KDEMembers(x, 2, seed=2, context=c, event_weights=weights)
    grid = np.linspace(-3, 5, 4001)[:, None]
    ctx = np.full((len(grid), 1), 1.4)
    dens = np.exp(members.log_prob(grid, context=ctx)[1])
    cdf = np.cumsum(dens) * (grid[1, 0] - grid[0, 0])
    draws = members.sample(8000, 1, rng, context=np.full((8000, 1), 1.4))
    assert stats.kstest(draws[:, 0], lambda v: np.interp(v, grid[:, 0], cdf)).pvalue > 1e-3


# -- every member integrates to one in x, for fixed contexts (the acceptance) --------
def _members_under_test(rng) -> dict[str, Members]:
    c = rng.exponential(1.0, size=(300, 1))
    x = c + 0.5 * rng.normal(size=(300, 1))
    flow = perturbed_flow(n_context=1, n_features=1)
    flow.context_loc, flow.context_scale = np.array([1.0]), np.array([0.8])
    return {
        "gaussian": gaussian_truth(),
        "kde": KDEMembers(x, 3, seed=1, context=c),
        "flow": flow,
        "transformed": TransformedMembers(KDEMembers(np.log(np.abs(x) + 0.5), 2, seed=2,
                                                     context=c),
                                          FeatureTransform([Log(shift=-0.5)])),
    }


@pytest.mark.parametrize("name", ["gaussian", "kde", "flow", "transformed"])
def test_every_member_integrates_to_one_for_fixed_contexts(rng, name):
    members = _members_under_test(rng)[name]
    lo = -0.5 + 1e-9 if name == "transformed" else -25.0
    grid = np.linspace(lo, 25.0, 20_001)[:, None]
    for c in (0.05, 1.0, 4.0):
        dens = np.exp(members.log_prob(grid, context=np.full((len(grid), 1), c)))
        mass = np.trapezoid(dens, grid[:, 0], axis=1)
        np.testing.assert_allclose(mass, 1.0, atol=1e-2, err_msg=f"{name} at c={c}")


def test_transformed_members_pass_the_context(rng):
    c = rng.normal(size=(200, 1))
    base = KDEMembers(rng.normal(size=(200, 1)) + c, 2, seed=0, context=c)
    wrapped = TransformedMembers(base, FeatureTransform([Log()]))
    assert wrapped.n_context == 1
    x, ct = np.exp(rng.normal(size=(7, 1))), rng.normal(size=(7, 1))
    expected = base.log_prob(np.log(x), context=ct) - np.log(x[:, 0])[None]
    np.testing.assert_allclose(wrapped.log_prob(x, context=ct), expected, rtol=1e-12)
    draws = wrapped.sample(50, 1, 3, context=np.array([0.3]))
    assert draws.shape == (50, 1) and np.all(draws > 0)
    with pytest.raises(InputError, match="conditional"):
        wrapped.log_prob(x)


def test_callable_members_with_a_context(rng):
    def lp(shift):
        return lambda x, c: stats.norm(c[:, 0] + shift, 1).logpdf(x[:, 0])

    def sampler(shift):
        return lambda n, g, c: (c[:, 0] + shift + g.standard_normal(n))[:, None]

    members = CallableMembers([lp(0.0), lp(1.0)], 1, [sampler(0.0), sampler(1.0)], n_context=1)
    x, c = rng.normal(size=(9, 1)), rng.normal(size=(9, 1))
    np.testing.assert_allclose(members.log_prob(x, context=c)[1],
                               stats.norm(c[:, 0] + 1, 1).logpdf(x[:, 0]))
    draws = members.sample(4000, 1, rng, context=np.full((4000, 1), 2.0))
    assert abs(draws.mean() - 3.0) < 0.1
    with pytest.raises(InputError, match="n_context"):
        CallableMembers([lp(0.0)], 1, n_context=-1)


# -- flows -------------------------------------------------------------------------------------
def test_unconditional_flow_is_unchanged_by_the_context_machinery():
    # A conditional ensemble with the same seed draws its context weights last: every other
    # parameter equals the unconditional ensemble's, and with zero context weights the two
    # give identical densities and samples.
    plain = FlowEnsemble(2, 3, layers=2, hidden=8, blocks=1, bins=4, seed=11)
    cond = FlowEnsemble(2, 3, layers=2, hidden=8, blocks=1, bins=4, seed=11, n_context=2)
    plain_params = dict(plain.named_parameters())
    for name, p in cond.named_parameters():
        if "w_context" in name:
            continue
        assert torch.equal(p, plain_params[name]), name
    assert not any("w_context" in n for n in plain_params)
    assert "n_context" not in plain.config and plain.n_context == 0
    with torch.no_grad():
        for made in cond.mades:
            made.w_context.zero_()
    x = np.random.default_rng(0).normal(size=(40, 2))
    c = np.random.default_rng(1).normal(size=(40, 2))
    np.testing.assert_array_equal(cond.log_prob(x, context=c), plain.log_prob(x))
    np.testing.assert_array_equal(cond.sample(7, 1, 3, context=c[:7]), plain.sample(7, 1, 3))


def test_conditional_flow_inverse_logdet_and_autoregression():
    ens = perturbed_flow(n_context=2, n_features=3, scale=0.1)
    ens.context_loc, ens.context_scale = np.array([1.0, -1.0]), np.array([2.0, 0.5])
    gen = np.random.default_rng(3)
    x = torch.as_tensor(gen.normal(size=(2, 6, 3))).requires_grad_(True)
    c = torch.as_tensor(gen.normal(size=(6, 2)))
    z, logdet = ens(x, context=c)
    rows = [torch.autograd.grad(z[..., i].sum(), x, retain_graph=True)[0] for i in range(3)]
    jac = torch.stack(rows, dim=-2)
    expected = torch.linalg.slogdet(jac)[1]  # dz/dx: standardisation included
    torch.testing.assert_close(logdet.detach(), expected, rtol=0, atol=1e-9)
    with torch.no_grad():
        back = ens.inverse(z.detach(), context=c)
    assert (back - x.detach()).abs().max().item() < 1e-9
    # The context changes the density (it is used) ...
    xs = gen.normal(size=(5, 3))
    lp1 = ens.log_prob(xs, context=np.zeros((5, 2)))
    lp2 = ens.log_prob(xs, context=np.ones((5, 2)))
    assert np.abs(lp1 - lp2).max() > 1e-3


def test_conditional_flow_samples_x_given_c():
    ens = perturbed_flow(n_context=1, n_features=1, scale=0.1)  # smooth: the grid resolves it
    grid = np.linspace(-15, 15, 30001)[:, None]
    for c in (-1.0, 2.0):
        dens = np.exp(ens.log_prob(grid, context=np.full((len(grid), 1), c))[1])
        cdf = np.cumsum(dens) * (grid[1, 0] - grid[0, 0])
        draws = ens.sample(5000, 1, rng=4, context=np.array([c]))
        cdf_of = np.interp(np.sort(draws[:, 0]), grid[:, 0], cdf)
        assert stats.kstest(cdf_of, "uniform").pvalue > 1e-3


def test_conditional_sample_members_groups_contexts():
    ens = perturbed_flow(n_context=1, n_features=2)
    counts = np.array([3, 4])
    ctx = np.arange(7.0)[:, None]
    x = ens.sample_members(counts, rng=5, context=ctx)
    gen = np.random.default_rng(5)
    z0, z1 = gen.standard_normal((3, 2)), gen.standard_normal((4, 2))
    with torch.no_grad():
        ref0 = ens.inverse(torch.as_tensor(z0[None]), slice(0, 1),
                           torch.as_tensor(ctx[:3]))[0].numpy()
        ref1 = ens.inverse(torch.as_tensor(z1[None]), slice(1, 2),
                           torch.as_tensor(ctx[3:]))[0].numpy()
    np.testing.assert_allclose(x, np.vstack([ref0, ref1]), atol=1e-12)


def test_conditional_flow_save_load_and_subset(tmp_path):
    ens = perturbed_flow(n_context=2)
    ens.context_loc, ens.context_scale = np.array([0.5, 1.0]), np.array([2.0, 3.0])
    path = save(ens, tmp_path / "cond.safetensors")
    back = load(path).double()
    x, c = np.random.default_rng(0).normal(size=(10, 2)), np.random.default_rng(1).normal(
        size=(10, 2))
    np.testing.assert_allclose(back.log_prob(x, context=c), ens.log_prob(x, context=c),
                               rtol=1e-12)
    assert back.n_context == 2 and "n_context=2" in repr(back)
    sub = ens.subset([1])
    np.testing.assert_allclose(sub.log_prob(x, context=c)[0], ens.log_prob(x, context=c)[1],
                               rtol=1e-12)
    with pytest.raises(InputError, match="conditional"):
        ens.log_prob(x)
    with pytest.raises(InputError, match="n_context"):
        FlowEnsemble(2, 2, n_context=-1)


def test_training_with_context_learns_the_conditional():
    gen = np.random.default_rng(0)
    c = gen.uniform(-2, 2, size=(3000, 1))
    x = np.column_stack([c[:, 0] + 0.3 * gen.normal(size=3000), gen.normal(size=3000)])
    ens = FlowEnsemble(2, 2, layers=2, hidden=16, blocks=1, bins=6, seed=1, n_context=1)
    hist = train(ens, x, context=c, max_epochs=15, lr=5e-3, batch_size=256, progress=False)
    assert np.isfinite(hist.best_val_loss).all()
    assert ens.context_scale[0] == pytest.approx(c[hist.train_indices].std())
    xt = np.column_stack([np.zeros(2000), gen.normal(size=2000)])
    ct = gen.uniform(-2, 2, size=(2000, 1))
    xt[:, 0] = ct[:, 0] + 0.3 * gen.normal(size=2000)
    right = ens.log_prob(xt, context=ct).mean()
    shuffled = ens.log_prob(xt, context=gen.permutation(ct)).mean()
    # The conditional density uses c: a shuffled context is far worse (marginal sd of x_0
    # is 1.2 against 0.3, about 1.2 nats per event for the exact densities).
    assert right - shuffled > 0.5, (right, shuffled)


def test_training_context_errors():
    x = np.random.default_rng(0).normal(size=(100, 2))
    cond = FlowEnsemble(2, 2, n_context=1)
    with pytest.raises(InputError, match="conditional on 1"):
        train(cond, x, max_epochs=1, progress=False)
    with pytest.raises(InputError, match="context_val"):
        train(cond, x, context=x[:, :1], x_val=x[:10], max_epochs=1, progress=False)
    with pytest.raises(InputError, match="unconditional"):
        train(FlowEnsemble(2, 2), x, context=x[:, :1], max_epochs=1, progress=False)
    # Explicit validation events carry their own contexts.
    hist = train(cond, x[:80], context=x[:80, :1], x_val=x[80:], context_val=x[80:, :1],
                 max_epochs=1, progress=False, batch_size=32)
    assert hist.settings["n_val"] == 20 and np.isfinite(hist.val_loss).all()
