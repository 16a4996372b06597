"""genval.gof: kernel basis and the Eq. (5) statistic against independent solvers."""

from __future__ import annotations

import numpy as np
import pytest

from genval.errors import FitError, IllConditionedWarning, InputError
from genval.gof import KernelBasis, LRStatistic, test_statistic
from genval.linalg import sum_to_one_basis
from genval.members import log_density_matrix
from genval.sampling import sample_mixture
from gof_support import gaussian_ensemble, quick_fit, reference_t


def _instance(seed: int, m: int = 5, n: int = 1500, k: int = 12, sigma: float = 0.4,
              shift: float = 0.0):
    rng = np.random.default_rng(seed)
    members = gaussian_ensemble(m, rng)
    truth = np.full(m, 1.0 / m)
    fit = quick_fit(np.exp(log_density_matrix(members, sample_mixture(members, truth, 3000,
                                                                       rng).x)))
    test = sample_mixture(members, truth, n, rng)
    x = test.x + np.array([shift, 0.0])
    log_f = log_density_matrix(members, x)
    basis = KernelBasis.from_events(sample_mixture(members, truth, 400, rng).x, k, sigma,
                                    seed=rng)
    return members, fit, x, log_f, basis.log_pdf(x), rng


@pytest.mark.parametrize("variant", ["ensemble", "frozen"])
@pytest.mark.parametrize("seed,shift", [(1, 0.0), (2, 0.15), (3, 0.0)])
def test_matches_scipy_trust_exact(variant, seed, shift):
    _, fit, _, log_f, log_g, rng = _instance(seed, shift=shift)
    F, G = np.exp(log_f), np.exp(log_g)
    z0 = None
    if variant == "ensemble" and seed == 3:  # a displaced constraint centre
        B = sum_to_one_basis(F.shape[1])
        z0 = rng.multivariate_normal(np.zeros(F.shape[1] - 1), B.T @ fit.cov @ B)
    t = test_statistic(F, G, fit, variant=variant, z0=z0)
    t_ref, nll0, nll1 = reference_t(F, G, fit, variant,
                                     np.zeros(F.shape[1] - 1) if z0 is None else z0)
    assert t.converged
    assert float(t) == pytest.approx(t_ref, rel=1e-6, abs=1e-8)
    assert t.nll0 == pytest.approx(nll0, rel=1e-10)
    assert t.nll1 == pytest.approx(nll1, rel=1e-10)
    assert t >= 0


def test_check_points_match_reference_and_keep_alternative_a_density():
    members, fit, x, log_f, log_g, rng = _instance(12, n=800, k=6)
    # one kernel far from every test event: Eq. (5) verbatim drives its amplitude to about
    # -1/(2 λ_net), i.e. large negative mass where no event lies
    centers = np.vstack([rng.normal(size=(5, 2)) * 0.3, [[4.0, 4.0]]])
    basis = KernelBasis(centers, 0.3)
    F, G = np.exp(log_f), basis.pdf(x)
    F_ref, G_ref = np.exp(log_density_matrix(members, centers)), basis.pdf(centers)
    verbatim = test_statistic(F, G, fit)
    kept = test_statistic(F, G, fit, F_ref=F_ref, G_ref=G_ref)
    assert verbatim > 1e3 and verbatim.a.min() < -1e2
    assert kept < 100 and kept.converged
    alt_at_centres = F_ref @ kept.phi1 + G_ref @ kept.a
    assert np.all(alt_at_centres > 0)
    t_ref, nll0, nll1 = reference_t(F, G, fit, "ensemble", np.zeros(F.shape[1] - 1),
                                     F_ref=F_ref, G_ref=G_ref)
    assert float(kept) == pytest.approx(t_ref, rel=1e-6)
    assert kept.nll1 == pytest.approx(nll1, rel=1e-10)
    with pytest.raises(InputError, match="both F_ref and G_ref"):
        test_statistic(F, G, fit, F_ref=F_ref)


def test_single_member_matches_reference():
    _, fit, _, log_f, log_g, _ = _instance(4)
    F, G = np.exp(log_f), np.exp(log_g)
    t = test_statistic(F[:, 2], G, variant="single")
    t_col = test_statistic(F, G, variant="single", member=2)
    one = type(fit)(np.ones(1), np.zeros((1, 1)))
    t_ref, _, _ = reference_t(F[:, 2:3], G, one, "single", np.zeros(0))
    assert float(t) == pytest.approx(t_ref, rel=1e-6)
    assert float(t_col) == pytest.approx(float(t), rel=1e-12)


