"""The w_i f_i weight fit (paper Eqs. 1-3): exactness, statistics and bad input."""

import warnings

import numpy as np
import pytest

from genval.errors import ConvergenceWarning, FitError, IllConditionedWarning, InputError
from genval.identification import PRIOR_STD
from genval.linalg import sum_to_one_basis
from genval.members import GaussianMembers, log_density_matrix
from genval.sampling import sample_mixture
from genval.wifi import fit_weights
from gof_support import trust_exact_weights


def gaussian_members(rng, m=5, d=2):
    means = rng.normal(0.0, 1.0, (m, d))
    variances = rng.uniform(0.4, 1.5, (m, d))
    return GaussianMembers(means, variances)


def instance(rng, m=5, n=4000, weights=None):
    members = gaussian_members(rng, m)
    w = rng.dirichlet(np.ones(m)) if weights is None else np.asarray(weights)
    drawn = sample_mixture(members, w, n, rng)
    return members, w, drawn.log_f


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_scipy_trust_exact(seed):
    rng = np.random.default_rng(seed)
    _, _, log_f = instance(rng)
    F = np.exp(log_f)
    fit = fit_weights(F)
    ref = trust_exact_weights(F)
    assert fit.converged
    np.testing.assert_allclose(fit.weights, ref.x, atol=1e-8, rtol=0)
    assert fit.nll <= ref.fun + 1e-12
    assert abs(fit.weights.sum() - 1.0) < 1e-12  # λ = 1 makes Σw = 1 at the optimum
    assert fit.grad_norm < 1e-10


def test_log_input_equals_linear_input_and_survives_far_tails(rng):
    _, _, log_f = instance(rng)
    linear = fit_weights(np.exp(log_f))
    logged = fit_weights(log_f, log=True)
    np.testing.assert_allclose(logged.weights, linear.weights, atol=1e-12)
    np.testing.assert_allclose(logged.nll, linear.nll, rtol=1e-12)
    np.testing.assert_allclose(logged.cov, linear.cov, rtol=1e-8, atol=1e-16)
    # Shifting a row of log F by -2000 underflows exp() but changes neither ŵ nor Cov.
    shifted = log_f.copy()
    shifted[:10] -= 2000.0
    tail = fit_weights(shifted, log=True)
    np.testing.assert_allclose(tail.weights, linear.weights, atol=1e-12)


def test_sandwich_matches_explicit_per_event_construction(rng):
    _, _, log_f = instance(rng, m=4, n=3000)
    F = np.exp(log_f)
    fit = fit_weights(F)
    n, m = F.shape
    basis = sum_to_one_basis(m)
    a = F / (F @ fit.weights)[:, None]
    scores = (1.0 - a) @ basis  # per-event gradients in the reduced coordinates
    u = np.cov(scores, rowvar=False, ddof=0)
    v = basis.T @ (a.T @ a / n) @ basis
    v_inv = np.linalg.inv(v)
    expected = basis @ (v_inv @ u @ v_inv / n) @ basis.T
    np.testing.assert_allclose(fit.cov, expected, rtol=1e-9, atol=1e-15)
    ones = np.ones(m)
    assert abs(ones @ fit.cov @ ones) < 1e-14 * np.trace(fit.cov)
    assert np.linalg.eigvalsh(fit.cov_reduced).min() > 0


def test_density_and_band_match_direct_formula(rng):
    _, _, log_f = instance(rng)
    F = np.exp(log_f)
    fit = fit_weights(F)
    probe = F[:50]
    np.testing.assert_allclose(fit.density(probe), probe @ fit.weights, rtol=1e-13)
    direct = np.sqrt(np.einsum("ni,ij,nj->n", probe, fit.cov, probe))
    np.testing.assert_allclose(fit.density_std(probe), direct, rtol=1e-8)
    with pytest.raises(InputError, match="shape"):
        fit.density(np.ones((3, 2)))


