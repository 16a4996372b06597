"""Calibration of Eq. (5) with toys: independent pools from f(x; ŵ), toys as subsets of them.

Evaluating M density estimators per toy would dominate everything, so ``n_pools`` pools are
drawn from f(x; ŵ) with the exact signed-mixture sampler (which returns ``log F`` of each pool),
the kernels are evaluated on them once, and each toy is a random subset of one pool without
replacement (pool ≫ toy; two toys of a pool share on average ``N / pool`` of their events).

A pool is a finite sample of f: its own fluctuation shifts the null of every toy drawn from it.
Toy ``i`` uses pool ``i mod n_pools``; the spread of the tail fraction between the pools
measures that share of the p-value's error, which :class:`~genval.gof.result.GoFResult` adds to
the Clopper–Pearson interval (``p_interval_total``; docs/method.md gives the evidence).

Each toy ``i`` draws its size, its subset and its constraint centre from its own stream
``numpy.random.default_rng([seed, TOY_STREAM, i])``; pool ``j`` comes from
``[seed, POOL_STREAM, j]`` (pool 0 from ``[seed, POOL_STREAM]``, as when there was one pool),
so toys can run by index range in separate processes or jobs and be merged
(:func:`~genval.gof.result.merge_results`): the merge equals a single run with the same seed.

The frozen and ensemble variants share their null's pools (both draw from f(x; ŵ)):
:func:`prepare` evaluates the test events and the pools once (row-scaled ``F`` and ``G``), and
each variant projects them onto its own constraint.

Constraint centre (``centre``): "redrawn" draws z₀ ~ N(0, C_r) per toy (a randomised global
observable, the standard LHC frequentist treatment); "fixed" keeps z₀ = 0, i.e. centred at ŵ
(the paper's text). The default is "redrawn", chosen by ``studies/calibration_gof.py``.

References:
    Badaracco et al., Step 4 (calibration paragraph) and Eq. (5).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
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
from genval._validation import as_event_weights, as_events
from genval.compute import (
    Executor,
    SchedulerLike,
    available_cores,
    can_fork_workers,
    open_executor,
)
from genval.errors import FitError, InputError, NegativeDensityWarning
from genval.gof._blas import limit_blas_threads
from genval.gof.constraint import Constraint
from genval.gof.kernels import KernelBasis
from genval.gof.result import MAX_FAILED_FRACTION, TOY_OK, GoFResult
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

__all__ = ["goodness_of_fit", "observed_statistic", "prepare", "PreparedGoF", "GoFSettings",
           "ToyPool", "PoolRows", "draw_pool", "draw_pool_rows", "run_toys", "pool_rng",
           "POOL_STREAM", "TOY_STREAM", "MIN_POOL_RATIO", "require_unweighted"]

POOL_STREAM = 0x706F6F6C  # "pool": separates the pools' RNG streams from the toys'
TOY_STREAM = 0x746F7973  # "toys"
#: Smallest pool, in test sizes N: toys share N / pool of their events, and below a few N the
#: pool's own fluctuation grows fast (measured in docs/method.md).
MIN_POOL_RATIO = 5
Centre = Literal["redrawn", "fixed"]
ToySize = Literal["fixed", "poisson"]


@dataclass(frozen=True)
class GoFSettings:
    """How :func:`goodness_of_fit` calibrates Eq. (5) with toys.

    Attributes:
        centre: constraint centre in the toys, "redrawn" (z₀ ~ N(0, C_r), default) or "fixed".
        toy_size: "fixed" (N events per toy) or "poisson" (Poisson(N)).
        n_pools: independent pools from f(x; ŵ); toy ``i`` is a subset of pool
            ``i mod n_pools``. With two or more, the spread between the pools measures their
            share of the p-value's error (``GoFResult.p_interval_total``).
        pool_size: events per pool (default max(5 N, 10 000)); at least ``MIN_POOL_RATIO``
            (5) x N.
        first_toy: index of the first toy; run ranges in separate jobs and merge them with
            :func:`~genval.gof.result.merge_results`.
        target_z: the significance you need to resolve; raises if ``n_toys`` cannot (the
            smallest p-value is 1 / (1 + B)).
        n_jobs: workers fitting toys (-1: one per available core), each with a
            single-threaded BLAS.
        toy_tol: convergence tolerance of the toy fits (each NLL within ``toy_tol`` of its
            minimum, so every toy t within ~4 toy_tol of exact; 1e-8 saves ~15 % of the time).
        cl: level of the Clopper–Pearson interval on p.
        max_negative_mass: largest negative mass of f(x; ŵ) (the fraction of ∫|f| where
            f < 0, measured by the sampler on each pool) for which the toys, drawn from
            max(f, 0) / ∫max(f, 0), are accepted as its null; above it :class:`FitError`
            (config key ``gof.max_negative_mass``).
        max_failed_fraction: largest fraction of toys that may fail (a fit stopped before
            its tolerance, t not finite, an error; each recorded with its reason) for p and
            Z to be quoted: they are left out of p, and ``GoFResult.p_bounds`` counts them
            below and above t_obs. Above it the result is a failure (``GoFResult.failure``;
            config key ``gof.max_failed_fraction``).
        profile: how the observed statistic is profiled (the toys use it with ``toy_tol``);
            its fields (``lam``, ``barrier``, ``tol``, ``max_iter``, ``hessian_dtype``,
            ``subsample_rows``) can be overridden by keyword like the fields above.

    Raises:
        InputError: an unknown ``centre`` or ``toy_size``, ``n_pools < 1``, a negative
            ``max_negative_mass`` or a ``max_failed_fraction`` outside [0, 1].
    """

    centre: Centre = "redrawn"
    toy_size: ToySize = "fixed"
    n_pools: int = 4
    pool_size: int | None = None
    first_toy: int = 0
    target_z: float | None = None
    n_jobs: int = -1
    toy_tol: float = 1e-8
    cl: float = 0.6827
    max_negative_mass: float = 1e-3
    max_failed_fraction: float = MAX_FAILED_FRACTION
    profile: ProfileSettings = field(default_factory=ProfileSettings)

    def __post_init__(self) -> None:
        if self.centre not in ("redrawn", "fixed"):
            raise InputError(f"centre must be 'redrawn' or 'fixed', got {self.centre!r}")
        if self.toy_size not in ("fixed", "poisson"):
            raise InputError(f"toy_size must be 'fixed' or 'poisson', got {self.toy_size!r}")
        if int(self.n_pools) < 1:
            raise InputError(f"n_pools must be >= 1, got {self.n_pools}")
        if not self.max_negative_mass >= 0:
            raise InputError(f"max_negative_mass must be >= 0, got {self.max_negative_mass}")
        if not 0 <= self.max_failed_fraction <= 1:
            raise InputError(f"max_failed_fraction must be in [0, 1], got "
                             f"{self.max_failed_fraction}")

    @property
    def toy_profile(self) -> ProfileSettings:
        """The profile settings of the toy fits (``tol`` replaced by ``toy_tol``)."""
        return replace(self.profile, tol=self.toy_tol)

    def pool_events(self, n_test: int) -> int:
        """Events per pool for ``n_test`` test events (default max(5 N, 10 000))."""
        return int(self.pool_size) if self.pool_size is not None else max(
            MIN_POOL_RATIO * n_test, 10_000)


@dataclass(frozen=True)
class PoolRows:
    """One pool drawn from ``Σ w_k f_k``, evaluated once: what every variant projects.

    Attributes:
        rows: row-scaled member and kernel densities of the pool's events.
        acceptance: acceptance rate of the signed-mixture sampler.
        negative_mass: fraction of ∫|f| where f < 0 as the sampler measured it (0 when the
            sampler does not report it); the pool is then drawn from max(f, 0) / ∫max(f, 0).
        negative_mass_error: its statistical error.
        index: the pool's index j (toys ``i`` with ``i mod n_pools == j`` use it).
    """

    rows: ScaledRows
    acceptance: float
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0
    index: int = 0


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
        negative_mass: fraction of ∫|f| where f(x; ŵ) < 0, measured while drawing the pool:
            when positive, the toys calibrate the null max(f, 0) / ∫max(f, 0).
        negative_mass_error: its statistical error.
        index: the pool's index j.
    """

    c: NDArray[np.float64]
    a: NDArray[np.float64]
    rank: int
    acceptance: float
    n_ref: int = 0
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0
    index: int = 0

    @property
    def size(self) -> int:
        """Pool events (without the check points)."""
        return int(self.c.size) - self.n_ref


