"""Calibration of Eq. (5) with toys: one pool from f(x; ŵ), toys as random subsets of it.

Evaluating M density estimators per toy would dominate everything, so one large pool is drawn
from f(x; ŵ) once with the exact signed-mixture sampler (which returns ``log F`` of the pool),
the kernels are evaluated on it once, and each toy is a random subset without replacement
(pool ≫ toy; two toys share on average ``N / pool`` of their events, stated in the result).

Each toy ``i`` draws its size, its subset and its constraint centre from its own stream
``numpy.random.default_rng([seed, TOY_STREAM, i])`` and the pool from ``[seed, POOL_STREAM]``,
so toys can run by index range in separate processes or jobs and be merged
(:func:`~genval.gof.result.merge_results`): the merge equals a single run with the same seed.

Constraint centre (``centre``): "redrawn" draws z₀ ~ N(0, C_r) per toy (a randomised global
observable, the standard LHC frequentist treatment); "fixed" keeps z₀ = 0, i.e. centred at ŵ
(the paper's text). The default is "redrawn", chosen by ``studies/calibration_gof.py``.

References:
    Badaracco et al., Step 4 (calibration paragraph) and Eq. (5).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray
from tqdm.auto import tqdm

from genval._settings import apply_overrides
from genval._validation import as_events
from genval.errors import FitError, InputError, NegativeDensityWarning
from genval.gof._blas import limit_blas_threads
from genval.gof.constraint import Constraint
from genval.gof.kernels import KernelBasis
from genval.gof.result import GoFResult
from genval.gof.statistic import (
    LRStatistic,
    ProfileSettings,
    Variant,
    make_constraint,
    profile_pair,
    statistic_from_rows,
)
from genval.members import Members, log_density_matrix
from genval.row_scaling import ScaledRows, scale_rows
from genval.sampling import sample_mixture

__all__ = ["goodness_of_fit", "GoFSettings", "ToyPool", "draw_pool", "run_toys", "POOL_STREAM",
           "TOY_STREAM"]

POOL_STREAM = 0x706F6F6C  # "pool": separates the pool's RNG stream from the toys'
TOY_STREAM = 0x746F7973  # "toys"
Centre = Literal["redrawn", "fixed"]
ToySize = Literal["fixed", "poisson"]


@dataclass(frozen=True)
class GoFSettings:
    """How :func:`goodness_of_fit` calibrates Eq. (5) with toys.

    Attributes:
        centre: constraint centre in the toys, "redrawn" (z₀ ~ N(0, C_r), default) or "fixed".
        toy_size: "fixed" (N events per toy) or "poisson" (Poisson(N)).
        pool_size: events in the pool (default max(10 N, 20 000)); must be at least 2 N.
        first_toy: index of the first toy; run ranges in separate jobs and merge them with
            :func:`~genval.gof.result.merge_results`.
        target_z: the significance you need to resolve; raises if ``n_toys`` cannot (the
            smallest p-value is 1 / (1 + B)).
        n_jobs: workers fitting toys (-1: one per available core), each with a
            single-threaded BLAS.
        toy_tol: convergence tolerance of the toy fits (each NLL within ``toy_tol`` of its
            minimum, so every toy t within ~4 toy_tol of exact; 1e-8 saves ~15 % of the time).
        cl: level of the Clopper–Pearson interval on p.
        profile: how the observed statistic is profiled (the toys use it with ``toy_tol``);
            its fields (``lam``, ``barrier``, ``tol``, ``max_iter``, ``hessian_dtype``) can be
            overridden by keyword like the fields above.

    Raises:
        InputError: an unknown ``centre`` or ``toy_size``.
    """

    centre: Centre = "redrawn"
    toy_size: ToySize = "fixed"
    pool_size: int | None = None
    first_toy: int = 0
    target_z: float | None = None
    n_jobs: int = -1
    toy_tol: float = 1e-8
    cl: float = 0.6827
    profile: ProfileSettings = field(default_factory=ProfileSettings)

    def __post_init__(self) -> None:
        if self.centre not in ("redrawn", "fixed"):
            raise InputError(f"centre must be 'redrawn' or 'fixed', got {self.centre!r}")
        if self.toy_size not in ("fixed", "poisson"):
            raise InputError(f"toy_size must be 'fixed' or 'poisson', got {self.toy_size!r}")

    @property
    def toy_profile(self) -> ProfileSettings:
        """The profile settings of the toy fits (``tol`` replaced by ``toy_tol``)."""
        return replace(self.profile, tol=self.toy_tol)

    def pool_events(self, n_test: int) -> int:
        """Events in the pool for ``n_test`` test events (default max(10 N, 20 000))."""
        return int(self.pool_size) if self.pool_size is not None else max(10 * n_test, 20_000)


@dataclass(frozen=True)
class ToyPool:
    """Events from f(x; ŵ) with everything a toy fit needs, evaluated once.

    Attributes:
        c: (P,) row-scaled null density at ŵ.
        a: (P, r + K) row-scaled ``[F T | G]`` (whitened weight directions, then kernels).
        rank: r, number of free (whitened) weight directions.
        acceptance: acceptance rate of the signed-mixture sampler.
        n_ref: the last ``n_ref`` rows of ``c`` and ``a`` are the positivity check points
            (kernel centres), appended to every toy.
    """

    c: NDArray[np.float64]
    a: NDArray[np.float64]
    rank: int
    acceptance: float
    n_ref: int = 0

    @property
    def size(self) -> int:
        """Pool events (without the check points)."""
        return int(self.c.size) - self.n_ref


def _check_points(members: Members, constraint: Constraint, basis: KernelBasis
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Rows of the kernel centres where f(x; ŵ) > 0: the alternative's positivity checks."""
    c, a = constraint.project(_check_rows(members, basis))
    ok = c > 0
    return c[ok], a[ok]