def test_log_input_scaling_and_precision_invariance():
    _, fit, _, log_f, log_g, _ = _instance(5, shift=0.1)
    t_lin = test_statistic(np.exp(log_f), np.exp(log_g), fit)
    t_log = test_statistic(log_f, log_g, fit, log=True)
    t_64 = test_statistic(log_f, log_g, fit, log=True, hessian_dtype=np.float64)
    # a constant per-event offset (row scaling) cancels in t but not in the NLLs
    t_off = test_statistic(log_f + 300.0, log_g + 300.0, fit, log=True)
    assert float(t_log) == pytest.approx(float(t_lin), rel=1e-9)
    assert float(t_64) == pytest.approx(float(t_log), rel=1e-9)
    assert float(t_off) == pytest.approx(float(t_log), rel=1e-9)
    assert t_off.nll0 == pytest.approx(t_log.nll0 - 300.0 * log_f.shape[0], rel=1e-12)


def test_not_worse_than_long_adam():
    torch = pytest.importorskip("torch")
    _, fit, _, log_f, log_g, _ = _instance(6, m=4, n=400, k=8, shift=0.2)
    F, G = np.exp(log_f), np.exp(log_g)
    t = test_statistic(F, G, fit)
    n, m = F.shape
    B = sum_to_one_basis(m)
    cinv = torch.tensor(np.linalg.inv(B.T @ fit.cov @ B))
    Ft, Gt, Bt = torch.tensor(F), torch.tensor(G), torch.tensor(B)
    w = torch.tensor(fit.weights)

    def nll(z, a):
        f = Ft @ (w + Bt @ z)
        pen = 0.5 * z @ cinv @ z
        if a is not None:
            f = f + Gt @ a
            pen = pen + n * a.sum() + 1e-6 * n * (a * a).sum()
        return -torch.log(f).sum() + pen

    results = []
    for with_a in (False, True):
        z = torch.zeros(m - 1, dtype=torch.float64, requires_grad=True)
        params = [z]
        a = None
        if with_a:
            a = torch.zeros(G.shape[1], dtype=torch.float64, requires_grad=True)
            params.append(a)
        opt = torch.optim.Adam(params, lr=1e-3)
        best = np.inf
        for _ in range(4000):  # full-batch Adam, the paper code's optimiser
            opt.zero_grad()
            loss = nll(z, a)
            loss.backward()
            opt.step()
            if torch.isfinite(loss):
                best = min(best, float(loss.detach()))
        results.append(best)
    assert t.nll0 <= results[0] + 1e-9
    assert t.nll1 <= results[1] + 1e-9


def test_repr_and_float_behaviour():
    _, fit, _, log_f, log_g, _ = _instance(7, n=500)
    t = test_statistic(log_f, log_g, fit, log=True)
    assert isinstance(t, LRStatistic) and isinstance(t, float)
    text = repr(t)
    assert text.startswith("LRStatistic(t=") and "ensemble" in text and "converged" in text
    assert t.phi0.sum() == pytest.approx(fit.weights.sum(), abs=1e-12)  # stays on Σφ = Σŵ
    assert t.a.shape == (log_g.shape[1],)
    assert t.t == float(t)


def test_bad_input_non_finite():
    _, fit, _, log_f, log_g, _ = _instance(8, n=300)
    F = np.exp(log_f)
    F[17, 1] = np.nan
    with pytest.raises(InputError, match="NaN/inf on 1 events.*row 17"):
        test_statistic(F, np.exp(log_g), fit)


def test_bad_input_negative_mixture_density():
    from genval.errors import NegativeDensityWarning

    _, fit, _, log_f, log_g, _ = _instance(9, n=300)
    F, G = np.exp(log_f), np.exp(log_g)
    # signed weights with a wide covariance (room to move back to a positive density)
    signed = type(fit)(np.array([3.0, -2.5, 0.2, 0.2, 0.1]), fit.cov * 1e4)
    n_bad = int((F @ signed.weights <= 0).sum())
    assert n_bad > 0
    # frozen weights: nothing can make the null positive there -> a clear error
    with pytest.raises(FitError, match=rf"<= 0 on {n_bad} of 300 test events \(rows \["):
        test_statistic(F, G, signed, variant="frozen")
    # with uncertainty: other weights on Σφ = 1 can -> profiled from a feasible point, warned
    with pytest.warns(NegativeDensityWarning, match=rf"<= 0 on {n_bad} of 300 test events"):
        t = test_statistic(F, G, signed)
    assert t.converged and np.isfinite(float(t)) and t >= 0
    assert np.all(F @ t.phi0 > 0)
    # ... unless the covariance leaves no room: a clear error
    tight = type(fit)(signed.weights, fit.cov)
    with pytest.warns(NegativeDensityWarning), pytest.raises(FitError, match="no ensemble "
                                                                           "weights within"):
        test_statistic(F, G, tight)