def _check_rows(members: Members, basis: KernelBasis) -> ScaledRows:
    """Row-scaled F and G at the kernel centres (the positivity check points)."""
    return scale_rows(log_density_matrix(members, basis.centers), basis.log_pdf(basis.centers),
                      log=True)


def pool_rng(seed: int, pool: int) -> np.random.Generator:
    """The RNG stream of pool ``pool`` (pool 0: ``[seed, POOL_STREAM]``, as with one pool)."""
    key = [seed, POOL_STREAM] if pool == 0 else [seed, POOL_STREAM, pool]
    return np.random.default_rng(key)


def draw_pool_rows(members: Members, weights: ArrayLike, basis: KernelBasis, size: int,
                   seed: int, *, pool: int = 0, max_values_per_chunk: int = 2**23
                   ) -> PoolRows:
    """Draw pool ``pool`` from ``Σ w_k f_k`` and evaluate row-scaled F and G on it once.

    The pool is drawn in chunks of at most ``max_values_per_chunk`` row-scaled values
    (64 MiB), so that only the accepted events' F and G rows are held, never the proposals'.
    The sampler's cost per event does not depend on Σ|ŵ| (:mod:`genval.sampling`), so neither
    does the chunking: every chunk after the first continues with the envelope constant of the
    one before instead of paying a new pilot. The negative mass is averaged over the chunks,
    weighted by their proposals, and warned about once for the whole pool.
    """
    w = np.asarray(weights, dtype=np.float64)
    rng = pool_rng(seed, pool)
    sum_abs = max(float(np.abs(w).sum()), 1.0)
    chunk = max(1000, max_values_per_chunk // (members.n_members + basis.n_kernels))
    parts: list[ScaledRows] = []
    n_acc = n_prop = 0
    neg = neg_var = 0.0
    envelope: float | None = None
    for start in range(0, int(size), chunk):
        n = min(chunk, int(size) - start)
        # give up beyond 10x the |w|-envelope's proposals (a mixture negative almost everywhere)
        sample = sample_mixture(members, w, n, rng, envelope=envelope, warn=False,
                                max_proposals=int(10 * sum_abs * n) + 100_000)
        envelope = sample.envelope
        parts.append(scale_rows(sample.log_f, basis.log_pdf(sample.x), log=True))
        n_acc += sample.n_accepted
        n_prop += sample.n_proposed
        neg += sample.n_proposed * sample.negative_mass
        neg_var += (sample.n_proposed * sample.negative_mass_error) ** 2
    rows = parts[0] if len(parts) == 1 else ScaledRows(
        np.concatenate([r.f for r in parts]), np.concatenate([r.g for r in parts]),
        np.concatenate([r.log_s for r in parts]))
    total = max(n_prop, 1)
    negative_mass, negative_mass_error = neg / total, float(np.sqrt(neg_var)) / total
    if negative_mass > 0:
        warnings.warn(f"the mixture f(x; ŵ) is negative on a fraction {negative_mass:.3g} ± "
                      f"{negative_mass_error:.2g} of ∫|f| (toy pool {pool}, {n_prop} "
                      "proposals); the toys there follow max(f, 0)", NegativeDensityWarning,
                      stacklevel=2)
    return PoolRows(rows, n_acc / total, negative_mass, negative_mass_error, pool)


def project_pool(pool: PoolRows, constraint: Constraint, check: ScaledRows) -> ToyPool:
    """The toys' form of a pool for one variant: ``c + A θ`` rows, then the check points
    (:meth:`Constraint.project_checks`, as for the observed statistic)."""
    c, a = constraint.project(pool.rows)
    c_ref, a_ref = constraint.project_checks(check)
    return ToyPool(np.concatenate([c, c_ref]), np.concatenate([a, a_ref]),
                   constraint.rank, pool.acceptance, n_ref=c_ref.size,
                   negative_mass=pool.negative_mass,
                   negative_mass_error=pool.negative_mass_error, index=pool.index)


def draw_pool(members: Members, constraint: Constraint, basis: KernelBasis, size: int,
              seed: int, *, pool: int = 0) -> ToyPool:
    """Draw pool ``pool`` from ``f(x; constraint.weights)`` and evaluate F and G on it once
    (:func:`draw_pool_rows`), in the toys' form for this constraint."""
    rows = draw_pool_rows(members, constraint.weights, basis, size, seed, pool=pool)
    return project_pool(rows, constraint, _check_rows(members, basis))


@dataclass(frozen=True)
class ToyBatch:
    """Statistics of toys ``index`` (internal); ``status`` is "ok" or why the toy failed."""

    index: NDArray[np.int64]
    t: NDArray[np.float64]
    converged: NDArray[np.bool_]
    size: NDArray[np.int64]
    status: tuple[str, ...]


ToyRow = tuple[float, bool, int, str]


def _one_toy(pool: ToyPool, i: int, seed: int, n_test: int, poisson: bool, centre: str,
             settings: ProfileSettings) -> ToyRow:
    """t of toy ``i``, whether it converged, its size, and "ok" or why it failed."""
    rng = np.random.default_rng([seed, TOY_STREAM, i])
    n = int(rng.poisson(n_test)) if poisson else n_test
    if n > pool.size:
        raise InputError(f"toy {i} needs {n} events but the pool has {pool.size}")
    idx = np.sort(rng.choice(pool.size, size=n, replace=False))  # sorted: cache-friendly gather
    u0 = rng.standard_normal(pool.rank) if centre == "redrawn" else np.zeros(pool.rank)
    if pool.n_ref:
        idx = np.concatenate([idx, np.arange(pool.size, pool.size + pool.n_ref)])
    try:
        pair = profile_pair(pool.c[idx], pool.a[idx], pool.rank, u0, n_ref=pool.n_ref,
                            settings=settings)
    except (FitError, np.linalg.LinAlgError) as exc:
        # One toy that cannot be fitted is a failed toy (recorded, counted against
        # max_failed_fraction), not the end of the calibration.
        return float("nan"), False, n, f"error: {type(exc).__name__}: {exc}"
    return pair.t, pair.converged, n, pair.failure or TOY_OK


def _n_jobs(n_jobs: int) -> int:
    if n_jobs == -1:
        # the cores this process gets (a Dask worker's threads, a cgroup quota), never more
        return available_cores()
    if n_jobs < 1:
        raise InputError(f"n_jobs must be >= 1 or -1 (all cores), got {n_jobs}")
    return n_jobs


_FORKED_STATE: tuple[Any, ...] | None = None


def _forked_chunk(chunk: NDArray[np.int64]) -> list[ToyRow]:
    """Fit toys ``chunk`` in a forked worker: the pool is inherited, never pickled."""
    assert _FORKED_STATE is not None
    pool, seed, n_test, poisson, centre, settings = _FORKED_STATE
    with limit_blas_threads(1):
        return [_one_toy(pool, int(i), seed, n_test, poisson, centre, settings) for i in chunk]


def _fork_context() -> multiprocessing.context.BaseContext | None:
    if sys.platform != "linux":  # fork is unsafe on macOS and absent on Windows
        return None
    if not can_fork_workers():  # a Dask worker (a daemon process) may not have children
        return None
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def run_toys(pool: ToyPool, indices: NDArray[np.int64], *, seed: int, n_test: int,
             poisson: bool = False, centre: Centre = "redrawn", n_jobs: int = -1,
             progress: bool = False, parallel: Literal["processes", "threads"] = "processes",
             settings: ProfileSettings | None = None, bar: Any = None,
             **overrides: Any) -> ToyBatch:
    """Fit toys ``indices`` (each on its own RNG stream) and return their statistics.

    ``settings`` (and keyword ``overrides`` of its fields) say how each toy's profiles are
    solved (:class:`~genval.gof.statistic.ProfileSettings`).

    With ``n_jobs > 1`` the toys run in forked worker processes that inherit the pool (one
    toy per core, single-threaded BLAS each; the Python parts of a fit hold the GIL, so
    threads scale only ~1.5x on two cores), or in threads where fork is unavailable or
    ``parallel="threads"``. The toys are identical either way: each has its own RNG stream.
    ``progress`` shows a bar on stderr; ``bar``, a tqdm bar the caller owns, is advanced
    instead (one bar over several pools).
    """
    global _FORKED_STATE
    fit_settings = apply_overrides(settings or ProfileSettings(), overrides, "run_toys")
    jobs = _n_jobs(n_jobs)
    context = _fork_context() if parallel == "processes" else None

    def work(chunk: NDArray[np.int64]) -> list[ToyRow]:
        rows = []
        for i in chunk:
            rows.append(_one_toy(pool, int(i), seed, n_test, poisson, centre, fit_settings))
            bar.update(1)  # tqdm serialises updates from the worker threads
        return rows

    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=int(indices.size), desc="toys", unit="toy", disable=not progress,
                   leave=False)
    with limit_blas_threads(1), bar if own_bar else contextlib.nullcontext():
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
    t = np.array([row[0] for row in out], dtype=np.float64)
    conv = np.array([row[1] for row in out], dtype=bool)
    size = np.array([row[2] for row in out], dtype=np.int64)
    return ToyBatch(indices.astype(np.int64), t, conv, size, tuple(row[3] for row in out))