def _check_rows(members: Members, basis: KernelBasis) -> ScaledRows:
    """Row-scaled F and G at the kernel centres (the positivity check points)."""
    return scale_rows(log_density_matrix(members, basis.centers), basis.log_pdf(basis.centers),
                      log=True)


def draw_pool(members: Members, constraint: Constraint, basis: KernelBasis, size: int,
              seed: int, *, max_proposals_per_chunk: int = 2_000_000) -> ToyPool:
    """Draw the pool from ``f(x; constraint.weights)`` and evaluate F and G on it once.

    The signed-mixture sampler accepts a fraction ``1 / Σ|ŵ|`` of its proposals (10²–10³
    with near-duplicate members) and bounds its own proposal batches; the pool is drawn in
    chunks of accepted events so that only their reduced rows (``c``, ``a``), not the full
    F and G of the whole pool, are held at once.
    """
    rng = np.random.default_rng([seed, POOL_STREAM])
    sum_abs = max(float(np.abs(constraint.weights).sum()), 1.0)
    chunk = max(1000, int(max_proposals_per_chunk / sum_abs))
    c_parts, a_parts = [], []
    n_acc = n_prop = 0
    for start in range(0, int(size), chunk):
        n = min(chunk, int(size) - start)
        # give up beyond 10x the expected proposals (a mixture negative almost everywhere)
        sample = sample_mixture(members, constraint.weights, n, rng,
                                max_proposals=int(10 * sum_abs * n) + 100_000)
        c, a = constraint.project(scale_rows(sample.log_f, basis.log_pdf(sample.x), log=True))
        c_parts.append(c)
        a_parts.append(a)
        n_acc += sample.n_accepted
        n_prop += sample.n_proposed
    c_ref, a_ref = _check_points(members, constraint, basis)
    return ToyPool(np.concatenate(c_parts + [c_ref]), np.concatenate(a_parts + [a_ref]),
                   constraint.rank, n_acc / max(n_prop, 1), n_ref=c_ref.size)


@dataclass(frozen=True)
class ToyBatch:
    """Statistics of toys ``index`` (internal)."""

    index: NDArray[np.int64]
    t: NDArray[np.float64]
    converged: NDArray[np.bool_]
    size: NDArray[np.int64]


