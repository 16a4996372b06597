"""Numerics of the vectorised flow ensemble: every variant through the same checks, float64.

Freshly initialised flows are close to the identity (the residual blocks start near zero), which
would let a broken spline pass; the parameters are therefore perturbed so that every spline is
far from the identity and the autoregressive conditioning matters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genval.errors import InputError
from genval.flows import FlowEnsemble, rational_quadratic_spline, train
from genval.members import Members, log_density_matrix
from genval.sampling import sample_mixture

VARIANTS = {
    "d1": dict(n_features=1, layers=2, hidden=8, blocks=1, bins=5),
    "d2-reverse": dict(n_features=2, layers=3, hidden=12, blocks=2, bins=6),
    "d3-random": dict(n_features=3, layers=2, hidden=10, blocks=1, bins=4, permutation="random"),
    "d4-noblock": dict(n_features=4, layers=2, hidden=9, blocks=0, bins=7, tail_bound=3.0),
}


def perturbed(n_members: int = 3, scale: float = 0.4, seed: int = 0, dtype=torch.float64,
              **kwargs) -> FlowEnsemble:
    ens = FlowEnsemble(n_members=n_members, seed=seed, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return ens


def events(n: int, d: int, seed: int = 0, spread: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * spread


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> dict:
    return VARIANTS[request.param]


def test_shapes_and_protocol(variant: dict) -> None:
    ens = perturbed(**variant)
    d = variant["n_features"]
    assert isinstance(ens, Members)
    x = events(17, d)
    lp = ens.log_prob(x)
    assert lp.shape == (3, 17) and lp.dtype == np.float64 and np.isfinite(lp).all()
    assert log_density_matrix(ens, x).shape == (17, 3)
    z, ld = ens(torch.as_tensor(x))
    assert z.shape == (3, 17, d) and ld.shape == (3, 17)
    assert ens.sample(5, 2, rng=0).shape == (5, d)
    assert ens.sample_members(np.array([2, 0, 3]), rng=0).shape == (5, d)


def test_inverse_of_forward_float64(variant: dict) -> None:
    # Moderate perturbation: a random spline stack can contract by e^-20, and no inverse can
    # then recover x to 1e-10 from a rounded z; 0.1 keeps the maps far from the identity.
    ens = perturbed(scale=0.1, **variant)
    d = variant["n_features"]
    ens.loc, ens.scale = np.full(d, 0.3), np.full(d, 1.7)
    x = torch.as_tensor(events(200, d, spread=1.5))
    with torch.no_grad():
        z, _ = ens(x)
        back = ens.inverse(z)
    y = (x - 0.3) / 1.7
    assert (z - y).abs().max() > 1.0  # the flow is not close to the identity
    err = (back - x.expand_as(back)).abs().max().item()
    assert err < 1e-10, err


@pytest.fixture(scope="module")
def trained() -> FlowEnsemble:
    """A tiny float32 ensemble briefly trained on the paper's 2D Gaussian."""
    x = np.random.default_rng(0).normal([-0.5, 0.6], [0.25, 0.4], size=(2000, 2))
    ens = FlowEnsemble(2, 2, layers=3, hidden=16, blocks=1, bins=6, seed=1)
    train(ens, x, max_epochs=5, lr=3e-3, batch_size=256, progress=False, seed=3)
    return ens


def test_inverse_of_forward_float32(trained: FlowEnsemble) -> None:
    assert trained.dtype == torch.float32
    x = torch.as_tensor(np.random.default_rng(1).normal([-0.5, 0.6], [0.25, 0.4], (2000, 2)),
                        dtype=torch.float32)
    with torch.no_grad():
        z, _ = trained(x)
        back = trained.inverse(z)
    err = (back - x.expand_as(back)).abs().max().item()
    assert err < 1e-5, err


def test_logdet_matches_autograd_jacobian(variant: dict) -> None:
    ens = perturbed(scale=0.2, **variant)
    d = variant["n_features"]
    ens.loc, ens.scale = np.linspace(-1, 1, d), np.linspace(0.5, 2.0, d)
    # One event set per member, (M, N, D): events are independent, so the gradient of the sum
    # of output i gives row i of every event's Jacobian.
    x = torch.as_tensor(events(3 * 8, d, seed=3).reshape(3, 8, d)).requires_grad_(True)
    z, logdet = ens(x)
    rows = [torch.autograd.grad(z[..., i].sum(), x, retain_graph=True)[0] for i in range(d)]
    jac = torch.stack(rows, dim=-2)  # (M, N, D_out, D_in)
    expected = torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(logdet.detach(), expected, rtol=0, atol=1e-9)