def _position_message(x: NDArray[np.float64], density: NDArray[np.float64]) -> str:
    bad = np.flatnonzero(~(density > 0))
    where = "; ".join(f"row {i}: x = {np.array2string(x[i], precision=4, max_line_width=10**6)}"
                      for i in bad[:5])
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


def _check_pool_size(size: int, n_test: int) -> None:
    if size < MIN_POOL_RATIO * n_test:
        raise InputError(f"pool_size {size} must be at least {MIN_POOL_RATIO} x the test size "
                         f"{n_test} (toys are subsets of a pool, and a small pool's own "
                         "fluctuation shifts their whole null; docs/method.md)")


class PreparedGoF:
    """The test events and the toy pools of one test, evaluated once for every variant.

    The frozen and ensemble variants calibrate the same null sample, toys from f(x; ŵ): their
    pools are drawn (and F, G evaluated on them) once and projected onto each variant's
    constraint; ``log F`` of the test events and of the kernel centres is evaluated once too.
    Pools are drawn on first use; with ``keep_pools`` they are kept for the next variant
    (memory: ``n_pools · pool_size · (M + K)`` floats; :meth:`clear` frees them).

    Build it with :func:`prepare` and pass it to :func:`goodness_of_fit` (``prepared=``).

    Attributes:
        x: (N, D) test events.
        seed: seed of the pools (and of the toys of every variant run on it).
        n_pools, pool_size: pools and events per pool.
        test_rows: row-scaled F and G at the test events.
        check_rows: row-scaled F and G at the kernel centres (positivity check points).
        keep_pools: keep drawn pools for the next variant.
        seconds: time spent evaluating the test events and drawing pools.
    """

    def __init__(self, members: Members, x: NDArray[np.float64], basis: KernelBasis, *,
                 seed: int, n_pools: int, pool_size: int, keep_pools: bool = True) -> None:
        start = time.perf_counter()
        self.members, self.basis, self.x = members, basis, x
        self.seed, self.n_pools, self.pool_size = int(seed), int(n_pools), int(pool_size)
        self.keep_pools = keep_pools
        self.test_rows = scale_rows(log_density_matrix(members, x), basis.log_pdf(x), log=True)
        self.check_rows = _check_rows(members, basis)
        self._pools: dict[tuple[bytes, int], PoolRows] = {}
        self.seconds = time.perf_counter() - start

    def pool_rows(self, weights: NDArray[np.float64], pool: int) -> PoolRows:
        """Pool ``pool`` from ``Σ weights_k f_k`` (drawn once per weights while kept)."""
        key = self._pool_key(weights, pool)
        if key in self._pools:
            return self._pools[key]
        start = time.perf_counter()
        rows = draw_pool_rows(self.members, weights, self.basis, self.pool_size, self.seed,
                              pool=int(pool))
        self.seconds += time.perf_counter() - start
        if self.keep_pools:
            self._pools[key] = rows
        return rows

    def has_pool(self, weights: NDArray[np.float64], pool: int) -> bool:
        """Whether pool ``pool`` of these weights is kept (drawn already)."""
        return self._pool_key(weights, pool) in self._pools

    def keep_pool(self, weights: NDArray[np.float64], pool: int, rows: PoolRows | None,
                  seconds: float) -> None:
        """Count pool ``pool`` drawn elsewhere (a forked worker) and the seconds it took, and
        keep its rows (when given and pools are kept)."""
        self.seconds += seconds
        if self.keep_pools and rows is not None:
            self._pools[self._pool_key(weights, pool)] = rows

    @staticmethod
    def _pool_key(weights: NDArray[np.float64], pool: int) -> tuple[bytes, int]:
        return np.asarray(weights, dtype=np.float64).tobytes(), int(pool)

    def clear(self) -> None:
        """Free the kept pools."""
        self._pools.clear()

    def check(self, members: Members, x_test: ArrayLike, basis: KernelBasis, seed: int,
              cfg: GoFSettings) -> None:
        """Raise :class:`InputError` unless this preparation is that of these inputs."""
        if members is not self.members or basis is not self.basis:
            raise InputError("prepared GoF was built for other members or another kernel basis")
        x = as_events(x_test, n_features=members.n_features, name="test events")
        if x.shape != self.x.shape or not np.array_equal(x, self.x):
            raise InputError("prepared GoF was built for other test events")
        wanted = (int(seed), int(cfg.n_pools), cfg.pool_events(x.shape[0]))
        have = (self.seed, self.n_pools, self.pool_size)
        if wanted != have:
            raise InputError(f"prepared GoF has (seed, n_pools, pool_size) = {have}, the call "
                             f"asks for {wanted}")


