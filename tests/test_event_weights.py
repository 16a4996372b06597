"""Weighted events (Monte-Carlo weights, possibly negative) in the weight fit of Eqs. (1)-(2),
in the KDE members and in the GoF's refusal of weighted test events."""

import numpy as np
import pytest
from scipy.stats import norm

from genval.errors import FitError, InputError
from genval.gof import KernelBasis, goodness_of_fit, require_unweighted
from genval.io import FORMATS, read_events, write_events
from genval.linalg import sum_to_one_basis
from genval.members import GaussianMembers, KDEMembers, log_density_matrix
from genval.sampling import sample_mixture
from genval.wifi import fit_weights

MEMBERS_1D = GaussianMembers([[-1.0], [0.5], [1.5]], [[1.0], [0.64], [1.44]])
TRUTH_1D = np.array([0.3, 0.5, 0.2])


def random_instance(seed, m=5, n=3000):
    rng = np.random.default_rng(seed)
    members = GaussianMembers(rng.normal(0.0, 1.0, (m, 2)), rng.uniform(0.4, 1.5, (m, 2)))
    drawn = sample_mixture(members, rng.dirichlet(np.ones(m)), n, rng)
    return rng, drawn.log_f


def reference_weighted_sandwich(F, w, s):
    """Eq. (2) from first principles: per-event scores ``s_n ∇ℓ_n`` of ``−Σ s log f + Σs Σw``,
    their summed outer products (centred), and the Hessian, in the basis of ``Σw = 1``."""
    n, m = F.shape
    basis = sum_to_one_basis(m)
    a = F / (F @ w)[:, None]
    scores = (s[:, None] * (1.0 - a)) @ basis
    centred = scores - scores.mean(axis=0)
    u = centred.T @ centred
    v = basis.T @ ((s[:, None] * a).T @ a) @ basis
    v_inv = np.linalg.inv(v)
    return basis @ (v_inv @ u @ v_inv) @ basis.T