def test_far_out_inputs_are_finite(variant: dict) -> None:
    ens = perturbed(**variant)
    d = variant["n_features"]
    ens.loc, ens.scale = np.zeros(d), np.full(d, 2.0)
    far = np.array([[1e3 * 2.0] * d, [-1e3 * 2.0] * d, [1e3 * 2.0 * (-1) ** i for i in range(d)]])
    mixed = np.vstack([far, np.zeros((1, d))])
    for dtype in (torch.float64, torch.float32):
        e = ens.to(dtype)
        lp = e.log_prob(mixed)
        assert np.isfinite(lp).all()
        x = torch.as_tensor(mixed, dtype=dtype).requires_grad_(True)
        out = e.log_prob_tensor(x).sum()
        out.backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in e.parameters() if p.grad is not None)
        e.zero_grad()
    ens.double()
    # Far out the flow is the identity (linear tails): the density is the base density there.
    lp_far = ens.log_prob(far[:1])
    z = far[0] / 2.0
    assert np.allclose(lp_far, -0.5 * (z @ z) - 0.5 * d * np.log(2 * np.pi) - d * np.log(2.0),
                       rtol=1e-9)


def test_member_equals_one_member_ensemble(variant: dict) -> None:
    ens = perturbed(n_members=4, **variant)
    ens.loc = np.full(variant["n_features"], 0.2)
    x = events(50, variant["n_features"], seed=5)
    full = ens.log_prob(x)
    for m in range(4):
        single = ens.subset([m])
        assert single.n_members == 1
        # Equal up to rounding: BLAS may block a batch of one member differently.
        np.testing.assert_allclose(single.log_prob(x)[0], full[m], rtol=1e-13, atol=0)
        with torch.no_grad():
            sliced = ens.log_prob_tensor(torch.as_tensor(x), members=slice(m, m + 1))
        np.testing.assert_allclose(sliced.numpy()[0], full[m], rtol=0, atol=1e-12)
        assert np.allclose(single.sample(7, 0, rng=9), ens.sample(7, m, rng=9), atol=1e-12)
    # Member m starts from its own seed only: a one-member ensemble with that seed is identical.
    fresh = FlowEnsemble(n_members=3, seed=11, **variant)
    alone = FlowEnsemble(n_members=1, member_seeds=[fresh.member_seeds[2]], seed=11, **variant)
    for p_all, p_one in zip(fresh.parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p_all[2:3], p_one, rtol=0, atol=0)


def test_members_integrate_to_one_on_2d_grid() -> None:
    # Perturbed and peaked (density up to ~130): the trapezoid rule's error is 4e-3 on a
    # 401 x 401 grid, 2e-4 on 801 x 801, 7e-6 on 1601 x 1601 (it converges to 1).
    ens = perturbed(n_members=2, scale=0.1, **VARIANTS["d2-reverse"])
    ens.loc, ens.scale = np.array([-0.5, 0.6]), np.array([0.25, 0.4])
    # Trapezoid rule on a box of +-10 standardised units: the mass outside is < 1e-6 because
    # the flow is the identity beyond the tail bound (Gaussian tails).
    g0 = np.linspace(-0.5 - 2.5, -0.5 + 2.5, 1001)
    g1 = np.linspace(0.6 - 4.0, 0.6 + 4.0, 1001)
    xx, yy = np.meshgrid(g0, g1, indexing="ij")
    # Large chunks: few kernel calls, robust to a busy machine (~50 MB per tensor).
    dens = np.exp(ens.log_prob(np.column_stack([xx.ravel(), yy.ravel()]), chunk_size=250_000))
    for m in range(2):
        mass = np.trapezoid(np.trapezoid(dens[m].reshape(xx.shape), g1, axis=1), g0)
        assert abs(mass - 1) < 1e-3, (m, mass)


def test_sampling_matches_density() -> None:
    ens = perturbed(n_members=2, scale=0.1, **VARIANTS["d2-reverse"])
    g = np.linspace(-10, 10, 401)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    dens = np.exp(ens.log_prob(grid, chunk_size=len(grid)))
    cell = (g[1] - g[0]) ** 2
    for m in range(2):
        mean = (dens[m][:, None] * grid).sum(0) * cell
        draws = ens.sample(20000, m, rng=m)
        se = draws.std(0) / np.sqrt(len(draws))
        assert np.all(np.abs(draws.mean(0) - mean) < 5 * se), (draws.mean(0), mean)