def require_unweighted(event_weights: ArrayLike | None, n_events: int, *,
                       name: str = "test events") -> None:
    """Refuse weighted test events: the calibration of Eq. (5) holds for unweighted ones only.

    Weights that are all equal (or None) are unweighted events and pass. The toys that
    calibrate t are unweighted draws from f(x; ŵ), and the statistic's null distribution
    assumes each test event is one Poisson (multinomial) count of the density being tested;
    a t built from weighted events (``−Σ s_n log f``) has a different null distribution (its
    spread grows with ``Σs² / Σs``, and negative weights break the likelihood-ratio form), so
    comparing it with unweighted toys gives a wrong p-value.

    Raises:
        InputError: the weights are not all equal (or are malformed), naming how many differ.
    """
    if event_weights is None:
        return
    s = as_event_weights(event_weights, n_events, name=f"weights of the {name}",
                         positive_total=False)
    if s.size and np.any(s != s[0]):
        raise InputError(
            f"the {name} are weighted ({np.unique(s).size} distinct weight values in "
            f"[{s.min():.4g}, {s.max():.4g}]): the goodness-of-"
            "fit test needs unweighted events. Its toys are unweighted draws from f(x; ŵ) and "
            "the calibration of t assumes each test event is one Poisson/multinomial count; a "
            "weighted t has another null distribution, so its p-value would be wrong. Test "
            "on unweighted events (e.g. data, or unweighted Monte Carlo)")