# --- exactness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,m", [(0, 3), (1, 5), (2, 8)])
def test_unit_and_constant_weights_give_the_unweighted_fit(seed, m):
    """All s_n = 1 (or any common value) is the unweighted fit: ŵ, Cov(ŵ), L and the
    diagnostics to 1e-12 (the unweighted path is the pre-weights code, unchanged)."""
    _, log_f = random_instance(seed, m)
    plain = fit_weights(log_f, log=True)
    for value in (1.0, 3.7, 1e-3):
        weighted = fit_weights(log_f, log=True, event_weights=np.full(len(log_f), value))
        np.testing.assert_allclose(weighted.weights, plain.weights, rtol=0, atol=1e-12)
        np.testing.assert_allclose(weighted.cov, plain.cov, rtol=0,
                                   atol=1e-12 * np.abs(plain.cov).max())
        np.testing.assert_allclose(weighted.cov_reduced, plain.cov_reduced, rtol=0,
                                   atol=1e-12 * np.abs(plain.cov_reduced).max())
        assert abs(weighted.nll - plain.nll) < 1e-12 * abs(plain.nll)
        assert weighted.n_iter == plain.n_iter and weighted.converged
        np.testing.assert_allclose(weighted.hessian_condition, plain.hessian_condition,
                                   rtol=1e-10)
        assert weighted.n_effective == pytest.approx(len(log_f), rel=1e-12)
    assert plain.n_effective is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_sandwich_matches_first_principles(seed):
    """Signed weights: ŵ is stationary for the weighted L (Σŵ = 1) and Cov(ŵ) is the general
    sandwich V⁻¹ U V⁻¹ with U the summed outer products of the weighted scores."""
    rng, log_f = random_instance(seed)
    n = len(log_f)
    s = rng.exponential(1.0, n) * np.where(rng.random(n) < 0.1, -1.0, 1.0)
    fit = fit_weights(log_f, log=True, event_weights=s)
    assert fit.converged
    F = np.exp(log_f)
    a = F / (F @ fit.weights)[:, None]
    np.testing.assert_allclose((s @ a) / s.sum(), 1.0, atol=1e-10)  # weighted stationarity
    assert abs(fit.weights.sum() - 1.0) < 1e-12
    expected = reference_weighted_sandwich(F, fit.weights, s)
    np.testing.assert_allclose(fit.cov, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    assert fit.n_effective == pytest.approx(s.sum() ** 2 / (s @ s))
    # The sandwich differs from the unweighted formula's V⁻¹/N once the weights vary.
    basis = sum_to_one_basis(F.shape[1])
    st = s * n / s.sum()
    naive = np.linalg.inv(basis.T @ ((st[:, None] * a).T @ a / n) @ basis) / n
    assert not np.allclose(fit.cov_reduced, naive, rtol=0.1)


def test_integer_weights_fit_like_repeated_events_but_count_their_variance():
    """Weight k gives the ŵ of the event repeated k times, but not its covariance: k copies
    of one event are one draw (score variance k²), not k independent ones."""
    rng, log_f = random_instance(4, m=4, n=1500)
    k = rng.integers(1, 4, len(log_f))
    weighted = fit_weights(log_f, log=True, event_weights=k)
    repeated = fit_weights(np.repeat(log_f, k, axis=0), log=True)
    np.testing.assert_allclose(weighted.weights, repeated.weights, rtol=0, atol=1e-11)
    np.testing.assert_allclose(weighted.nll, repeated.nll, rtol=1e-12)
    ratio = np.trace(weighted.cov) / np.trace(repeated.cov)
    expected = (k @ k) / k.sum()  # N_repeated / N_eff = Σk² / Σk (about 2.3 here)
    assert 0.85 * expected < ratio < 1.15 * expected and ratio > 1.5, (ratio, expected)


def test_zero_weights_drop_their_events():
    rng, log_f = random_instance(5, m=4, n=1500)
    s = rng.uniform(0.5, 2.0, len(log_f))
    s[::3] = 0.0
    kept = s != 0
    with_zeros = fit_weights(log_f, log=True, event_weights=s)
    subset = fit_weights(log_f[kept], log=True, event_weights=s[kept])
    np.testing.assert_array_equal(with_zeros.weights, subset.weights)
    np.testing.assert_array_equal(with_zeros.cov, subset.cov)
    assert with_zeros.n_events == int(kept.sum())


def test_bad_event_weights_are_refused():
    _, log_f = random_instance(6, m=3, n=200)
    n = len(log_f)
    with pytest.raises(InputError, match="NaN/inf"):
        fit_weights(log_f, log=True, event_weights=np.where(np.arange(n) == 7, np.nan, 1.0))
    with pytest.raises(InputError, match="one number per event"):
        fit_weights(log_f, log=True, event_weights=np.ones(n - 1))
    with pytest.raises(InputError, match="total weight must be positive"):
        fit_weights(log_f, log=True, event_weights=-np.ones(n))
    with pytest.raises(InputError, match="total weight must be positive"):
        fit_weights(log_f, log=True, event_weights=np.zeros(n))
    with pytest.raises(InputError, match="more events than members"):
        fit_weights(log_f, log=True, event_weights=np.r_[np.ones(3), np.zeros(n - 3)])


def test_a_dominating_negative_weight_is_a_fit_error_naming_the_event():
    rng = np.random.default_rng(3)
    drawn = sample_mixture(MEMBERS_1D, TRUTH_1D, 500, rng)
    x = np.vstack([drawn.x, [[3.5]]])
    s = np.ones(len(x))
    s[-1] = -10.0
    with pytest.raises(FitError, match=r"not convex.*event 500, weight"):
        fit_weights(log_density_matrix(MEMBERS_1D, x), log=True, event_weights=s)


# --- statistics --------------------------------------------------------------------------------

def _replica(kind, r, n=2000):
    """Events and weights of replica r whose weighted distribution is the mixture TRUTH_1D.

    ``importance``: events from a wide proposal q = N(0.3, 2), weights p/q times a
    Gamma(1/2, 2) factor of mean 1 (weight variance as in unweighted event generation with
    a noisy matrix element). ``signed``: events from p, weights ±1 with 20 % negative (an
    NLO-like sample).
    """
    rng = np.random.default_rng([2026, r, kind == "signed"])
    if kind == "importance":
        x = rng.normal(0.3, 2.0, (n, 1))
        log_f = log_density_matrix(MEMBERS_1D, x)
        s = (np.exp(log_f) @ TRUTH_1D) / norm.pdf(x[:, 0], 0.3, 2.0) * rng.gamma(0.5, 2.0, n)
        return log_f, s
    drawn = sample_mixture(MEMBERS_1D, TRUTH_1D, n, rng)
    return drawn.log_f, np.where(rng.random(n) < 0.2, -1.0, 1.0)


@pytest.mark.parametrize("kind", ["importance", "signed"])
def test_weighted_sandwich_matches_the_spread_and_the_naive_formula_does_not(kind):
    """Over 300 seeded replicas of weighted events: ŵ is unbiased (each weight within 4
    standard errors of the truth), the spread of ŵ in the coordinates of Σw = 1 matches the
    mean sandwich covariance (trace ratio within 15 %, each diagonal within 25 %), and the
    unweighted formula V⁻¹/N (weights taken as event counts) is too small by more than 1.8x.
    (Sampling error of a variance ratio from 300 replicas: about 8 %.)"""
    basis = sum_to_one_basis(3)
    weights, sandwich, naive = [], [], []
    for r in range(300):
        log_f, s = _replica(kind, r)
        fit = fit_weights(log_f, log=True, event_weights=s)
        assert fit.converged
        weights.append(fit.weights)
        sandwich.append(fit.cov_reduced)
        F = np.exp(log_f)
        a = F / (F @ fit.weights)[:, None]
        st = s * len(s) / s.sum()
        naive.append(np.linalg.inv(basis.T @ ((st[:, None] * a).T @ a / len(s)) @ basis)
                     / len(s))
    weights = np.array(weights)
    standard_error = weights.std(axis=0, ddof=1) / np.sqrt(len(weights))
    assert np.all(np.abs(weights.mean(axis=0) - TRUTH_1D) < 4 * standard_error)
    spread = np.cov(weights @ basis, rowvar=False)
    mean_sandwich = np.mean(sandwich, axis=0)
    ratio = np.trace(spread) / np.trace(mean_sandwich)
    assert 0.85 < ratio < 1.15, ratio
    diagonal = np.diag(spread) / np.diag(mean_sandwich)
    assert np.all((diagonal > 0.75) & (diagonal < 1.25)), diagonal
    naive_ratio = np.trace(spread) / np.trace(np.mean(naive, axis=0))
    assert naive_ratio > 1.8, naive_ratio


# --- KDE members -------------------------------------------------------------------------------

def test_kde_with_equal_weights_is_the_unweighted_kde(rng):
    x = rng.normal(0.0, 1.0, (400, 2))
    probe = rng.normal(0.0, 1.5, (50, 2))
    plain = KDEMembers(x, 3, seed=5)
    for value in (1.0, 0.25):
        weighted = KDEMembers(x, 3, seed=5, event_weights=np.full(len(x), value))
        np.testing.assert_allclose(weighted.log_prob(probe), plain.log_prob(probe), rtol=0,
                                   atol=1e-12)
        np.testing.assert_allclose(weighted.bandwidths, plain.bandwidths, rtol=1e-12)


def test_weighted_kde_follows_the_weighted_distribution():
    """Events from q = N(0, 1.5²) weighted by p/q with p = N(0.5, 1): every member's samples
    have mean 0.5 and standard deviation ~1 (unweighted they would be 0 and 1.5), and each
    member integrates to one."""
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.5, (20_000, 1))
    s = norm.pdf(x[:, 0], 0.5, 1.0) / norm.pdf(x[:, 0], 0.0, 1.5)
    kde = KDEMembers(x, 3, seed=2, event_weights=s)
    for m in range(3):
        draws = kde.sample(20_000, m, np.random.default_rng(m))
        assert abs(draws.mean() - 0.5) < 0.06, draws.mean()
        assert abs(draws.std() - 1.0) < 0.08, draws.std()
    grid = np.linspace(-8.0, 9.0, 4001)[:, None]
    integral = np.exp(kde.log_prob(grid)).sum(axis=1) * (grid[1, 0] - grid[0, 0])
    np.testing.assert_allclose(integral, 1.0, atol=1e-6)
    # Zero-weight events are no centres: nothing is drawn above 0 when they are all there.
    cut = KDEMembers(x, 2, seed=2, bandwidth=1e-3, event_weights=(x[:, 0] < 0).astype(float))
    assert cut.sample(5000, 1, np.random.default_rng(0)).max() < 0.01


