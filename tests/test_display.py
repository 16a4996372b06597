"""Notebook display: the PDG rounding rule, and the HTML of each result with its flags."""

import dataclasses
import re
from decimal import Decimal

import numpy as np
import pytest

from genval.coverage import CoverageResult
from genval.display import (
    format_interval,
    format_measurement,
    pdg_exponent,
    pdg_round,
)
from genval.errors import InputError
from genval.gof import GoFResult
from genval.members import GaussianMembers, log_density_matrix
from genval.sampling import sample_mixture
from genval.wifi import fit_weights


@pytest.mark.parametrize(("value", "error", "expected"), [
    # three leading digits 100-354: two significant digits of the error
    (1.23456, 0.0123, ("1.235", "0.012")),
    (1.23456, 0.0100, ("1.235", "0.010")),
    (1.23456, 0.0354, ("1.235", "0.035")),
    (1.23456, 0.035499, ("1.235", "0.035")),   # the leading digits are 354, not rounded to 355
    # 355-949: one significant digit
    (1.23456, 0.0355, ("1.23", "0.04")),
    (1.23456, 0.0949, ("1.23", "0.09")),
    (1.23456, 0.5, ("1.2", "0.5")),
    # 950-999: rounded up to 1000, two significant digits
    (1.23456, 0.0950, ("1.23", "0.10")),
    (1.23456, 0.0999, ("1.23", "0.10")),
    (9.96, 0.97, ("10.0", "1.0")),
    # errors above one: the value loses digits before the point
    (56789.0, 1234.0, ("56800", "1200")),
    (56789.0, 567.0, ("56800", "600")),
    (-0.04, 0.0123, ("-0.040", "0.012")),
    (0.0004, 0.0123, ("0.000", "0.012")),    # no "-0.000" for a number that rounds to zero
    (-0.0004, 0.0123, ("0.000", "0.012")),
    (1.2345, 0.0123, ("1.235", "0.012")),    # half-up on the decimal digits shown
])
def test_pdg_rounding_cases(value, error, expected):
    assert pdg_round(value, error) == expected


def test_pdg_rule_on_random_errors():
    rng = np.random.default_rng(7)
    for error in 10.0 ** rng.uniform(-9, 9, 2000):
        _, text = pdg_round(0.0, float(error))
        rounded = Decimal(text)
        leading = int(str(Decimal(repr(float(error))).scaleb(-Decimal(repr(float(error)))
                                                            .adjusted() + 2))[:3].replace(".", ""))
        digits = len(text.replace(".", "").lstrip("0").rstrip("0") or "0")
        q = pdg_exponent(float(error))
        # The error moves by at most half a unit of its last kept digit ...
        assert abs(rounded - Decimal(repr(float(error)))) <= Decimal(5).scaleb(q - 1)
        # ... and keeps one significant digit exactly when its leading digits are 355-949.
        kept = len(str(int(rounded.scaleb(-q))))
        assert kept == (1 if 355 <= leading <= 949 else 2), (error, text)
        assert digits <= 2


def test_pdg_exponent_refuses_unusable_errors():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError):
            pdg_exponent(bad)
    with pytest.raises(InputError, match="non-finite value"):
        pdg_round(float("inf"), 0.1)


def test_format_measurement():
    assert format_measurement(0.0351, 0.0123) == "0.035 ± 0.012"
    assert format_measurement(1.234e-7, 4.5e-9) == "(1.23 ± 0.05) × 10⁻⁷"
    assert format_measurement(1.234e-7, 4.5e-9, html=True) == "(1.23 ± 0.05) × 10<sup>-7</sup>"
    assert format_measurement(123456.0, 789.0) == "(1.235 ± 0.008) × 10⁵"
    # No error to round by: the value as it is, the error named.
    assert format_measurement(1.5, 0.0) == "1.5 ± 0"
    assert format_measurement(1.5, float("nan")) == "1.5 ± —"


def test_format_interval_uses_the_smaller_side():
    assert format_interval(0.92, 0.78, 1.12) == "0.92 [0.78, 1.12]"
    # 0.613 [0.584, 0.642] in percent: the smaller side 2.9 has leading digits 290 -> 2 digits
    assert format_interval(0.613, 0.5841, 0.6419, scale=100) == "61.3 [58.4, 64.2]"
    # at a bound (0 % or 100 %) the other side decides
    assert format_interval(1.0, 0.95, 1.0, scale=100) == "100 [95, 100]"
    assert format_interval(0.5, 0.5, 0.5) == "0.5 [0.5, 0.5]"
    assert format_interval(2e-7, 1e-7, 3.55e-7) == "(2.0 [1.0, 3.6]) × 10⁻⁷"