def prepare(members: Members, x_test: ArrayLike, basis: KernelBasis, seed: int = 0, *,
            settings: GoFSettings | None = None, keep_pools: bool = True,
            **overrides: Any) -> PreparedGoF:
    """Evaluate the test events once and get the pools ready for several variants.

    Args:
        members, x_test, basis, seed: as for :func:`goodness_of_fit` (the same seed there).
        settings: :class:`GoFSettings`; only ``n_pools`` and ``pool_size`` matter here.
        keep_pools: keep each pool once drawn (for the next variant).
        **overrides: fields of :class:`GoFSettings`.

    Example::

        prep = gof.prepare(members, x_test, basis, seed=1)
        for variant in ("frozen", "ensemble"):
            res = gof.goodness_of_fit(members, fit, x_test, basis, seed=1, variant=variant,
                                      prepared=prep)
    """
    cfg = apply_overrides(settings or GoFSettings(), overrides, "prepare")
    if basis.n_features != members.n_features:
        raise InputError(f"basis has {basis.n_features} features, members {members.n_features}")
    x = as_events(x_test, n_features=members.n_features, name="test events")
    size = cfg.pool_events(x.shape[0])
    _check_pool_size(size, x.shape[0])
    return PreparedGoF(members, x, basis, seed=seed, n_pools=cfg.n_pools, pool_size=size,
                       keep_pools=keep_pools)


def _observed_statistic(prepared: PreparedGoF, constraint: Constraint, variant: str,
                        settings: ProfileSettings) -> LRStatistic:
    """t on the test events, with the kernel centres as positivity check points."""
    rows, x = prepared.test_rows, prepared.x
    density = rows.f @ constraint.weights
    if not np.all(density > 0) and constraint.rank == 0:
        raise FitError(_position_message(x, density))
    if not np.all(density > 0):
        warnings.warn(_position_message(x, density).split(": signed")[0] + ": the null is "
                      "profiled from a feasible φ on Σφ = 1 (max-margin linear program)",
                      NegativeDensityWarning, stacklevel=3)
    with limit_blas_threads(1):
        return statistic_from_rows(rows, constraint, variant, np.zeros(constraint.rank),
                                   ref=prepared.check_rows, settings=settings,
                                   warn_negative=False)


def _check_negative_mass(pool: PoolRows, limit: float) -> None:
    """Refuse a null whose toys (from max(f, 0)) would misrepresent f beyond ``limit``."""
    if pool.negative_mass > limit:
        raise FitError(
            f"f(x; ŵ) has negative mass {pool.negative_mass:.3g} ± "
            f"{pool.negative_mass_error:.2g} (the fraction of ∫|f| where f < 0, measured while "
            f"drawing toy pool {pool.index}), above max_negative_mass = {limit:g}: the toys "
            "would calibrate the null max(f, 0) / ∫max(f, 0), not f(x; ŵ). Refit the weights "
            "(e.g. fewer near-duplicate members), or accept that null by raising the limit "
            "(GoFSettings.max_negative_mass, config key gof.max_negative_mass)")


@dataclass
class _ToyTable:
    """The toys of one call, filled pool by pool (internal)."""

    index: NDArray[np.int64]
    n_pools: int
    t: NDArray[np.float64] = field(init=False)
    converged: NDArray[np.bool_] = field(init=False)
    size: NDArray[np.int64] = field(init=False)
    status: list[str] = field(init=False)
    negative_mass: NDArray[np.float64] = field(init=False)
    negative_mass_error: NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        self.t = np.zeros(self.index.size)
        self.converged = np.zeros(self.index.size, dtype=bool)
        self.size = np.zeros(self.index.size, dtype=np.int64)
        self.status = [""] * self.index.size
        self.negative_mass = np.full(self.n_pools, np.nan)
        self.negative_mass_error = np.full(self.n_pools, np.nan)

    def fill(self, sel: NDArray[np.bool_], batch: ToyBatch) -> None:
        """The toys ``batch`` into the rows ``sel``."""
        self.t[sel], self.converged[sel], self.size[sel] = batch.t, batch.converged, batch.size
        for position, status in zip(np.flatnonzero(sel), batch.status, strict=True):
            self.status[position] = status


def _run_pools(prepared: PreparedGoF, constraint: Constraint, indices: NDArray[np.int64],
               cfg: GoFSettings, progress: bool) -> tuple[_ToyTable, float, float]:
    """Toy ``i`` on pool ``i mod n_pools``; returns the toys, pool seconds and toy seconds.

    With at least as many pools as workers (the default: 4 pools, 2 cores), each forked worker
    draws whole pools and fits their toys (:func:`_run_pools_forked`): drawing a pool evaluates
    every member on its proposals, single-threaded for most members, and would otherwise leave
    the other cores idle for that long. Fewer pools than workers: each pool is drawn here and
    its toys are spread over the workers.
    """
    table = _ToyTable(indices, prepared.n_pools)
    which = indices % prepared.n_pools
    pools = np.unique(which)
    jobs = _n_jobs(cfg.n_jobs)
    context = _pool_worker_context() if jobs > 1 and pools.size >= jobs else None
    if context is not None:
        return _run_pools_forked(prepared, constraint, indices, which, cfg, progress, jobs,
                                 context, table)
    pool_s = toy_s = 0.0
    with tqdm(total=int(indices.size), desc="toys", unit="toy", disable=not progress,
              leave=False) as bar:
        for j in pools:
            pool_s, toy_s = _run_pool(prepared, constraint, indices, which, int(j), cfg, bar,
                                      table, pool_s, toy_s)
    return table, pool_s, toy_s