def test_negative_weights_are_fitted(rng):
    members = GaussianMembers([[0.0], [0.0], [2.0]], [[1.0], [0.25], [1.0]])
    truth = np.array([1.4, -0.5, 0.1])
    drawn = sample_mixture(members, truth, 50_000, rng)
    fit = fit_weights(drawn.log_f, log=True)
    assert fit.converged
    assert np.all(np.abs(fit.weights - truth) < 5 * fit.weight_std)
    assert fit.weights[1] < 0


def test_weights_unbiased_and_sandwich_matches_spread():
    """Over 300 independent data sets from a known mixture of the members, the mean of ŵ is
    the truth (each component within 4 standard errors) and the spread of ŵ matches the mean
    sandwich covariance (trace ratio within 20 %)."""
    members = GaussianMembers([[0.0, 0.0], [1.0, 0.5], [-1.0, 1.0], [0.5, -1.0]],
                              [[1.0, 1.0], [0.5, 1.5], [1.2, 0.6], [0.8, 0.8]])
    truth = np.array([0.4, 0.3, 0.2, 0.1])
    fits = []
    for r in range(300):
        drawn = sample_mixture(members, truth, 2000, np.random.default_rng([7, r]))
        fits.append(fit_weights(drawn.log_f, log=True))
    weights = np.array([f.weights for f in fits])
    spread = np.cov(weights, rowvar=False)
    mean_cov = np.mean([f.cov for f in fits], axis=0)
    standard_error = np.sqrt(np.diag(spread) / len(fits))
    assert np.all(np.abs(weights.mean(axis=0) - truth) < 4 * standard_error)
    ratio = np.trace(spread) / np.trace(mean_cov)
    assert 0.8 < ratio < 1.2, ratio
    assert all(f.converged for f in fits)


def test_bad_density_matrices_are_rejected():
    good = np.random.default_rng(0).uniform(0.1, 1.0, (20, 3))
    with pytest.raises(InputError, match="NaN"):
        fit_weights(np.where(np.arange(60).reshape(20, 3) == 7, np.nan, good))
    with pytest.raises(InputError, match=r"\+inf"):
        fit_weights(np.where(np.arange(60).reshape(20, 3) == 7, np.inf, good))
    with pytest.raises(InputError, match="negative"):
        fit_weights(good - 0.5)
    zero_row = good.copy()
    zero_row[4] = 0.0
    with pytest.raises(InputError, match="1 events have zero density under every member"):
        fit_weights(zero_row)
    with pytest.raises(InputError, match="zero density"):
        fit_weights(np.where(zero_row > 0, np.log(np.maximum(zero_row, 1e-300)), -np.inf), log=True)
    with pytest.raises(InputError, match="more events than members"):
        fit_weights(good[:3])
    with pytest.raises(InputError, match="at least 2 members"):
        fit_weights(good[:, :1])
    with pytest.raises(InputError, match="2D"):
        fit_weights(good[:, 0])
    with pytest.raises(FitError, match="non-positive"):
        fit_weights(good, w0=[-1.0, 0.0, 0.0])
    with pytest.raises(InputError, match="max_iter"):
        fit_weights(good, max_iter=0)


def test_near_duplicate_members_are_named(rng):
    members = gaussian_members(rng, m=4)
    x = members.sample(3000, 0, rng)
    log_f = log_density_matrix(members, x)
    near = np.column_stack([log_f, log_f[:, 2] + 1e-5 * np.sin(x[:, 0])])
    with pytest.warns(IllConditionedWarning, match=r"members \[(2, 4|4, 2)"):
        fit = fit_weights(near, log=True)
    assert any("ill-conditioned" in m for m in fit.messages)
    exact = np.column_stack([log_f, log_f[:, 1]])
    with pytest.warns(IllConditionedWarning, match=r"1 direction\(s\): members \[(1, 4|4, 1)"):
        dup = fit_weights(exact, log=True)
    # The duplicated pair shares its weight evenly (held at the start along the flat direction)
    # and the pair's total, the density and its band are those of the fit without the twin.
    single = fit_weights(log_f, log=True)
    assert dup.n_unidentified == 1 and dup.converged
    np.testing.assert_allclose(dup.weights[1], dup.weights[4], rtol=1e-6)
    np.testing.assert_allclose(dup.weights[1] + dup.weights[4], single.weights[1], rtol=1e-8)
    F = np.exp(exact[:20])
    np.testing.assert_allclose(dup.density_std(F), single.density_std(F[:, :4]), rtol=1e-6)