def test_sample_members_batches_and_grouping() -> None:
    ens = perturbed(n_members=4, **VARIANTS["d3-random"])
    counts = np.array([0, 5, 0, 3])
    x = ens.sample_members(counts, rng=4)
    assert x.shape == (8, 3)
    # Member order and per-member base draws: equal to sampling member by member.
    gen = np.random.default_rng(4)
    z1 = gen.standard_normal((5, 3))
    z3 = gen.standard_normal((3, 3))
    with torch.no_grad():
        ref1 = ens.inverse(torch.as_tensor(z1[None]), members=slice(1, 2))[0].numpy()
        ref3 = ens.inverse(torch.as_tensor(z3[None]), members=slice(3, 4))[0].numpy()
    np.testing.assert_allclose(x, np.vstack([ref1, ref3]), atol=1e-12)
    assert ens.sample_members(np.zeros(4, dtype=int), rng=0).shape == (0, 3)
    with pytest.raises(InputError):
        ens.sample_members(np.array([1, -1, 0, 0]))
    with pytest.raises(InputError):
        ens.sample(3, 4)


class _OneByOne:
    """The same members without ``sample_members``: sample_mixture then samples member by
    member through :meth:`FlowEnsemble.sample`, an independent code path."""

    def __init__(self, ens: FlowEnsemble) -> None:
        self._ens = ens

    @property
    def n_members(self) -> int:
        return self._ens.n_members

    @property
    def n_features(self) -> int:
        return self._ens.n_features

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return self._ens.log_prob(x)

    def sample(self, n: int, member: int, rng=None) -> np.ndarray:
        return self._ens.sample(n, member, rng)


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_sample_mixture_uses_batched_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow ensemble is sampled in one batched pass per proposal batch, and that pass gives
    the events member-by-member sampling gives from the same base draws (same rng stream)."""
    ens = perturbed(n_members=3, scale=0.2, **VARIANTS["d2-reverse"])
    reference = copy.deepcopy(ens)
    weights = np.array([0.5, 0.7, -0.2])
    batched_counts: list[np.ndarray] = []
    batched = ens.sample_members

    def spy(counts, rng=None) -> np.ndarray:
        batched_counts.append(np.asarray(counts).copy())
        return batched(counts, rng)

    def per_member(*args, **kwargs) -> np.ndarray:
        raise AssertionError("sample_mixture sampled a flow ensemble member by member")

    monkeypatch.setattr(ens, "sample_members", spy)
    monkeypatch.setattr(ens, "sample", per_member)
    res = sample_mixture(ens, weights, 300, rng=1)
    ref = sample_mixture(_OneByOne(reference), weights, 300, rng=1)
    # Every proposal batch went through one sample_members call covering all its members.
    assert batched_counts and sum(int(c.sum()) for c in batched_counts) == res.n_proposed
    assert all(c.shape == (3,) and np.all(c > 0) for c in batched_counts)
    assert (res.n_proposed, res.n_accepted) == (ref.n_proposed, ref.n_accepted)
    assert res.x.shape == (300, 2) and res.log_f.shape == (300, 3)
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.log_f, ref.log_f, rtol=0, atol=1e-12)
    # log F is the members' log-density at the returned events, not a stale proposal value.
    np.testing.assert_allclose(res.log_f, reference.log_prob(res.x).T, rtol=0, atol=1e-12)


def test_spline_reference_values_and_tails() -> None:
    gen = torch.Generator().manual_seed(0)
    k = 6
    shape = (500,)
    uw, uh = (torch.randn(shape + (k,), generator=gen, dtype=torch.float64) * 2 for _ in "ab")
    ud = torch.randn(shape + (k - 1,), generator=gen, dtype=torch.float64) * 2
    x = torch.linspace(-4, 4, 500, dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, uw, uh, ud, tail_bound=3.0)
    outside = x.abs() > 3
    assert torch.equal(y[outside], x[outside]) and torch.all(ld[outside] == 0)
    back, ld_inv = rational_quadratic_spline(y, uw, uh, ud, tail_bound=3.0, inverse=True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-10)
    # Monotone map of [-B, B] onto itself, derivative from autograd equals exp(logabsdet).
    xs = torch.linspace(-3, 3, 2001, dtype=torch.float64)
    one = tuple(t[:1].expand((2001,) + t.shape[1:]) for t in (uw, uh, ud))
    ys, _ = rational_quadratic_spline(xs, *one, tail_bound=3.0)
    assert torch.all(ys[1:] > ys[:-1]) and abs(ys[0] + 3) < 1e-12 and abs(ys[-1] - 3) < 1e-12
    xg = x[~outside][:50].clone().requires_grad_(True)
    params = tuple(t[~outside][:50] for t in (uw, uh, ud))
    yg, ldg = rational_quadratic_spline(xg, *params, tail_bound=3.0)
    (grad,) = torch.autograd.grad(yg.sum(), xg)
    torch.testing.assert_close(torch.log(grad), ldg.detach(), rtol=0, atol=1e-10)


def test_spline_extreme_parameters_stay_finite() -> None:
    k = 8
    x = torch.tensor([-5.0, -4.999999, -1e-7, 0.0, 3.3, 4.9999999, 5.0, 7.0, 1e30, -1e30])
    for big in (30.0, 80.0):
        uw = torch.linspace(-big, big, k).expand(len(x), k)
        uh = torch.linspace(big, -big, k).expand(len(x), k)
        ud = torch.full((len(x), k - 1), big)
        for inverse in (False, True):
            y, ld = rational_quadratic_spline(x, uw, uh, ud, inverse=inverse, tail_bound=5.0)
            assert torch.isfinite(y).all() and torch.isfinite(ld).all()


def test_constructor_and_standardisation_errors() -> None:
    with pytest.raises(InputError):
        FlowEnsemble(0, 2)
    with pytest.raises(InputError):
        FlowEnsemble(2, 2, permutation="shuffle")
    with pytest.raises(InputError):
        FlowEnsemble(2, 2, bins=2000)
    ens = FlowEnsemble(2, 2)
    with pytest.raises(InputError):
        ens.set_standardisation(np.column_stack([np.arange(5.0), np.ones(5)]))
    with pytest.raises(InputError):
        ens.log_prob(np.zeros((3, 3)))
    assert "n_members=2" in repr(ens)
    paper = FlowEnsemble.paper(2, n_members=1)
    assert paper.config["blocks"] == 16 and paper.config["hidden"] == 128


def _made_reference(made, x: torch.Tensor) -> torch.Tensor:
    """The MADE as nflows writes it (ReLU on the float32 residual stream, then the product),
    with the input and output layers outside autocast."""
    with torch.autocast("cpu", enabled=False):
        h = torch.baddbmm(made.b_in, x, (made.w_in * made.mask_in).transpose(1, 2))
    for j in range(made.blocks):
        w0, w1 = made.w_blocks[2 * j], made.w_blocks[2 * j + 1]
        if not made._hidden_dense:
            w0, w1 = w0 * made.mask_hidden, w1 * made.mask_hidden
        t = torch.baddbmm(made.b_blocks[2 * j], torch.relu(h), w0.transpose(1, 2))
        h = h + torch.baddbmm(made.b_blocks[2 * j + 1], torch.relu(t), w1.transpose(1, 2))
    with torch.autocast("cpu", enabled=False):
        return torch.baddbmm(made.b_out, h, (made.w_out * made.mask_out).transpose(1, 2))


@pytest.mark.parametrize("name", ["d2-reverse", "d3-random"])
def test_bfloat16_autocast_made_is_exact_and_close_to_float32(name: str) -> None:
    """Under bf16 autocast the MADE runs its residual blocks as one fused node.

    Its output equals, bit for bit, nflows' arithmetic under autocast with a float32 residual
    stream and float32 input/output layers; its gradient is at least as close to float64 (bias
    gradients are float32 sums). Measured against float32 on a freshly initialised ensemble:
    6e-6 of the output's scale and 9e-4 of the gradient norm. With the input layer and the
    stream in bf16 as well (the data themselves rounded to 3 digits) it was 5e-3 and 4e-3, and
    these bounds fail.
    """
    ens = perturbed(n_members=3, scale=0.0, dtype=torch.float32, **VARIANTS[name])
    made = ens.mades[0]
    x = torch.as_tensor(events(256, ens.n_features, seed=3, spread=1.0),
                        dtype=torch.float32).expand(3, -1, -1)

    def out_and_grads(fn, autocast: bool, module=made, xx=x
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(module, xx)
        out.double().square().sum().backward()
        return out.detach().double(), [p.grad.double() for p in module.parameters()]

    def distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(torch.sqrt(sum((u - v).square().sum() for u, v in zip(a, b, strict=True))))

    new, g_new = out_and_grads(type(made).forward, True)
    ref, g_ref = out_and_grads(_made_reference, True)
    assert torch.equal(new, ref)
    exact, g_exact = out_and_grads(type(made).forward, False, copy.deepcopy(made).double(),
                                   x.double())
    norm = distance(g_exact, [torch.zeros_like(g) for g in g_exact])
    assert distance(g_new, g_exact) <= 1.05 * distance(g_ref, g_exact)
    assert (new - exact).abs().max() < 5e-4 * exact.abs().max()
    assert distance(g_new, g_exact) / norm < 2e-3, distance(g_new, g_exact) / norm