def _pool_worker_context() -> multiprocessing.context.BaseContext | None:
    """The fork context when forked workers may evaluate the members (draw pools): fork is
    available, and no CUDA context exists (a forked child cannot use its parent's)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return None
    return _fork_context()


class _SharedCounter:
    """A tqdm-like ``update`` that adds to a counter shared with the parent (forked workers)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def update(self, n: int = 1) -> None:
        with self.value.get_lock():
            self.value.value += n


#: What a forked pool worker needs, inherited (never pickled): the prepared test, the
#: constraint, the toy indices and their pools, the settings and the shared toy counter.
_FORKED_POOLS: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class _PoolOutcome:
    """What a forked worker sends back for pool ``index`` (internal)."""

    index: int
    warnings: list[tuple[type[Warning], str]]
    error: Exception | None = None  # raised in the parent, after the warnings
    toys: ToyBatch | None = None
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0
    pool_seconds: float = 0.0
    drawn: bool = False  # drawn in the worker (the parent did not have it)
    rows: PoolRows | None = None  # only when drawn and the parent keeps pools


def _forked_pool(j: int) -> _PoolOutcome:
    """Draw pool ``j`` in a forked worker and fit its toys there, on one thread.

    The warnings raised go back with the result or the error (a worker's warnings would
    otherwise never reach the user), and so do the pool's rows when the parent keeps pools for
    the next variant.
    """
    assert _FORKED_POOLS is not None
    prepared, constraint, indices, which, cfg, counter = _FORKED_POOLS
    torch = sys.modules.get("torch")
    if torch is not None:
        # Torch's OpenMP threads do not survive fork: a child that uses its parent's
        # intra-op pool hangs (measured). One thread per worker is what the toys use anyway.
        torch.set_num_threads(1)
    had = prepared.has_pool(constraint.weights, j)
    with warnings.catch_warnings(record=True) as caught, limit_blas_threads(1):
        warnings.simplefilter("always")
        try:
            start = time.perf_counter()
            rows = prepared.pool_rows(constraint.weights, j)
            _check_negative_mass(rows, cfg.max_negative_mass)
            pool = project_pool(rows, constraint, prepared.check_rows)
            pool_seconds = time.perf_counter() - start
            batch = run_toys(pool, indices[which == j], seed=prepared.seed,
                             n_test=prepared.x.shape[0], poisson=cfg.toy_size == "poisson",
                             centre=cfg.centre, n_jobs=1, settings=cfg.toy_profile,
                             bar=_SharedCounter(counter))
        except Exception as exc:  # noqa: BLE001 -- raised in the parent
            return _PoolOutcome(j, [(w.category, str(w.message)) for w in caught], exc)
    return _PoolOutcome(j, [(w.category, str(w.message)) for w in caught], None, batch,
                        rows.negative_mass, rows.negative_mass_error, pool_seconds, not had,
                        rows if prepared.keep_pools and not had else None)


def _run_pools_forked(prepared: PreparedGoF, constraint: Constraint,
                      indices: NDArray[np.int64], which: NDArray[np.int64], cfg: GoFSettings,
                      progress: bool, jobs: int, context: multiprocessing.context.BaseContext,
                      table: _ToyTable) -> tuple[_ToyTable, float, float]:
    """:func:`_run_pools` with each forked worker drawing whole pools and fitting their toys:
    the same toys (every pool and every toy has its own stream), bit for bit where the members'
    log-densities do not depend on the thread count: torch members run on one thread in the
    workers and may use several in the calling process, which can move float32 log-densities in
    their last bits (on the multijet example the toys' t agree with the earlier path to ~1e-9
    relative; t_obs, p and Z are unchanged). Seconds: the
    workers' time drawing pools divided by the workers, the rest of the wall time as toys."""
    global _FORKED_POOLS
    counter = context.Value("q", 0)
    start = time.perf_counter()
    pool_work = 0.0
    _FORKED_POOLS = (prepared, constraint, indices, which, cfg, counter)
    try:
        with tqdm(total=int(indices.size), desc="toys", unit="toy", disable=not progress,
                  leave=False) as bar, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as ex:
                # Outcomes are taken in pool order, as in one process: the same warnings in
                # the same order, and the first failing pool's error.
                futures = [ex.submit(_forked_pool, int(j)) for j in np.unique(which)]
                try:
                    for future in futures:
                        while not future.done():
                            concurrent.futures.wait([future], timeout=0.25)
                            bar.update(counter.value - bar.n)
                        pool_work += _take_outcome(future.result(), prepared, constraint,
                                                   which, table)
                    bar.update(counter.value - bar.n)
                except BaseException:
                    ex.shutdown(wait=False, cancel_futures=True)  # no more pools for nothing
                    raise
    finally:
        _FORKED_POOLS = None
    pool_s = pool_work / jobs
    return table, pool_s, time.perf_counter() - start - pool_s