def _fit(rng, **changes):
    members = GaussianMembers(rng.normal(0, 1, (4, 2)), rng.uniform(0.5, 1.5, (4, 2)))
    drawn = sample_mixture(members, np.full(4, 0.25), 3000, rng)
    fit = fit_weights(log_density_matrix(members, drawn.x), log=True)
    return dataclasses.replace(fit, **changes) if changes else fit


def test_weight_fit_html_shows_flags_and_pdg_weights(rng):
    fit = _fit(rng)
    page = fit._repr_html_()
    assert "✔ converged" in page and "NOT converged" not in page
    k = int(np.argmax(np.abs(fit.weights)))
    assert format_measurement(fit.weights[k], fit.weight_std[k], html=True) in page
    bad = dataclasses.replace(fit, converged=False, messages=("members 0 and 1 <dup>",))
    page = bad._repr_html_()
    assert "✘ NOT converged" in page and "&lt;dup&gt;" in page  # messages are escaped


def test_weight_fit_html_lists_the_largest_weights_only(rng):
    fit = _fit(rng)
    w = np.linspace(-1, 2, 30)
    w = w - (w.sum() - 1) / 30
    wide = dataclasses.replace(fit, weights=w, cov=np.eye(30) * 1e-4,
                               cov_reduced=np.eye(29) * 1e-4)
    page = wide._repr_html_()
    assert "20 more weight(s)" in page
    assert len(re.findall(r"<tr><td style='[^']*'>\d+</td>", page)) == 10


def _gof(t_obs, t_null, *, converged=None, n_pools=1):
    b = len(t_null)
    return GoFResult(t_obs=t_obs, t_null=np.asarray(t_null, dtype=float),
                     toy_index=np.arange(b),
                     toy_converged=np.ones(b, bool) if converged is None else converged,
                     toy_size=np.full(b, 100), observed=None, variant="ensemble",
                     centre="redrawn", seed=1, pool_size=1000, n_test=100, n_kernels=10,
                     poisson=False, n_pools=n_pools)


def test_gof_result_html(rng):
    t_null = rng.chisquare(5, 200)
    res = _gof(float(np.quantile(t_null, 0.9)), t_null)
    page = res._repr_html_()
    assert "ensemble with uncertainty" in page
    lo, hi = res.z_interval
    assert format_interval(res.z, lo, hi, html=True) in page
    assert "all 200 toy fits converged" in page and "lower bound" not in page
    assert "extrapolated" in page
    # A t beyond every toy, failed toys: the flags say so before any number.
    converged = np.ones(200, bool)
    converged[:3] = False
    bound = _gof(1e3, t_null, converged=converged)._repr_html_()
    assert "Z is a lower bound" in bound and "≥ " in bound
    assert "3 of 200 toy fits failed, left out of p" in bound
    assert bound.index("lower bound") < bound.index("t<sub>obs</sub>")
    # A failed result: its cause, and neither p nor Z.
    failed = _gof(float("nan"), t_null)._repr_html_()
    assert "FAILED, no p-value and no Z: observed statistic: t_obs = nan" in failed
    assert "Clopper" not in failed and "Z [" not in failed


def test_coverage_html(rng):
    r, p = 50, 2
    truth = np.array([0.0, 1.0])
    stds = np.full((r, p), 0.1)
    estimates = truth + stds * rng.standard_normal((r, p))
    converged = np.ones(r, bool)
    converged[0] = False
    res = CoverageResult(truth=truth, levels=np.array([0.6827]), estimates=estimates,
                         stds=stds, stds_weights=stds, weights=np.zeros((r, 3)),
                         covs=np.zeros((r, 3, 3)), converged=converged, n_events=100,
                         n_generated=200)
    page = res._repr_html_()
    assert "1 of 50 weight fits not converged" in page
    from genval.coverage import COVERAGE_CL

    bounds = res.intervals(COVERAGE_CL)
    assert format_interval(res.fractions[1, 0], *bounds[1, 0], scale=100, html=True) in page
    pulls = res.pulls[:, 0]
    assert format_measurement(pulls.mean(), pulls.std(ddof=1) / np.sqrt(r), html=True) in page
