"""genval.gof: toys, calibration bookkeeping, merging by seed range, result objects."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.stats

import genval
from genval.errors import FitError, InputError, NegativeDensityWarning
from genval.gof import (
    GoFResult,
    KernelBasis,
    clopper_pearson,
    fit_scaled_chi2,
    goodness_of_fit,
    merge_results,
    summarize_z,
)
from genval.members import log_density_matrix
from gof_support import quick_fit, small_gof_problem


@pytest.fixture(scope="module")
def setup():
    return small_gof_problem()


def _run(setup, **kw):
    members, fit, basis, x_test = setup
    kw.setdefault("n_toys", 30)
    kw.setdefault("seed", 7)
    kw.setdefault("pool_size", 4000)
    return goodness_of_fit(members, fit, x_test, basis, **kw)


def test_public_api_names():
    assert genval.goodness_of_fit is goodness_of_fit
    for name in ("KernelBasis", "test_statistic", "goodness_of_fit"):
        assert name in genval.gof.__all__


def test_result_fields_and_repr(setup):
    res = _run(setup)
    assert isinstance(res, GoFResult)
    assert res.n_toys == 30 and res.t_null.shape == (30,) and res.n_failed == 0
    assert np.all(res.t_null >= -1e-9)
    k = int((res.t_null >= res.t_obs).sum())
    assert res.p_value == (1 + k) / 31
    assert res.z == pytest.approx(scipy.stats.norm.isf(res.p_value))
    lo, hi = res.p_interval
    assert lo <= k / 30 <= hi
    assert res.pool_size == 4000 and res.overlap == pytest.approx(400 / 4000)
    text = repr(res)
    for piece in ("t_obs", "Clopper-Pearson", "extrapolated", "pool 4000 events",
                  "overlap 10.0%", "0 failed, left out of p", "redrawn"):
        assert piece in text
    d = res.to_dict()
    json.dumps(d)
    assert d["n_toys"] == 30 and d["z_chi2_extrapolated"] == res.z_chi2


def test_reproducible_and_merge_equals_single_run(setup):
    full = _run(setup, n_toys=24)
    again = _run(setup, n_toys=24)
    np.testing.assert_array_equal(full.t_null, again.t_null)
    parts = [_run(setup, n_toys=10, first_toy=14, n_jobs=2), _run(setup, n_toys=14, n_jobs=1)]
    merged = merge_results(parts)
    np.testing.assert_array_equal(merged.toy_index, np.arange(24))
    np.testing.assert_array_equal(merged.t_null, full.t_null)
    assert merged.p_value == full.p_value and merged.z == full.z
    other = _run(setup, n_toys=24, seed=8)
    assert not np.array_equal(other.t_null, full.t_null)
    with pytest.raises(InputError, match="seed differs"):
        merge_results([full, _run(setup, n_toys=5, first_toy=24, seed=8)])
    with pytest.raises(InputError, match="overlap"):
        merge_results([full, parts[0]])


def test_centre_treatments_and_toy_sizes(setup):
    redrawn = _run(setup, centre="redrawn")
    fixed = _run(setup, centre="fixed")
    assert redrawn.t_obs == fixed.t_obs  # the observed statistic is centred at ŵ in both
    assert not np.allclose(redrawn.t_null, fixed.t_null)
    poisson = _run(setup, toy_size="poisson")
    assert poisson.poisson and len(set(poisson.toy_size.tolist())) > 1
    assert np.all(_run(setup).toy_size == 400)


def test_variants_run(setup):
    frozen = _run(setup, variant="frozen", n_toys=10)
    single = _run(setup, variant="single", member=1, n_toys=10)
    ens = _run(setup, n_toys=10)
    assert frozen.variant == "frozen" and single.variant == "single"
    assert frozen.t_obs >= ens.t_obs - 1e-9  # profiling φ can only lower t
    members, fit, basis, x_test = setup
    single_fit_free = goodness_of_fit(members, None, x_test, basis, n_toys=5, seed=1,
                                      variant="single", member=1, pool_size=4000)
    assert single_fit_free.t_obs == pytest.approx(single.t_obs)


def test_too_few_toys_for_target_z(setup):
    with pytest.raises(InputError, match=r"30 toys resolve Z up to 1\.85.*needs at least "
                                         r"740 toys"):
        _run(setup, target_z=3.0)
    assert _run(setup, n_toys=30, target_z=1.5).n_toys == 30


def test_bad_inputs(setup):
    members, fit, basis, x_test = setup
    x_bad = x_test.copy()
    x_bad[3, 0] = np.inf
    with pytest.raises(InputError, match="1 rows with NaN/inf.*row 3"):
        goodness_of_fit(members, fit, x_bad, basis, n_toys=5)
    with pytest.raises(InputError, match="pool_size"):
        _run(setup, pool_size=500)
    with pytest.raises(InputError, match="centre"):
        _run(setup, centre="middle")
    with pytest.raises(InputError, match="n_jobs"):
        _run(setup, n_jobs=0)
    with pytest.raises(InputError, match="features"):
        goodness_of_fit(members, fit, x_test, KernelBasis(np.zeros((2, 3)), 0.1), n_toys=5)


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_negative_mixture_density_names_events(setup):

    members, fit, basis, _ = setup
    signed = type(fit)(np.array([2.0, -1.5, 0.3, 0.2]), fit.cov * 1e4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)) * 1.5
    F = np.exp(log_density_matrix(members, x))
    n_bad = int((F @ signed.weights <= 0).sum())
    assert n_bad > 0
    with pytest.raises(FitError, match=rf"<= 0 on {n_bad} of 200 test events \(row \d+: x = \["):
        goodness_of_fit(members, signed, x, basis, n_toys=5, variant="frozen")
    # The toys would come from max(f, 0): refused at the default negative-mass limit ...
    with pytest.warns(NegativeDensityWarning, match=rf"<= 0 on {n_bad} of 200 test events"), \
            pytest.raises(FitError, match=r"negative mass 0\.\d+ ± .* above max_negative_mass"):
        goodness_of_fit(members, signed, x, basis, n_toys=5, pool_size=4000)
    # ... and run, saying so, when the user accepts that null.
    with pytest.warns(NegativeDensityWarning, match=rf"<= 0 on {n_bad} of 200 test events "
                                                    r"\(row \d+: x = \["):
        res = goodness_of_fit(members, signed, x, basis, n_toys=5, pool_size=4000,
                              max_negative_mass=0.5)
    assert np.isfinite(res.t_obs)
    assert res.negative_mass > 0.1 and res.null.startswith("max(f, 0)")


def test_clopper_pearson_and_chi2_fit():
    lo, hi = clopper_pearson(0, 100, 0.6827)
    assert lo == 0.0 and hi == pytest.approx(1 - ((1 - 0.6827) / 2) ** (1 / 100), rel=1e-9)
    lo, hi = clopper_pearson(50, 100, 0.95)
    assert lo == pytest.approx(0.398, abs=2e-3) and hi == pytest.approx(0.602, abs=2e-3)
    rng = np.random.default_rng(3)
    t = 1.7 * rng.chisquare(12.0, size=4000)
    fit = fit_scaled_chi2(t)
    assert fit.scale == pytest.approx(1.7, rel=0.08) and fit.dof == pytest.approx(12, rel=0.08)
    assert fit.z(1.7 * scipy.stats.chi2.isf(scipy.stats.norm.sf(6.0), 12.0)) == pytest.approx(
        6.0, abs=0.3)
    with pytest.raises(InputError):
        fit_scaled_chi2([0.0])


def test_z_bound_and_summary(setup):
    res = _run(setup, n_toys=20)
    beyond = dataclasses.replace(res, t_obs=1e6)
    assert beyond.z_is_bound and "lower bound" in repr(beyond)
    assert beyond.p_value == pytest.approx(1 / 21)
    assert beyond.z_chi2 > beyond.z  # the extrapolation reaches further, labelled as such
    summary = summarize_z([0.7, 0.9, 0.92, 1.0, 1.2])
    assert summary.median == pytest.approx(0.92)
    assert "median, 16-84%" in repr(summary) and summary.n_sets == 5
    assert summarize_z([res, res]).median == pytest.approx(res.z)


def test_progress_bar_on_stderr(setup, capsys):
    quiet = _run(setup, n_toys=6)
    shown = _run(setup, n_toys=6, progress=True)
    err = capsys.readouterr().err
    assert "toys:" in err and "/6 [" in err  # the bar was drawn (then cleared: leave=False)
    np.testing.assert_array_equal(quiet.t_null, shown.t_null)


def test_process_and_thread_parallelism_give_identical_toys(setup):
    from genval.gof import Constraint, draw_pool, run_toys

    members, fit, basis, x_test = setup
    pool = draw_pool(members, Constraint.from_cov(fit.weights, fit.cov), basis, 4000, seed=3)
    indices = np.arange(10, 22)
    runs = [run_toys(pool, indices, seed=3, n_test=len(x_test), n_jobs=jobs, parallel=mode)
            for jobs, mode in [(1, "threads"), (2, "threads"), (2, "processes")]]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.t, runs[0].t)
        np.testing.assert_array_equal(other.index, indices)
    assert np.all(runs[0].t > -1e-9)


def test_settings_objects_equal_keyword_calls(setup):
    from genval.gof import GoFSettings, ProfileSettings

    by_keyword = _run(setup, n_toys=4, n_jobs=1, centre="fixed", lam=1e-4, toy_tol=1e-9)
    settings = GoFSettings(centre="fixed", n_jobs=1, toy_tol=1e-9, pool_size=4000,
                           profile=ProfileSettings(lam=1e-4))
    members, fit, basis, x_test = setup
    by_settings = goodness_of_fit(members, fit, x_test, basis, n_toys=4, seed=7,
                                  settings=settings)
    assert by_settings.t_obs == by_keyword.t_obs
    np.testing.assert_array_equal(by_settings.t_null, by_keyword.t_null)
    # keyword overrides win over the settings object, nested profile fields included
    overridden = goodness_of_fit(members, fit, x_test, basis, n_toys=4, seed=7,
                                 settings=settings, lam=1e-6, centre="redrawn")
    assert overridden.t_obs == _run(setup, n_toys=4, n_jobs=1, toy_tol=1e-9).t_obs
    assert overridden.centre == "redrawn"
    with pytest.raises(TypeError, match=r"\['lamda'\].*valid settings: centre, .*lam, "):
        _run(setup, lamda=1e-4)
    with pytest.raises(InputError, match="toy_size"):
        GoFSettings(toy_size="sometimes")


def test_test_statistic_settings_and_overrides(setup):
    from genval.gof import ProfileSettings, test_statistic

    members, fit, basis, x_test = setup
    log_f, log_g = log_density_matrix(members, x_test), basis.log_pdf(x_test)
    t_kw = test_statistic(log_f, log_g, fit, log=True, hessian_dtype=np.float64, lam=1e-5)
    t_set = test_statistic(log_f, log_g, fit, log=True,
                           settings=ProfileSettings(hessian_dtype=np.float64, lam=1e-5))
    assert float(t_kw) == float(t_set)
    with pytest.raises(TypeError, match="valid settings: lam, barrier, tol, max_iter"):
        test_statistic(log_f, log_g, fit, log=True, toy_tol=1e-3)


def test_moved_names_still_resolve():
    import genval.newton
    import genval.products.binned
    import genval.row_scaling

    assert genval.gof.VARIANT_LABELS["ensemble"] == "ensemble with uncertainty"
    assert set(genval.gof.VARIANT_LABELS) == set(genval.gof.VARIANTS)
    assert genval.gof.LAMBDA_NET == 1e-6 and genval.gof.BARRIER == 1e-3
    assert genval.gof.minimize_convex is genval.newton.minimize_convex
    assert genval.wifi.prepare_density_matrix is genval.row_scaling.prepare_density_matrix
    assert genval.gof.scale_rows is genval.row_scaling.scale_rows
    assert genval.products.binned_reference is genval.products.binned.binned_reference
    for name in ("oversample", "observable", "member_integrals", "OversampledEvents"):
        assert name in genval.products.__all__


def test_constraint_projection(setup):
    from genval.gof import Constraint
    from genval.row_scaling import scale_rows

    members, fit, basis, x_test = setup
    rows = scale_rows(log_density_matrix(members, x_test), basis.log_pdf(x_test), log=True)
    constraint = Constraint.from_cov(fit.weights, fit.cov)
    c, a = constraint.project(rows)
    np.testing.assert_array_equal(c, rows.f @ fit.weights)
    np.testing.assert_array_equal(a[:, :constraint.rank], rows.f @ constraint.transform)
    np.testing.assert_array_equal(a[:, constraint.rank:], rows.g)
    u = np.linspace(-1.0, 1.0, constraint.rank)
    # c + A (u, 0) is the row-scaled density of the ensemble at φ(u)
    np.testing.assert_allclose(c + a[:, :constraint.rank] @ u,
                               rows.f @ constraint.weights_at(u), rtol=1e-12)


def test_prepared_pools_shared_by_frozen_and_ensemble(setup, monkeypatch):
    """One preparation: test rows evaluated once, frozen and ensemble draw their pools once,
    and each variant's result equals a separate call with the same seed. The pools may be
    drawn here or in forked workers (3 pools, 2 workers), so what is counted is what the
    preparation keeps, and the second variant may not draw at all (a draw would raise, in a
    worker too: it inherits this module's state)."""
    import genval.gof.toys as toys
    from genval.gof import prepare

    members, fit, basis, x_test = setup
    prep = prepare(members, x_test, basis, seed=7, pool_size=4000, n_pools=3)
    shared = {"frozen": goodness_of_fit(members, fit, x_test, basis, n_toys=9, seed=7,
                                        variant="frozen", pool_size=4000, n_pools=3,
                                        prepared=prep, n_jobs=2)}
    assert [prep.has_pool(fit.weights, j) for j in range(4)] == [True, True, True, False]
    assert prep.seconds > 0

    def no_draw(*args, **kw):
        raise AssertionError(f"pool {kw.get('pool')} drawn a second time")

    monkeypatch.setattr(toys, "draw_pool_rows", no_draw)
    shared["ensemble"] = goodness_of_fit(members, fit, x_test, basis, n_toys=9, seed=7,
                                         variant="ensemble", pool_size=4000, n_pools=3,
                                         prepared=prep, n_jobs=2)
    monkeypatch.undo()
    for variant, res in shared.items():
        alone = _run(setup, n_toys=9, variant=variant, n_pools=3)
        assert res.t_obs == pytest.approx(alone.t_obs, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(res.t_null, alone.t_null, rtol=1e-12, atol=1e-12)
        assert res.n_pools == 3 and res.p_value == alone.p_value
    with pytest.raises(InputError, match="seed, n_pools, pool_size"):
        goodness_of_fit(members, fit, x_test, basis, n_toys=3, seed=8, pool_size=4000,
                        n_pools=3, prepared=prep)
    with pytest.raises(InputError, match="other test events"):
        goodness_of_fit(members, fit, x_test[:-1], basis, n_toys=3, seed=7, pool_size=4000,
                        n_pools=3, prepared=prep)


def test_toys_cycle_through_independent_pools(setup):
    """Toy i is on pool i mod n_pools; one pool reproduces the single-pool stream; a pool
    below 5 N is refused (a small pool shifts the whole null)."""
    one = _run(setup, n_toys=6, n_pools=1)
    four = _run(setup, n_toys=6, n_pools=4)
    # toys 0 and 4 are on pool 0 in both, toys 1-3 on other pools than with one pool
    np.testing.assert_array_equal(four.t_null[[0, 4]], one.t_null[[0, 4]])
    assert not np.allclose(four.t_null[1:4], one.t_null[1:4])
    assert one.p_pool_sd is None and one.p_interval_total == one.p_interval
    with pytest.raises(InputError, match="at least 5 x the test size"):
        _run(setup, pool_size=1999)


def _pool_result(t_null, n_pools, t_obs=0.5):
    b = t_null.size
    return GoFResult(t_obs=t_obs, t_null=t_null, toy_index=np.arange(b),
                     toy_converged=np.ones(b, bool), toy_size=np.full(b, 10), observed=None,
                     variant="ensemble", centre="redrawn", seed=0, pool_size=50, n_test=10,
                     n_kernels=3, poisson=False, n_pools=n_pools)


def test_pool_share_estimate_is_unbiased_and_widens_the_interval():
    """Synthetic toys: pool j has tail probability π_j = 0.3 + τ ε_j. Over 400 replicas of
    8 pools x 125 toys the moment estimate of the pools' share recovers τ² / P (within 20 %);
    without a pool effect it stays below 30 % of the binomial variance (truncated at 0, it
    errs on the conservative side), and the total interval contains the Clopper-Pearson one."""
    rng = np.random.default_rng(11)
    n_pools, b = 8, 1000
    for tau in (0.0, 0.05):
        shares = []
        for _ in range(400):
            pi = np.clip(0.3 + tau * rng.standard_normal(n_pools), 0, 1)
            above = rng.random(b) < pi[np.arange(b) % n_pools]
            res = _pool_result(np.where(above, 1.0, 0.0), n_pools)
            shares.append(res.p_pool_sd ** 2)
            lo, hi = res.p_interval
            tlo, thi = res.p_interval_total
            assert tlo <= lo + 1e-15 and thi >= hi - 1e-15
        expected = tau ** 2 / n_pools
        if tau == 0:
            assert np.mean(shares) < 0.3 * 0.3 * 0.7 / b
        else:
            assert np.mean(shares) == pytest.approx(expected, rel=0.2)


def test_result_round_trip_with_pools_and_older_files(setup):
    res = _run(setup, n_toys=8)
    d = json.loads(json.dumps(res.to_dict()))
    back = GoFResult.from_dict(d)
    assert back.n_pools == res.n_pools == 4
    assert back.p_interval_total == res.p_interval_total and back.null == res.null
    np.testing.assert_array_equal(back.pool_negative_mass, res.pool_negative_mass)
    assert d["p_interval_total"] == list(res.p_interval_total) and "pools' share" in repr(res)
    old = {k: v for k, v in d.items() if k not in (
        "n_pools", "p_pool_sd", "p_interval_total", "z_interval_total", "negative_mass",
        "negative_mass_error", "null", "pool_negative_mass", "pool_negative_mass_error")}
    legacy = GoFResult.from_dict(old)
    assert legacy.n_pools == 1 and legacy.negative_mass == 0.0
    assert legacy.p_interval_total == legacy.p_interval and "not measured" in repr(legacy)


@pytest.mark.filterwarnings("ignore:the mixture f.* is negative:"
                            "genval.errors.NegativeDensityWarning")
def test_negative_mass_recorded_and_limited(setup, monkeypatch):
    """The sampler's negative mass (where it reports one) reaches the result, which names the
    null it calibrates; above gof.max_negative_mass the test refuses with the measured value."""
    import dataclasses

    import genval.gof.toys as toys

    real = toys.sample_mixture

    def with_negative_mass(*args, **kw):
        sample = real(*args, **kw)
        return dataclasses.replace(sample, negative_mass=0.004, negative_mass_error=0.001)

    monkeypatch.setattr(toys, "sample_mixture", with_negative_mass)
    with pytest.warns(NegativeDensityWarning, match=r"negative on a fraction 0\.004 ± 0\.001 "
                                                    r"of ∫\|f\| \(toy pool 0"), \
            pytest.raises(FitError, match=r"negative mass 0\.004 .*gof\.max_negative_mass"):
        _run(setup, n_toys=4)
    res = _run(setup, n_toys=8, max_negative_mass=0.01)
    assert res.negative_mass == pytest.approx(0.004)
    assert res.negative_mass_error == pytest.approx(0.001 / 2)  # four pools averaged
    assert "max(f, 0)" in res.null and "max(f, 0)" in repr(res)
    partial = merge_results([_run(setup, n_toys=2, max_negative_mass=0.01),
                             _run(setup, n_toys=2, first_toy=2, max_negative_mass=0.01)])
    np.testing.assert_array_equal(partial.pool_negative_mass, np.full(4, 0.004))


def test_pools_drawn_in_forked_workers_equal_serial_also_for_torch_members():
    """Four pools on two workers: each worker draws whole pools and fits their toys. With torch
    members evaluated here first (torch's OpenMP threads running), the forked workers must not
    hang on them (torch's pool does not survive fork; each worker goes single-threaded) and
    give the toys of one process bit for bit, with the progress counted and warnings kept."""
    torch = pytest.importorskip("torch")
    from genval.flows import FlowEnsemble
    from gof_support import within

    rng = np.random.default_rng(5)
    members = FlowEnsemble(2, 3, layers=2, hidden=8, blocks=1, bins=4, seed=2)
    members.loc, members.scale = np.zeros(2), np.ones(2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x_fit = rng.standard_normal((1500, 2))
        members.log_prob(x_fit)  # torch's intra-op threads started in this process
        fit = quick_fit(np.exp(log_density_matrix(members, x_fit)))
        x_test = rng.standard_normal((200, 2))
        basis = KernelBasis.from_events(rng.standard_normal((300, 2)), 6, 0.5, seed=rng)

        def run(jobs):
            return goodness_of_fit(members, fit, x_test, basis, n_toys=12, seed=3,
                                   pool_size=1000, n_pools=4, n_jobs=jobs)

        serial = run(1)
        forked = within(240, lambda: run(2))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(forked.t_null, serial.t_null)
    np.testing.assert_array_equal(forked.pool_negative_mass, serial.pool_negative_mass)
    assert forked.t_obs == serial.t_obs and forked.n_pools == 4
    assert forked.timings["pool"] > 0 and forked.timings["toys"] > 0
