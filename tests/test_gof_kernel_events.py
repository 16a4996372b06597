"""The effective number of test events behind each GoF kernel, and the stage's warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from genval import gof
from genval.errors import InputError, WeakKernelWarning
from genval.members import GaussianMembers, log_density_matrix
from genval.pipeline.gof_stage import _warn_weak_kernels
from genval.sampling import sample_mixture
from genval.wifi import fit_weights


def _direct(f: np.ndarray, g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The Kish formula written out in float64, no rescaling."""
    r = g / (f @ w)[:, None]
    return r.sum(0) ** 2 / (r ** 2).sum(0)


def test_matches_the_direct_formula_on_random_inputs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n, m, k = rng.integers(5, 300), rng.integers(1, 6), rng.integers(1, 8)
        f = rng.random((n, m)) + 1e-3
        g = rng.random((n, k)) * rng.lognormal(0, 3, size=(n, 1))
        w = rng.dirichlet(np.ones(m))
        np.testing.assert_allclose(gof.kernel_effective_events(f, g, w), _direct(f, g, w),
                                   rtol=1e-12)


def test_limits_kernel_following_the_model_and_one_dominant_event():
    rng = np.random.default_rng(4)
    f = rng.random((500, 3)) + 0.1
    w = np.array([0.5, 0.3, 0.2])
    follows = (f @ w)[:, None] * np.array([[1.0, 2.0]])  # G_k ∝ f: every event counts
    np.testing.assert_allclose(gof.kernel_effective_events(f, follows, w), 500.0, rtol=1e-12)
    spike = np.full((500, 1), 1e-6)
    spike[17] = 1e6  # one event carries the kernel
    assert gof.kernel_effective_events(f, spike, w)[0] < 1.01
    # huge ranges stay finite (columns are rescaled before squaring)
    assert np.isfinite(gof.kernel_effective_events(f, spike * 1e300, w)).all()


def test_events_with_non_positive_mixture_are_left_out_and_shapes_checked():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = np.ones((3, 1))
    w = np.array([1.5, -0.5])  # mixture 1.5, -0.5, 1.0: the second event is left out
    assert gof.kernel_effective_events(f, g, w)[0] == pytest.approx(
        (1 / 1.5 + 1) ** 2 / (1 / 1.5 ** 2 + 1))
    with pytest.raises(InputError):
        gof.kernel_effective_events(f, g, np.ones(3))
    with pytest.raises(InputError):
        gof.kernel_effective_events(f, np.ones(3), w)


def _prepared(kernel_sigma: float):
    rng = np.random.default_rng(5)
    members = GaussianMembers(np.array([[0.0, 0.0], [0.3, -0.2]]),
                              np.array([[1.0, 1.0], [1.2, 0.8]]))
    truth = np.array([0.6, 0.4])
    x_fit = sample_mixture(members, truth, 3000, rng).x
    fit = fit_weights(log_density_matrix(members, x_fit), log=True)
    x_test = sample_mixture(members, truth, 3000, rng).x
    basis = gof.KernelBasis.from_events(sample_mixture(members, truth, 500, rng).x, 10,
                                        kernel_sigma, seed=1)
    return gof.prepare(members, x_test, basis, 0), fit


def test_the_stage_warns_only_when_kernels_reach_beyond_the_model():
    # Kernels about as wide as the members: every kernel sees hundreds of events.
    prepared, fit = _prepared(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_weak_kernels(prepared, fit, 0)
    # Kernels 5x wider than the members: their Gaussian tails dwarf the model's, a few
    # outlying events decide each amplitude (the toys' null becomes heavy-tailed).
    prepared, fit = _prepared(5.0)
    rows = prepared.test_rows
    assert np.median(gof.kernel_effective_events(rows.f, rows.g, fit.weights)) < 30
    with pytest.warns(WeakKernelWarning, match="few test events"):
        _warn_weak_kernels(prepared, fit, 0)