def _one_toy(pool: ToyPool, i: int, seed: int, n_test: int, poisson: bool, centre: str,
             settings: ProfileSettings) -> tuple[float, bool, int]:
    rng = np.random.default_rng([seed, TOY_STREAM, i])
    n = int(rng.poisson(n_test)) if poisson else n_test
    if n > pool.size:
        raise InputError(f"toy {i} needs {n} events but the pool has {pool.size}")
    idx = np.sort(rng.choice(pool.size, size=n, replace=False))  # sorted: cache-friendly gather
    u0 = rng.standard_normal(pool.rank) if centre == "redrawn" else np.zeros(pool.rank)
    if pool.n_ref:
        idx = np.concatenate([idx, np.arange(pool.size, pool.size + pool.n_ref)])
    pair = profile_pair(pool.c[idx], pool.a[idx], pool.rank, u0, n_ref=pool.n_ref,
                        settings=settings)
    return pair.t, pair.converged, n


def _n_jobs(n_jobs: int) -> int:
    if n_jobs == -1:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    if n_jobs < 1:
        raise InputError(f"n_jobs must be >= 1 or -1 (all cores), got {n_jobs}")
    return n_jobs


_FORKED_STATE: tuple[Any, ...] | None = None


def _forked_chunk(chunk: NDArray[np.int64]) -> list[tuple[float, bool, int]]:
    """Fit toys ``chunk`` in a forked worker: the pool is inherited, never pickled."""
    assert _FORKED_STATE is not None
    pool, seed, n_test, poisson, centre, settings = _FORKED_STATE
    with limit_blas_threads(1):
        return [_one_toy(pool, int(i), seed, n_test, poisson, centre, settings) for i in chunk]