def test_kde_refuses_negative_weights():
    x = np.random.default_rng(0).normal(size=(100, 2))
    s = np.ones(100)
    s[3] = -0.5
    with pytest.raises(InputError, match="non-negative event weights"):
        KDEMembers(x, 2, event_weights=s)
    with pytest.raises(InputError, match="one number per event"):
        KDEMembers(x, 2, event_weights=s[:-1])


# --- GoF needs unweighted test events -----------------------------------------------------------

def test_gof_refuses_weighted_test_events_and_accepts_equal_weights():
    rng = np.random.default_rng(9)
    x_test = sample_mixture(MEMBERS_1D, TRUTH_1D, 300, rng).x
    fit = fit_weights(sample_mixture(MEMBERS_1D, TRUTH_1D, 2000, rng).log_f, log=True)
    basis = KernelBasis.from_events(sample_mixture(MEMBERS_1D, TRUTH_1D, 100, rng).x, 6, 0.3,
                                    seed=1)
    weights = np.ones(len(x_test))
    weights[5] = 1.5
    with pytest.raises(InputError, match="needs unweighted events.*Poisson"):
        goodness_of_fit(MEMBERS_1D, fit, x_test, basis, n_toys=5, event_weights=weights)
    with pytest.raises(InputError, match="2 distinct weight values"):
        require_unweighted(weights, len(x_test))
    require_unweighted(None, len(x_test))
    require_unweighted(np.full(len(x_test), 2.5), len(x_test))
    kw = {"n_toys": 5, "seed": 3, "variant": "frozen", "pool_size": 2000}
    equal = goodness_of_fit(MEMBERS_1D, fit, x_test, basis, event_weights=np.full(300, 0.7),
                            **kw)
    plain = goodness_of_fit(MEMBERS_1D, fit, x_test, basis, **kw)
    assert equal.t_obs == plain.t_obs
    np.testing.assert_array_equal(equal.t_null, plain.t_null)


