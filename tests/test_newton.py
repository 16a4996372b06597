"""The one exact damped-Newton solver of Eqs. (1) and (5): options used by the weight fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import genval
from genval.errors import FitError
from genval.newton import NewtonOptions, Solution, minimize_convex


def _eq1(rng: np.random.Generator, n: int = 2000, m: int = 5, duplicate: bool = False):
    """Eq. (1) times N in the solver's form: c = 0, A = F, b = N 1, q = 0."""
    F = rng.random((n, m)) + 0.05
    if duplicate:
        F = np.column_stack([F, F[:, 1]])
    m = F.shape[1]
    return np.zeros(n), F, np.full(m, float(n)), np.zeros(m), np.full(m, 1.0 / m)


def test_moved_to_top_level_and_reexported_by_gof():
    assert genval.gof.minimize_convex is minimize_convex
    assert genval.gof.Solution is Solution


def test_final_step_brings_the_constraint_to_rounding(rng):
    c, a, b, q, w0 = _eq1(rng)
    plain_options = NewtonOptions(tol=1e-14 * a.shape[0], hessian_dtype=np.float64, refresh=0.0)
    plain = minimize_convex(c, a, b, q, w0, options=plain_options)
    final = minimize_convex(c, a, b, q, w0,
                            options=dataclasses.replace(plain_options, final_step=True))
    assert plain.converged and final.converged and not final.line_search_failed
    # λ = 1 makes Σw = 1 exactly at the optimum: the extra full step reaches it to rounding
    assert abs(final.theta.sum() - 1.0) < 1e-13
    assert final.n_iter == plain.n_iter + 1
    np.testing.assert_allclose(final.theta, plain.theta, atol=1e-7)


def test_rcond_holds_singular_directions_at_the_start(rng):
    c, a, b, q, w0 = _eq1(rng, duplicate=True)
    w0 = w0.copy()
    w0[1], w0[-1] = 0.1, 0.3  # the duplicated pair starts unequal
    options = NewtonOptions(tol=1e-14 * a.shape[0], hessian_dtype=np.float64, refresh=0.0,
                            final_step=True)
    sol = minimize_convex(c, a, b, q, w0, options=dataclasses.replace(options, rcond=1e-12))
    assert sol.converged
    # only the pair's total is identifiable: its difference stays where it started
    assert sol.theta[-1] - sol.theta[1] == pytest.approx(0.2, abs=1e-12)
    single = minimize_convex(c, a[:, :-1], b[:-1], q[:-1], np.full(a.shape[1] - 1, 0.2),
                             options=options)
    np.testing.assert_allclose(sol.theta[1] + sol.theta[-1], single.theta[1], rtol=1e-9)


def test_infeasible_start_is_refused(rng):
    c, a, b, q, w0 = _eq1(rng)
    with pytest.raises(FitError, match="infeasible start"):
        minimize_convex(c, a, b, q, -w0)