def _fork_context() -> multiprocessing.context.BaseContext | None:
    if sys.platform != "linux":  # fork is unsafe on macOS and absent on Windows
        return None
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def run_toys(pool: ToyPool, indices: NDArray[np.int64], *, seed: int, n_test: int,
             poisson: bool = False, centre: Centre = "redrawn", n_jobs: int = -1,
             progress: bool = False, parallel: Literal["processes", "threads"] = "processes",
             settings: ProfileSettings | None = None, **overrides: Any) -> ToyBatch:
    """Fit toys ``indices`` (each on its own RNG stream) and return their statistics.

    ``settings`` (and keyword ``overrides`` of its fields) say how each toy's profiles are
    solved (:class:`~genval.gof.statistic.ProfileSettings`).

    With ``n_jobs > 1`` the toys run in forked worker processes that inherit the pool (one
    toy per core, single-threaded BLAS each; the Python parts of a fit hold the GIL, so
    threads scale only ~1.5x on two cores), or in threads where fork is unavailable or
    ``parallel="threads"``. The toys are identical either way: each has its own RNG stream.
    ``progress`` shows a bar on stderr.
    """
    global _FORKED_STATE
    fit_settings = apply_overrides(settings or ProfileSettings(), overrides, "run_toys")
    jobs = _n_jobs(n_jobs)
    context = _fork_context() if parallel == "processes" else None

    def work(chunk: NDArray[np.int64]) -> list[tuple[float, bool, int]]:
        rows = []
        for i in chunk:
            rows.append(_one_toy(pool, int(i), seed, n_test, poisson, centre, fit_settings))
            bar.update(1)  # tqdm serialises updates from the worker threads
        return rows

    with limit_blas_threads(1), tqdm(total=int(indices.size), desc="toys", unit="toy",
                                     disable=not progress, leave=False) as bar:
        # One toy per core beats threaded BLAS on small GEMMs.
        if jobs > 1 and indices.size > 1 and context is not None:
            chunks = np.array_split(indices, min(indices.size, 16 * jobs))
            _FORKED_STATE = (pool, seed, n_test, poisson, centre, fit_settings)
            try:
                with warnings.catch_warnings():
                    # Python >= 3.12 warns on fork from a threaded process (BLAS threads);
                    # the workers use numpy only, never the parent's thread pools.
                    warnings.filterwarnings("ignore", message=".*fork.*",
                                            category=DeprecationWarning)
                    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as ex:
                        out = []
                        for chunk, part in zip(chunks, ex.map(_forked_chunk, chunks),
                                               strict=True):
                            out += part
                            bar.update(len(chunk))
            finally:
                _FORKED_STATE = None
        elif jobs > 1 and indices.size > 1:
            # numpy releases the GIL in BLAS and the large element-wise operations.
            chunks = np.array_split(indices, min(indices.size, 4 * jobs))
            with ThreadPoolExecutor(max_workers=jobs) as ex:
                out = [row for part in ex.map(work, chunks) for row in part]
        else:
            out = work(indices)
    t, conv, size = (np.array(col) for col in zip(*out, strict=True)) if out else (
        np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
    return ToyBatch(indices.astype(np.int64), t.astype(np.float64), conv.astype(bool),
                    size.astype(np.int64))


def _position_message(x: NDArray[np.float64], density: NDArray[np.float64]) -> str:
    bad = np.flatnonzero(~(density > 0))
    where = "; ".join(f"row {i}: x = {np.array2string(x[i], precision=4)}" for i in bad[:5])
    return (f"the mixture density f(x; ŵ) is <= 0 on {bad.size} of {density.size} test events "
            f"({where}{' ...' if bad.size > 5 else ''}): signed weights make the null no density "
            "there, so Eq. (5) is undefined; refit the weights with such events in range of the "
            "ensemble, or remove them explicitly")


def _check_toy_count(n_toys: int, target_z: float | None) -> None:
    """Raise unless ``n_toys`` can resolve ``target_z`` (the smallest p is 1 / (1 + B))."""
    if n_toys < 1:
        raise InputError(f"n_toys must be >= 1, got {n_toys}")
    if target_z is None:
        return
    p_min = 1.0 / (1.0 + n_toys)
    if p_min > scipy.stats.norm.sf(target_z):
        need = int(np.ceil(1.0 / scipy.stats.norm.sf(target_z))) - 1
        raise InputError(
            f"{n_toys} toys resolve Z up to {scipy.stats.norm.isf(p_min):.2f} "
            f"(smallest p = 1/(1+B) = {p_min:.3g}); target_z = {target_z:g} needs at least "
            f"{need} toys. Run more toys (by ranges, merged), or read the labelled "
            "scaled-chi2 extrapolation z_chi2")


def _validate(members: Members, x_test: ArrayLike, basis: KernelBasis, n_toys: int,
              settings: GoFSettings) -> NDArray[np.float64]:
    """Check the settings against the data; return the test events as an (N, D) array."""
    _check_toy_count(n_toys, settings.target_z)
    if basis.n_features != members.n_features:
        raise InputError(f"basis has {basis.n_features} features, members {members.n_features}")
    x = as_events(x_test, n_features=members.n_features, name="test events")
    size, n_test = settings.pool_events(x.shape[0]), x.shape[0]
    if size < 2 * n_test:
        raise InputError(f"pool_size {size} must be at least 2 x the test size {n_test} "
                         "(toys are subsets of the pool; pool >> toy)")
    return x


def _observed_statistic(members: Members, constraint: Constraint, x: NDArray[np.float64],
                        basis: KernelBasis, variant: str, settings: ProfileSettings
                        ) -> LRStatistic:
    """t on the test events, with the kernel centres as positivity check points."""
    rows = scale_rows(log_density_matrix(members, x), basis.log_pdf(x), log=True)
    density = rows.f @ constraint.weights
    if not np.all(density > 0) and constraint.rank == 0:
        raise FitError(_position_message(x, density))
    if not np.all(density > 0):
        warnings.warn(_position_message(x, density).split(": signed")[0] + ": the null is "
                      "profiled from a feasible φ on Σφ = 1 (max-margin linear program)",
                      NegativeDensityWarning, stacklevel=3)
    with limit_blas_threads(1):
        return statistic_from_rows(rows, constraint, variant, np.zeros(constraint.rank),
                                   ref=_check_rows(members, basis), settings=settings,
                                   warn_negative=False)


def goodness_of_fit(members: Members, fit: Any, x_test: ArrayLike, basis: KernelBasis,
                    n_toys: int = 1000, seed: int = 0, *, variant: Variant = "ensemble",
                    member: int | None = None, settings: GoFSettings | None = None,
                    progress: bool = False, **overrides: Any) -> GoFResult:
    """Calibrated learned likelihood-ratio goodness-of-fit test of Eq. (5).

    Computes t on ``x_test`` and its null distribution from ``n_toys`` toys drawn from
    f(x; ŵ) (parametric bootstrap of the composite null), then p, Z and a scaled-χ² fit.

    Args:
        members: the ensemble members (evaluated on x_test and on the pool only).
        fit: the w_i f_i fit (``.weights``, ``.cov``); may be None for ``variant="single"``.
        x_test: test events (N, D), disjoint from everything used to train the members, fit
            ŵ or place the kernel centres.
        basis: the kernel basis of the alternative.
        n_toys: number of toys B.
        seed: seed of the pool and of every toy stream.
        variant: "ensemble" (with uncertainty), "frozen" (weights at ŵ) or "single".
        member: member index for ``variant="single"`` (its toys come from that member).
        settings: :class:`GoFSettings` (calibration and profile settings; defaults when None).
        progress: show a progress bar of the toys on stderr.
        **overrides: any field of :class:`GoFSettings` (``centre``, ``toy_size``,
            ``pool_size``, ``first_toy``, ``target_z``, ``n_jobs``, ``toy_tol``, ``cl``,
            ``profile``) or of its :class:`~genval.gof.statistic.ProfileSettings` (``lam``,
            ``barrier``, ``tol``, ``max_iter``, ``hessian_dtype``), replacing the one in
            ``settings``.

    Returns:
        :class:`~genval.gof.result.GoFResult`.

    Raises:
        InputError: bad input (non-finite events, shapes, settings), too few toys for
            ``target_z``.
        FitError: f(x; ŵ) ≤ 0 at some test events (the message lists where) and no weights
            near ŵ fix it (always so for the frozen and single variants).
        TypeError: an override that names no setting (the message lists the valid ones).

    Warns:
        NegativeDensityWarning: f(x; ŵ) ≤ 0 at some test events (listed) but other weights
            on Σφ = 1 make the density positive: t is still defined (and typically large).

    References:
        Badaracco et al., Eq. (5) and the calibration paragraph of Step 4.
    """
    t_start = time.perf_counter()
    cfg = apply_overrides(settings or GoFSettings(), overrides, "goodness_of_fit")
    x = _validate(members, x_test, basis, n_toys, cfg)
    n_test = x.shape[0]
    constraint = make_constraint(fit, members.n_members, variant, member)
    observed = _observed_statistic(members, constraint, x, basis, variant, cfg.profile)
    t_obs_done = time.perf_counter()

    size = cfg.pool_events(n_test)
    pool = draw_pool(members, constraint, basis, size, seed)
    pool_done = time.perf_counter()

    indices = np.arange(cfg.first_toy, cfg.first_toy + n_toys, dtype=np.int64)
    batch = run_toys(pool, indices, seed=seed, n_test=n_test, poisson=cfg.toy_size == "poisson",
                     centre=cfg.centre, n_jobs=cfg.n_jobs, progress=progress,
                     settings=cfg.toy_profile)
    end = time.perf_counter()
    return GoFResult(
        t_obs=float(observed), t_null=batch.t, toy_index=batch.index,
        toy_converged=batch.converged, toy_size=batch.size, observed=observed,
        variant=variant, centre=cfg.centre, seed=int(seed), pool_size=size, n_test=n_test,
        n_kernels=basis.n_kernels, poisson=cfg.toy_size == "poisson",
        timings={"observed": t_obs_done - t_start, "pool": pool_done - t_obs_done,
                 "toys": end - pool_done, "total": end - t_start}, cl=cfg.cl)