def test_singular_and_invalid_covariance():
    _, fit, _, log_f, log_g, _ = _instance(10, n=300)
    m = log_f.shape[1]
    B = sum_to_one_basis(m)
    vals, vecs = np.linalg.eigh(B.T @ fit.cov @ B)
    vals[:2] = 0.0  # two directions without variance
    singular = type(fit)(fit.weights, B @ (vecs * vals) @ vecs.T @ B.T)
    with pytest.warns(IllConditionedWarning, match="2 of 4 directions"):
        t = test_statistic(log_f, log_g, singular, log=True)
    assert t.converged
    bad = type(fit)(fit.weights, -fit.cov)
    with pytest.raises(InputError, match="not positive semi-definite"):
        test_statistic(log_f, log_g, bad, log=True)
    with pytest.warns(IllConditionedWarning, match="reduces to frozen"):
        t0 = test_statistic(log_f, log_g, type(fit)(fit.weights, np.zeros((m, m))), log=True)
    t_frozen = test_statistic(log_f, log_g, fit, log=True, variant="frozen")
    assert float(t0) == pytest.approx(float(t_frozen), rel=1e-9)


def test_bad_arguments():
    _, fit, _, log_f, log_g, _ = _instance(11, n=200)
    with pytest.raises(InputError, match="variant"):
        test_statistic(log_f, log_g, fit, log=True, variant="nope")
    with pytest.raises(InputError, match="member"):
        test_statistic(log_f, log_g, fit, log=True, variant="single")
    with pytest.raises(InputError, match="same N"):
        test_statistic(log_f[:10], log_g, fit, log=True)
    with pytest.raises(InputError, match=".weights"):
        test_statistic(log_f, log_g, None, log=True)
    with pytest.raises(InputError, match="z0"):
        test_statistic(log_f, log_g, fit, log=True, z0=np.zeros(2))


def test_kernel_basis_normalised_and_shapes(rng):
    x_held = rng.normal(size=(500, 2)) * np.array([0.25, 0.4])
    for standardize in (False, True):
        basis = KernelBasis.from_events(x_held, n_kernels=7, sigma=0.05,
                                        standardize=standardize, seed=3)
        assert basis.n_kernels == 7 and basis.n_features == 2
        # each kernel integrates to one (Riemann sum on a fine grid around its centre)
        c = basis.centers[0]
        h = basis.sigma * basis.scale
        g1 = np.linspace(-8, 8, 401)
        xx, yy = np.meshgrid(c[0] + g1 * h[0], c[1] + g1 * h[1], indexing="ij")
        dens = basis.pdf(np.column_stack([xx.ravel(), yy.ravel()]))[:, 0]
        cell = (g1[1] - g1[0]) ** 2 * h[0] * h[1]
        assert dens.sum() * cell == pytest.approx(1.0, rel=1e-6)
        assert np.all(np.isin(basis.centers, x_held).all(axis=1))
    assert "standardised" in repr(basis)
    with pytest.raises(InputError, match="sigma"):
        KernelBasis(x_held[:3], sigma=0.0)
    with pytest.raises(InputError, match="n_kernels"):
        KernelBasis.from_events(x_held[:5], n_kernels=10)
    far = KernelBasis(np.zeros((1, 2)), 0.05).log_pdf(np.array([[100.0, 0.0]]))
    assert np.isfinite(far).all()  # no underflow to -inf in log space


def test_iteration_cap_warns():
    from genval.errors import ConvergenceWarning

    _, fit, _, log_f, log_g, _ = _instance(13, n=300, shift=0.3)
    with pytest.warns(ConvergenceWarning, match="NOT CONVERGED"):
        t = test_statistic(log_f, log_g, fit, log=True, max_iter=1)
    assert not t.converged
