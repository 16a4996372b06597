"""Failures of the GoF test are loud: a non-finite or failed t never becomes a p-value or a Z,
failed toys carry their reasons and bound p, and the pipeline and the CLI say what failed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genval.errors import FitError, InputError
from genval.gof import GoFResult, GoFSettings, goodness_of_fit, merge_results, summarize_z
from genval.gof.result import TOY_OK
from gof_support import small_gof_problem

ABOVE_OR_BELOW = ("t not finite", "alternative fit hit the iteration cap (after 100 steps, "
                  "Newton decrement 0.1)", "null fit stalled: no descent at float64 precision")


def result(t_obs, t_null, status=None, **kw):
    """A GoFResult from toy values (and per-toy statuses) alone."""
    t_null = np.asarray(t_null, dtype=np.float64)
    b = t_null.size
    status = tuple(status) if status is not None else (TOY_OK,) * b
    return GoFResult(t_obs=t_obs, t_null=t_null, toy_index=np.arange(b),
                     toy_converged=np.array([s == TOY_OK for s in status]),
                     toy_size=np.full(b, 10), observed=None, variant="ensemble",
                     centre="redrawn", seed=0, pool_size=50, n_test=10, n_kernels=3,
                     poisson=False, toy_status=status, **kw)


@pytest.mark.parametrize("t_obs", [np.nan, np.inf, -np.inf])
def test_non_finite_observed_statistic_never_gives_p_or_z(t_obs):
    res = result(t_obs, np.linspace(1, 50, 50))
    assert not res.ok and res.failure.step == "observed"
    for name in ("p_value", "z", "z_chi2", "n_above", "p_interval", "p_bounds", "z_interval",
                 "p_interval_total", "z_bounds", "z_is_bound", "pool_counts"):
        with pytest.raises(FitError, match="has no p-value: observed statistic"):
            getattr(res, name)
    with pytest.raises(FitError):
        summarize_z([res])
    d = json.loads(json.dumps(res.to_dict(), default=str))
    assert d["failure"]["step"] == "observed" and "p_value" not in d and "z" not in d
    assert "FAILED, no p-value and no Z" in repr(res) and "Z =" not in repr(res)
    back = GoFResult.from_dict({**d, "t_obs": str(t_obs)})
    assert not back.ok and str(back.failure) == str(res.failure)


def test_a_failed_observed_fit_is_a_failure_even_with_a_finite_t():
    cause = "alternative fit hit the iteration cap (after 100 steps, Newton decrement 3)"
    res = result(12.0, np.linspace(1, 50, 50), observed_failure=cause)
    assert res.failure.step == "observed" and cause in res.failure.message
    with pytest.raises(FitError, match="iteration cap"):
        _ = res.z


def test_failed_toys_bound_p_counted_either_way():
    """Over 400 random replicas (seed 5): p over the toys that did not fail lies within
    ``p_bounds``, and the bounds equal p with every failed toy replaced by a converged toy
    below t_obs or above it: counted either way."""
    rng = np.random.default_rng(5)
    for _ in range(400):
        b = int(rng.integers(20, 300))
        t = rng.chisquare(5, b)
        t_obs = float(rng.chisquare(5)) * rng.uniform(0.5, 3)
        n_bad = int(rng.integers(0, max(1, b // 20) + 1))
        bad = rng.choice(b, n_bad, replace=False)
        status = np.full(b, TOY_OK, dtype=object)
        status[bad] = rng.choice(ABOVE_OR_BELOW, n_bad)
        t_with_nan = t.copy()
        t_with_nan[bad[status[bad] == "t not finite"]] = np.nan
        res = result(t_obs, t_with_nan, status)
        assert res.ok and res.n_failed == n_bad and res.n_used == b - n_bad
        lo, hi = res.p_bounds
        assert lo <= res.p_value <= hi
        below = result(t_obs, np.where(status == TOY_OK, t, t_obs - 1.0))
        above = result(t_obs, np.where(status == TOY_OK, t, t_obs + 1.0))
        assert (lo, hi) == (below.p_value, above.p_value)
        k = int((t[status == TOY_OK] >= t_obs).sum())
        assert res.p_value == (1 + k) / (1 + b - n_bad)
        zlo, zhi = res.z_bounds
        assert zlo <= res.z <= zhi


def test_above_the_failed_fraction_the_result_is_an_error():
    t = np.linspace(1, 100, 100)
    reason = "alternative fit hit the iteration cap (after 100 steps, Newton decrement 2e-06)"
    five = [reason] * 5 + [TOY_OK] * 95
    six = [reason] * 6 + [TOY_OK] * 94
    assert result(50.0, t, five).ok  # 5 % is the default limit
    res = result(50.0, t, six)
    assert res.failure.step == "toys"
    assert "6 of 100 toys failed (6 alternative fit hit the iteration cap)" in res.failure.message
    assert "gof.max_failed_fraction" in res.failure.message
    with pytest.raises(FitError, match="6 of 100 toys failed"):
        _ = res.p_value
    assert result(50.0, t, six, max_failed_fraction=0.1).ok
    assert not result(50.0, t, [reason] + [TOY_OK] * 99, max_failed_fraction=0.0).ok
    assert not result(50.0, t[:3], [reason] * 3, max_failed_fraction=1.0).ok  # none left
    with pytest.raises(InputError, match="max_failed_fraction"):
        GoFSettings(max_failed_fraction=1.5)


def test_non_finite_toys_count_as_failed_whatever_their_status():
    t = np.linspace(1, 100, 100)
    t[[3, 7]] = [np.nan, np.inf]
    res = result(10.0, t)  # statuses say "ok": the values say otherwise
    assert res.n_failed == 2 and res.failure_reasons == {"t not finite": 2}
    assert np.isfinite(res.chi2_fit.scale) and np.isfinite(res.z_chi2)


def test_reasons_survive_merging_and_older_files():
    t = np.linspace(1, 40, 40)
    status = [TOY_OK] * 40
    status[4] = "error: FitError: infeasible start"
    full = result(10.0, t, status)
    first = result(10.0, t[:20], status[:20])
    second = GoFResult(**{**vars(result(10.0, t[20:], status[20:])),
                          "toy_index": np.arange(20, 40)})
    merged = merge_results([second, first])
    assert merged.statuses.tolist() == full.statuses.tolist()
    assert merged.p_value == full.p_value and merged.p_bounds == full.p_bounds
    old = {k: v for k, v in full.to_dict().items() if k != "toy_status"}
    legacy = GoFResult.from_dict(old)
    assert legacy.n_failed == 1 and "reason not recorded" in legacy.statuses[4]


@pytest.fixture(scope="module")
def small():
    return small_gof_problem()


def test_toys_that_cannot_converge_are_recorded_with_their_reason(small):
    """toy_tol = 0 cannot be met: every toy stops before its tolerance, says which fit and
    how, and the result is a failure naming the count and the reasons, not a Z."""
    members, fit, basis, x_test = small
    res = goodness_of_fit(members, fit, x_test, basis, n_toys=6, seed=3, pool_size=4000,
                          n_jobs=1, toy_tol=0.0)
    assert res.observed.failure is None and np.isfinite(res.t_obs)
    assert res.n_failed == 6 and all(s != TOY_OK for s in res.statuses)
    assert all(("fit hit the iteration cap" in s or "stalled" in s) for s in res.statuses)
    assert not res.ok and res.failure.step == "toys"
    assert res.failure.message.startswith("6 of 6 toys failed (")
    with pytest.raises(FitError):
        _ = res.z
    d = res.to_dict()
    assert d["toy_status"] == res.statuses.tolist() and "failure" in d


@pytest.mark.filterwarnings("ignore::genval.errors.ConvergenceWarning")
def test_an_observed_fit_that_stops_names_the_fit_the_events_and_the_kernels(small):
    """max_iter = 1: the observed statistic's failure says which fit stopped and how, where
    the density comes closest to 0 (a test event or a kernel centre) and which kernels carry
    the largest amplitudes; the result is a failure of the observed step, not a Z."""
    members, fit, basis, x_test = small
    res = goodness_of_fit(members, fit, x_test, basis, n_toys=4, seed=3, pool_size=4000,
                          n_jobs=1, max_iter=1)
    cause = res.observed.failure
    assert "fit hit the iteration cap (after 1 steps, Newton decrement" in cause
    assert "alternative density smallest at " in cause and "largest kernel amplitudes" in cause
    assert ("test event" in cause) or ("kernel centre" in cause)
    assert res.failure.step == "observed" and cause in res.failure.message
    assert np.isfinite(res.t_obs)  # a finite t from a stopped fit is still no p-value
    with pytest.raises(FitError, match="iteration cap"):
        _ = res.p_value


def test_a_toy_whose_fit_raises_is_a_failed_toy_not_a_crash(small, monkeypatch):
    import genval.gof.toys as toys

    real = toys.profile_pair
    calls = {"n": 0}

    def sometimes_infeasible(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FitError("infeasible start: density <= 0 at 1 of 410 events")
        return real(*args, **kw)

    monkeypatch.setattr(toys, "profile_pair", sometimes_infeasible)
    members, fit, basis, x_test = small
    res = goodness_of_fit(members, fit, x_test, basis, n_toys=30, seed=3, pool_size=4000,
                          n_jobs=1, max_failed_fraction=0.1)
    assert res.n_failed == 1 and res.ok
    assert res.failure_reasons == {"error: FitError: infeasible start: density <= 0 at 1 of "
                                   "410 events": 1}
    lo, hi = res.p_bounds
    assert lo <= res.p_value <= hi and hi - lo == pytest.approx(1 / 31)
    assert "1 failed toys" in repr(res) and "counting them below or above t_obs" in repr(res)


# --- the pipeline and the CLI --------------------------------------------------------------

def _failing_ensemble(monkeypatch, cause):
    """goodness_of_fit whose ensemble variant comes back failed (t_obs = -inf, ``cause``)."""
    import dataclasses

    from genval import gof

    real = gof.goodness_of_fit

    def failing(members, fit, x_test, basis, **kw):
        res = real(members, fit, x_test, basis, **kw)
        if kw["variant"] == "ensemble":
            res = dataclasses.replace(res, t_obs=-np.inf, observed_failure=cause)
        return res

    monkeypatch.setattr(gof, "goodness_of_fit", failing)


CAUSE = ("alternative fit stalled: no descent at float64 precision (after 15 steps, Newton "
         "decrement nan); t = -inf; alternative density smallest at kernel centre 35 (5.55e-17)")


def _config(tmp_path):
    from genval.config import parse_config

    return parse_config({
        "run_dir": str(tmp_path / "run"), "quiet": True,
        "data": {"generate": {"n_events": 800}},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "sample": {"n_events": 300}, "coverage": {"enabled": False},
        "gof": {"n_kernels": 10, "n_toys": 12, "pool_size": 2000, "n_jobs": 1},
        "report": {"formats": ["png"], "dpi": 30, "pool_size": 5000}})


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_a_failed_variant_is_recorded_and_every_later_stage_goes_on(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from genval import pipeline
    from genval.pipeline import artifacts

    _failing_ensemble(monkeypatch, CAUSE)
    run = pipeline.run_pipeline(_config(tmp_path),
                                stages=["split", "train", "fit", "gof", "report"])
    raw = json.loads((run.root / "gof" / "ensemble.json").read_text())
    assert raw["failure"]["step"] == "observed" and CAUSE in raw["failure"]["message"]
    assert "p_value" not in raw and "z" not in raw and raw["t_obs"] == "-inf"
    record = artifacts.load_gof(run, "ensemble")
    assert record.result is not None and CAUSE in record.error and "\n" not in record.error
    # the other variants and the figures they can draw are all there
    assert artifacts.load_gof(run, "single").error is None
    assert (run.root / "figures" / "null_single.png").is_file()
    assert not (run.root / "figures" / "null_ensemble.png").exists()
    assert (run.root / "figures" / "marginals.png").is_file()
    info = json.loads((run.root / ".stages" / "gof.json").read_text())["info"]
    assert info["ensemble"]["error"].startswith("observed statistic: t_obs = -inf")
    assert any("'ensemble' failed: observed statistic" in w for w in info["warnings"])
    report = (run.root / "report.html").read_text()
    assert "failed: observed statistic: t_obs = -inf" in report
    assert "kernel centre 35" in report


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_the_cli_prints_a_failed_variant_as_one_line(tmp_path, monkeypatch):
    import click
    import matplotlib
    import yaml
    from click.testing import CliRunner

    matplotlib.use("Agg")
    from genval.cli import register

    _failing_ensemble(monkeypatch, CAUSE)
    cfg = _config(tmp_path).model_dump(mode="json")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(register(click.Group("genval")), ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output  # the run finishes, with its report
    lines = [line for line in result.output.splitlines() if "GoF variant" in line]
    assert len(lines) == 1
    assert lines[0].startswith("genval: GoF variant 'ensemble' failed: observed statistic: "
                               "t_obs = -inf: alternative fit stalled")
    assert result.output.strip().endswith("report.html")
    results = CliRunner().invoke(register(click.Group("genval")),
                                 ["results", str(tmp_path / "run")])
    assert results.exit_code == 0, results.output
    assert "ensemble with uncertainty: FAILED: observed statistic: t_obs = -inf" in \
        results.output