# --- reading a weight column --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != ".npy"])
def test_the_weight_column_is_read_with_the_features_and_is_never_one(tmp_path, rng, fmt):
    for library in {".parquet": ("pyarrow",), ".h5": ("h5py",),
                    ".root": ("uproot", "awkward")}.get(fmt, ()):
        pytest.importorskip(library)
    table = np.column_stack([rng.normal(size=(50, 2)), rng.normal(1.0, 2.0, 50)])
    spec = f"{tmp_path}/w{fmt}{':events' if fmt in ('.h5', '.root') else ''}"
    write_events(spec, table, ["pt", "eta", "mcw"])
    everything = read_events(spec, weight="mcw")  # features=None: every other column
    assert everything.names == ["pt", "eta"] and everything.weight_name == "mcw"
    np.testing.assert_array_equal(everything.x, table[:, :2])
    np.testing.assert_array_equal(everything.weights, table[:, 2])
    chosen = read_events(spec, ["eta"], weight="mcw")
    np.testing.assert_array_equal(chosen.x, table[:, 1:2])
    np.testing.assert_array_equal(chosen.weights, table[:, 2])
    assert read_events(spec).weights is None and read_events(spec).names == ["pt", "eta", "mcw"]
    with pytest.raises(InputError, match=r"weight column 'mcv' not found .*did you mean 'mcw'"):
        read_events(spec, weight="mcv")
    assert read_events(spec, weight="mcv", weight_required=False).weights is None
    with pytest.raises(InputError, match="'eta' is both a feature and the weight column"):
        read_events(spec, ["pt", "eta"], weight="eta")


def test_non_finite_weights_are_refused(tmp_path):
    table = np.ones((10, 3))
    table[4, 2] = np.nan
    write_events(tmp_path / "w.csv", np.nan_to_num(table, nan=0.0), ["a", "b", "w"])
    text = (tmp_path / "w.csv").read_text().splitlines()
    text[5] = "1,1,nan"
    (tmp_path / "w.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"weights 'w' in .*w\.csv contain 1 NaN/inf values "
                                         r"\(first at row 4\)"):
        read_events(tmp_path / "w.csv", weight="w")


# --- the solver with signed row weights ---------------------------------------------------------

def test_newton_with_signed_row_weights_converges_quadratically(rng):
    """Signed row weights: the Hessian is Aᵀ diag(ω/f²) A with the negative rows subtracted.
    With that exact Hessian plain Newton (a fresh Hessian every step) converges in a handful of
    steps to the stationary point of −Σ ω log(Aθ) + bᵀθ; a Hessian built from |ω| (or from
    the positive rows only) would not reach 1e-12 in as few."""
    from genval.newton import NewtonOptions, minimize_convex

    n, m = 3000, 4
    a = rng.random((n, m)) + 0.05
    omega = np.where(rng.random(n) < 0.2, -1.0, 1.0) * rng.uniform(0.5, 1.5, n)
    omega *= n / omega.sum()
    sol = minimize_convex(np.zeros(n), a, np.full(m, float(n)), np.zeros(m), np.full(m, 1 / m),
                          row_weights=omega,
                          options=NewtonOptions(tol=1e-14 * n, hessian_dtype=np.float64,
                                                refresh=0.0, rcond=1e-12, final_step=True))
    assert sol.converged and sol.n_iter <= 8, sol.n_iter
    gradient = -(omega / sol.density) @ a + n
    assert np.abs(gradient).max() < 1e-9 * n
    hessian = (a * (omega / sol.density**2)[:, None]).T @ a
    assert np.linalg.eigvalsh(hessian).min() > 0  # a minimum