def _take_outcome(outcome: _PoolOutcome, prepared: PreparedGoF, constraint: Constraint,
                  which: NDArray[np.int64], table: _ToyTable) -> float:
    """One forked pool's toys into ``table``, its warnings raised here; returns its seconds."""
    for category, message in outcome.warnings:
        warnings.warn(message, category, stacklevel=5)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.toys is not None
    j = outcome.index
    if outcome.drawn:
        prepared.keep_pool(constraint.weights, j, outcome.rows, outcome.pool_seconds)
    sel = which == j
    batch = outcome.toys
    table.fill(sel, batch)
    table.negative_mass[j] = outcome.negative_mass
    table.negative_mass_error[j] = outcome.negative_mass_error
    return outcome.pool_seconds


def _run_pool(prepared: PreparedGoF, constraint: Constraint, indices: NDArray[np.int64],
              which: NDArray[np.int64], j: int, cfg: GoFSettings, bar: Any, table: _ToyTable,
              pool_s: float, toy_s: float) -> tuple[float, float]:
    """The toys of pool ``j`` into ``table``; returns the updated pool and toy seconds."""
    start = time.perf_counter()
    rows = prepared.pool_rows(constraint.weights, int(j))
    _check_negative_mass(rows, cfg.max_negative_mass)
    pool = project_pool(rows, constraint, prepared.check_rows)
    table.negative_mass[j] = pool.negative_mass
    table.negative_mass_error[j] = pool.negative_mass_error
    mid = time.perf_counter()
    sel = which == j
    batch = run_toys(pool, indices[sel], seed=prepared.seed, n_test=prepared.x.shape[0],
                     poisson=cfg.toy_size == "poisson", centre=cfg.centre,
                     n_jobs=cfg.n_jobs, settings=cfg.toy_profile, bar=bar)
    table.fill(sel, batch)
    return pool_s + mid - start, toy_s + time.perf_counter() - mid


#: Toy tasks per worker thread and pool: enough to balance uneven fits and to lose little when
#: a worker dies, few enough that scheduling (milliseconds a task) costs nothing next to them.
_TASKS_PER_THREAD = 8


def _toy_task(pool: ToyPool, chunk: NDArray[np.int64], seed: int, n_test: int, poisson: bool,
              centre: str, settings: ProfileSettings) -> list[ToyRow]:
    """Fit toys ``chunk`` on a Dask worker (one thread each, like the fork pool's workers)."""
    with limit_blas_threads(1):
        return [_one_toy(pool, int(i), seed, n_test, poisson, centre, settings) for i in chunk]


def _run_pools_on(executor: Executor, prepared: PreparedGoF, constraint: Constraint,
                  indices: NDArray[np.int64], cfg: GoFSettings, progress: bool
                  ) -> tuple[_ToyTable, float, float]:
    """:func:`_run_pools` on a Dask cluster: the same toys, bit for bit.

    Each pool is drawn here and sent once to every worker; its toys go out as ranges of
    indices (each toy's stream is keyed by its index and the seed, both arguments) while the
    next pool is drawn. A task whose worker dies is rerun elsewhere by the scheduler.
    """
    table = _ToyTable(indices, prepared.n_pools)
    which = indices % prepared.n_pools
    pools = np.unique(which)
    per_pool = _TASKS_PER_THREAD * executor.n_threads
    start = time.perf_counter()
    pool_s = 0.0
    futures, parts = [], []
    with tqdm(total=int(indices.size), desc="toys", unit="toy", disable=not progress,
              leave=False) as bar:
        for j in pools:
            drawn = time.perf_counter()
            rows = prepared.pool_rows(constraint.weights, int(j))
            _check_negative_mass(rows, cfg.max_negative_mass)
            pool = project_pool(rows, constraint, prepared.check_rows)
            table.negative_mass[j] = pool.negative_mass
            table.negative_mass_error[j] = pool.negative_mass_error
            pool_s += time.perf_counter() - drawn
            shared = executor.share(pool)
            sel = np.flatnonzero(which == j)
            for part in np.array_split(sel, min(sel.size, per_pool)):
                futures.append(executor.submit(
                    _toy_task, shared, indices[part], prepared.seed, prepared.x.shape[0],
                    cfg.toy_size == "poisson", cfg.centre, cfg.toy_profile))
                parts.append(part)
        results = executor.gather(futures, on_done=lambda _i, rows: bar.update(len(rows)))
    for part, rows in zip(parts, results, strict=True):
        t, conv, size, status = zip(*rows, strict=True)
        table.t[part], table.converged[part], table.size[part] = t, conv, size
        for position, reason in zip(part, status, strict=True):
            table.status[position] = reason
    return table, pool_s, time.perf_counter() - start - pool_s


def observed_statistic(members: Members, fit: Any, x_test: ArrayLike, basis: KernelBasis,
                       seed: int = 0, *, variant: Variant = "ensemble", member: int | None = None,
                       settings: GoFSettings | None = None, prepared: PreparedGoF | None = None,
                       **overrides: Any) -> LRStatistic:
    """t of Eq. (5) on ``x_test`` exactly as :func:`goodness_of_fit` computes it, without toys.

    What completing a test from toy ranges run elsewhere needs (``genval merge``): the
    observed fits, bit for bit those of a full run. Arguments as for :func:`goodness_of_fit`.

    Raises:
        FitError: f(x; ŵ) ≤ 0 at test events and no weights near ŵ fix it.
    """
    cfg = apply_overrides(settings or GoFSettings(), overrides, "observed_statistic")
    if prepared is None:
        prepared = prepare(members, x_test, basis, seed, settings=cfg, keep_pools=False)
    else:
        prepared.check(members, x_test, basis, seed, cfg)
    constraint = make_constraint(fit, members.n_members, variant, member)
    return _observed_statistic(prepared, constraint, variant, cfg.profile)