def test_non_convergence_is_reported(rng):
    _, _, log_f = instance(rng)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fit = fit_weights(log_f, log=True, max_iter=1)
    assert not fit.converged
    assert "NOT converged" in repr(fit)


def test_repr_is_readable(rng):
    _, _, log_f = instance(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_weights(log_f, log=True)
    text = repr(fit)
    assert "converged" in text and "cond(V)" in text and "effective rank" in text
    assert "sum|w|=" in text and fit.abs_weight_sum >= 1.0
    assert 1.0 < fit.effective_rank <= fit.n_members


def _previous_fit_weights(S, tol=1e-14, max_iter=100, w0=None):
    """The weight fit's own Newton loop before it used genval.newton (issue 9), kept verbatim
    as a reference: ŵ and the sandwich Cov(ŵ) on a row-scaled density matrix S."""
    n, m = S.shape

    def pinv(matrix):
        values, vectors = np.linalg.eigh(matrix)
        keep = values > 1e-12 * values[-1]
        kept = vectors[:, keep]
        return (kept / values[keep]) @ kept.T

    def terms(f):
        inv_f = 1.0 / f
        A = S * inv_f[:, None]
        return (inv_f @ S) / n, (A.T @ A) / n

    def objective(f, w):
        return float(-np.mean(np.log(f)) + w.sum())

    w = np.full(m, 1.0 / m) if w0 is None else np.asarray(w0, dtype=np.float64).copy()
    f = S @ w
    converged = False
    for _ in range(max_iter):
        mean_a, V = terms(f)
        grad = 1.0 - mean_a
        step = pinv(V) @ -grad
        decrement = float(-grad @ step)
        f_step = S @ step
        shrinking = f_step < 0
        alpha = 1.0
        if shrinking.any():
            alpha = min(1.0, 0.99 * float(np.min(f[shrinking] / -f_step[shrinking])))
        if decrement / 2 <= tol and alpha == 1.0:
            w = w + step
            f = S @ w
            converged = True
            break
        current = objective(f, w)
        while objective(f + alpha * f_step, w + alpha * step) > current - 1e-4 * alpha * decrement:
            alpha *= 0.5
        w = w + alpha * step
        f = S @ w
    mean_a, V = terms(f)
    B = sum_to_one_basis(m)
    V_r = B.T @ V @ B
    U_r = V_r - np.outer(B.T @ mean_a, B.T @ mean_a)
    V_r_inv = pinv(V_r)
    cov_r = V_r_inv @ U_r @ V_r_inv / n
    return w, B @ (0.5 * (cov_r + cov_r.T)) @ B.T, converged


@pytest.mark.parametrize("seed,m,duplicate", [(0, 3, False), (1, 6, False), (2, 10, False),
                                              (3, 4, True), (4, 8, False)])
def test_matches_the_previous_newton_loop(seed, m, duplicate):
    """fit_weights now calls genval.newton.minimize_convex: same ŵ and Cov(ŵ) as before.

    Except along an exactly duplicated member (issue 10): the old loop gave that direction zero
    variance; now it has the prior's (sd ``PRIOR_STD``) and the same weights (held at the
    equal-weight mixture, where the old loop's uniform start also left it)."""
    rng = np.random.default_rng(seed)
    _, _, log_f = instance(rng, m=m, n=3000)
    if duplicate:
        log_f = np.column_stack([log_f, log_f[:, 0]])
    w0 = None if seed % 2 else rng.dirichlet(np.ones(log_f.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # the duplicate is reported
        fit = fit_weights(log_f, log=True, w0=w0)
    S = np.exp(log_f - log_f.max(axis=1, keepdims=True))
    w_ref, cov_ref, converged_ref = _previous_fit_weights(S, w0=w0)
    assert fit.converged and converged_ref
    np.testing.assert_allclose(fit.weights, w_ref, rtol=0, atol=1e-10)
    expected = cov_ref
    if duplicate:
        assert fit.n_unidentified == 1 and fit.ridge == 0.0
        twin = np.zeros(m + 1)
        twin[[0, m]] = [1 / np.sqrt(2), -1 / np.sqrt(2)]
        expected = cov_ref + PRIOR_STD ** 2 * np.outer(twin, twin)
    np.testing.assert_allclose(fit.cov, expected, rtol=0, atol=1e-8 * np.abs(cov_ref).max())


def _collinear_members():
    """Three Gaussians of one covariance with means on a line: f₂/f₁ grows along it faster than
    f₁/f₀, so events of member 0 never reach where member 2 is the larger of the two."""
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    return GaussianMembers(np.array([[0.0, 0.0], [2.0, -1.0], [4.0, -2.0]]),
                           np.repeat(cov[None], 3, axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_member_without_support_gets_weight_zero_not_a_cancelling_weight(seed):
    """Regression (issue 10): with 3000 events of member 0 the likelihood of Eq. (1) has no
    maximum (it grows without bound as member 2's weight goes negative); the fit used to stop
    there and report Σŵ = −20480 as converged. Now member 2 is named, held at 0, and the others
    are the maximum-likelihood fit: member 0's weight within 5σ of 1."""
    members = _collinear_members()
    log_f = log_density_matrix(members, members.sample(3000, 0, np.random.default_rng(seed)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_weights(log_f, log=True)
    assert fit.unsupported == (2,)
    assert any(issubclass(w.category, IllConditionedWarning) and "no support" in str(w.message)
               for w in caught)
    assert not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert fit.converged
    assert abs(fit.weights.sum() - 1.0) < 1e-9 and fit.weights[2] == 0.0
    assert fit.abs_weight_sum < 1.5, fit.weights
    assert abs(fit.weights[0] - 1.0) < 5 * fit.weight_std[0] + 1e-12, (fit.weights, fit.weight_std)
    assert fit.weight_std[2] == 0.0 and abs(fit.cov.sum()) < 1e-12
    # the two kept members are the plain maximum-likelihood fit on their columns
    alone = fit_weights(log_f[:, :2], log=True)
    np.testing.assert_allclose(fit.weights[:2], alone.weights, atol=1e-9)
    np.testing.assert_allclose(fit.cov[:2, :2], alone.cov, rtol=1e-8, atol=1e-14)
    assert "without support" in repr(fit)


def test_recession_direction_only_where_the_likelihood_is_unbounded():
    """The linear programme finds the direction of unbounded growth when member 2 has no
    events, and none when the events come from the mixture of all three."""
    from genval.row_scaling import prepare_density_matrix
    from genval.wifi import _recession_direction

    members = _collinear_members()
    rng = np.random.default_rng(5)
    S, _ = prepare_density_matrix(log_density_matrix(members, members.sample(3000, 0, rng)),
                                  log=True)
    direction = _recession_direction(S, None)
    assert direction is not None and int(np.argmin(direction)) == 2
    assert abs(direction.sum()) < 1e-9 and (S @ direction).min() > -1e-7
    x = sample_mixture(members, np.full(3, 1 / 3), 3000, rng).x
    S, _ = prepare_density_matrix(log_density_matrix(members, x), log=True)
    assert _recession_direction(S, None) is None


def test_saved_fit_keeps_the_unsupported_members():
    members = _collinear_members()
    log_f = log_density_matrix(members, members.sample(3000, 0, np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_weights(log_f, log=True)
    import json

    data = json.loads(json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                  for k, v in fit.to_dict().items()}))
    back = type(fit).from_dict(data)
    assert back.unsupported == (2,)
    np.testing.assert_array_equal(back.weights, fit.weights)