def goodness_of_fit(members: Members, fit: Any, x_test: ArrayLike, basis: KernelBasis,
                    n_toys: int = 1000, seed: int = 0, *, variant: Variant = "ensemble",
                    member: int | None = None, settings: GoFSettings | None = None,
                    prepared: PreparedGoF | None = None, progress: bool = False,
                    event_weights: ArrayLike | None = None, scheduler: SchedulerLike = None,
                    **overrides: Any) -> GoFResult:
    """Calibrated learned likelihood-ratio goodness-of-fit test of Eq. (5).

    Computes t on ``x_test`` and its null distribution from ``n_toys`` toys drawn from
    f(x; ŵ) (parametric bootstrap of the composite null), then p, Z and a scaled-χ² fit.
    Toy ``i`` is a subset of pool ``i mod n_pools``; the spread between the pools widens the
    Clopper–Pearson interval of p into ``GoFResult.p_interval_total``.

    Args:
        members: the ensemble members (evaluated on x_test and on the pools only).
        fit: the w_i f_i fit (``.weights``, ``.cov``); may be None for ``variant="single"``.
        x_test: test events (N, D), disjoint from everything used to train the members, fit
            ŵ or place the kernel centres.
        basis: the kernel basis of the alternative.
        n_toys: number of toys B.
        seed: seed of the pools and of every toy stream.
        variant: "ensemble" (with uncertainty), "frozen" (weights at ŵ) or "single".
        member: member index for ``variant="single"`` (its toys come from that member).
        settings: :class:`GoFSettings` (calibration and profile settings; defaults when None).
        prepared: a :func:`prepare` of these members, events, basis and seed: the test events
            are not evaluated again, and pools drawn for an earlier variant with the same
            null (frozen and ensemble) are reused. The result is the one without it.
        progress: show a progress bar of the toys on stderr.
        event_weights: per-event weights of ``x_test``, accepted only when all equal: the
            test needs unweighted events (:func:`require_unweighted` says why).
        scheduler: where the toys run (:mod:`genval.compute`): None or ``"local"`` (this
            process, ``n_jobs`` forked workers), ``"processes"``, ``"tcp://HOST:PORT"``,
            ``"slurm"``, or an open :class:`~genval.compute.Executor`. Every choice gives the
            same toys, bit for bit.
        **overrides: any field of :class:`GoFSettings` (``centre``, ``toy_size``,
            ``n_pools``, ``pool_size``, ``first_toy``, ``target_z``, ``n_jobs``, ``toy_tol``,
            ``cl``, ``max_negative_mass``, ``max_failed_fraction``, ``profile``) or of its
            :class:`~genval.gof.statistic.ProfileSettings` (``lam``, ``barrier``, ``tol``,
            ``max_iter``, ``hessian_dtype``, ``subsample_rows``), replacing the one in
            ``settings``.

    Returns:
        :class:`~genval.gof.result.GoFResult`. It can carry a failure
        (``GoFResult.failure``, its step and cause in one line) instead of a p-value: the
        observed statistic is not finite or its fit stopped before its tolerance, or more
        than ``max_failed_fraction`` of the toys failed. p, Z and the χ² extrapolation of
        such a result raise :class:`FitError`; every toy keeps its reason
        (``GoFResult.toy_status``).

    Raises:
        InputError: bad input (non-finite events, shapes, settings, a pool below
            ``MIN_POOL_RATIO`` x N), too few toys for ``target_z``, a ``prepared`` of other
            inputs, or weighted test events (``event_weights`` not all equal).
        FitError: f(x; ŵ) ≤ 0 at some test events (the message lists where) and no weights
            near ŵ fix it (always so for the frozen and single variants); or the negative
            mass of f(x; ŵ) measured on a pool exceeds ``max_negative_mass``.
        TypeError: an override that names no setting (the message lists the valid ones).

    Warns:
        NegativeDensityWarning: f(x; ŵ) ≤ 0 at some test events (listed) but other weights
            on Σφ = 1 make the density positive: t is still defined (and typically large).

    References:
        Badaracco et al., Eq. (5) and the calibration paragraph of Step 4.
    """
    t_start = time.perf_counter()
    cfg = apply_overrides(settings or GoFSettings(), overrides, "goodness_of_fit")
    if event_weights is not None:
        require_unweighted(event_weights, np.shape(x_test)[0])
    _check_toy_count(n_toys, cfg.target_z)
    if prepared is None:
        prepared = prepare(members, x_test, basis, seed, settings=cfg, keep_pools=False)
    else:
        prepared.check(members, x_test, basis, seed, cfg)
    n_test = prepared.x.shape[0]
    constraint = make_constraint(fit, members.n_members, variant, member)
    observed = _observed_statistic(prepared, constraint, variant, cfg.profile)
    t_obs_done = time.perf_counter()

    indices = np.arange(cfg.first_toy, cfg.first_toy + n_toys, dtype=np.int64)
    with open_executor(scheduler) as executor:
        if executor is None:
            toys, pool_s, toy_s = _run_pools(prepared, constraint, indices, cfg, progress)
        else:
            toys, pool_s, toy_s = _run_pools_on(executor, prepared, constraint, indices, cfg,
                                                progress)
    end = time.perf_counter()
    return GoFResult(
        t_obs=float(observed), t_null=toys.t, toy_index=toys.index,
        toy_converged=toys.converged, toy_size=toys.size, observed=observed,
        variant=variant, centre=cfg.centre, seed=int(seed), pool_size=prepared.pool_size,
        n_test=n_test, n_kernels=basis.n_kernels, poisson=cfg.toy_size == "poisson",
        timings={"observed": t_obs_done - t_start, "pool": pool_s, "toys": toy_s,
                 "total": end - t_start}, cl=cfg.cl, n_pools=prepared.n_pools,
        pool_negative_mass=toys.negative_mass,
        pool_negative_mass_error=toys.negative_mass_error, kernel_basis=basis.describe(),
        toy_status=tuple(toys.status), observed_failure=observed.failure,
        max_failed_fraction=cfg.max_failed_fraction)
