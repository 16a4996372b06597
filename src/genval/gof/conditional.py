"""The goodness-of-fit test within each context bin, with the evidence combined.

The paper's stated next step (Badaracco et al., conclusions): with conditional members
``f_k(x | c)``, run the same profile-likelihood test within each context and combine the
evidence. Here the test events ``(x_n, c_n)`` are grouped by context bins
(:class:`~genval.conditional.ContextBins`); in bin b the statistic of Eq. (5) is computed on
the rows ``F[n, k] = f_k(x_n | c_n)`` and the kernels ``G[n, j] = g_j(x_n)`` of the bin's
events, exactly as the unconditional test does on its events (the kernels live in x; each
integrates to one in x, so the extended term ``N_b Σ a`` keeps its meaning at every context):

    t_b = 2 [min NLL0_b − min NLL1_b],       T = Σ_b t_b .

Each bin profiles its own weights φ_b under the constraint of its fit: the shared fit's
``N(ŵ, Cov ŵ)`` in every bin (the paper's shared weights), or bin b's own fit with per-bin
weights (:func:`~genval.conditional.fit_conditional_weights`).

**Toys.** The contexts are observed, not modelled, so the null is conditional on them: a toy
redraws every test event ``x̃_n ~ f(x | c_n; ŵ)`` at its own observed context and keeps the
event's bin, and one toy set serves every bin. As in the unconditional test, the members are
evaluated once per pool, not per toy: a pool holds R candidates ``x ~ f(x | c_n; ŵ)`` per test
event (R = pool_size / N ≥ 5, drawn exactly by
:func:`~genval.conditional.sample_conditional_mixture`), F and G are evaluated on them once,
and toy i takes one candidate per event at random (two toys share about N / R of their
events: ``GoFResult.overlap = 1 / R``). Toy i uses pool ``i mod n_pools`` and its own RNG stream
``[seed, TOY_STREAM, i]``; its constraint centre is redrawn (``centre="redrawn"``) once per toy
for shared weights (one global observable) and once per bin for per-bin weights (independent
fits). Toy sizes are the observed bin counts (``toy_size="poisson"`` is refused: the contexts
are conditioned on).

**Results.** Per bin, t_b calibrated by the toys' t_b (p, Z, Clopper–Pearson, the pools' share,
scaled χ²: a :class:`~genval.gof.result.GoFResult`); combined, T calibrated by the same toys'
T; and the look-elsewhere-corrected smallest p: ``p_min = min_b p_b`` compared with the
toys' own smallest p (each toy's p_b its rank among the same B + 1 values as the data's),
``p_global = (1 + #{toys with p_min,toy ≤ p_min}) / (1 + B)``. Every number comes from the
same joint toys, so the correlations between bins (shared weights, shared constraint centre)
are accounted for.

**Kernels.** One basis for every bin, or one per bin (:func:`bin_kernel_bases`: centres from
the bin's held-out events, σ in units of the bin's spread of x), fixed in x
(:class:`~genval.gof.KernelBasis`) or following the conditional mean
(:class:`~genval.gof.ContextKernels`, Gaussians in the residual of x given c; their check
points are their centres at the bin's median context). The kernels perturb f(x | c),
which is often much narrower than the marginal of x; kernels much wider than f(x | c) make the
alternative's extended term reward large negative amplitudes where f(x | c) is small, and t
heavy-tailed and weak (``studies/results/conditional.md``).

Positivity check points (the barrier of :func:`~genval.gof.statistic.test_statistic`): in bin b,
the kernel centres paired with the median context of the bin's test events, where the null
and alternative densities of the bin must stay positive; the same points in data and toys.

References:
    Badaracco et al., Step 4, Eq. (5) and the conclusions (conditional generative models).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from genval._settings import apply_overrides
from genval._validation import as_context, as_events, as_rng
from genval.conditional.bins import ContextBins
from genval.conditional.fit import ConditionalWeightFit
from genval.conditional.sampling import sample_conditional_mixture
from genval.errors import FitError, InputError
from genval.gof._blas import limit_blas_threads
from genval.gof.constraint import Constraint
from genval.gof.context_kernels import ContextKernels
from genval.gof.kernels import KernelBasis
from genval.gof.result import TOY_OK, GoFResult
from genval.gof.statistic import (
    LRStatistic,
    ProfileSettings,
    Variant,
    make_constraint,
    profile_pair,
    statistic_from_rows,
)
from genval.gof.toys import (
    MIN_POOL_RATIO,
    TOY_STREAM,
    GoFSettings,
    _check_toy_count,
    _fork_context,
    _n_jobs,
    pool_rng,
)
from genval.members import Members, log_density_matrix, n_context_of
from genval.row_scaling import ScaledRows, scale_rows
from genval.transforms import FeatureTransform

__all__ = ["ConditionalGoFResult", "conditional_goodness_of_fit", "look_elsewhere",
           "bin_kernel_bases"]

#: Fewest test events a context bin may hold.
MIN_BIN_EVENTS = 2


@dataclass(frozen=True, repr=False)
class ConditionalGoFResult:
    """The test in each context bin, the combined test and the look-elsewhere-corrected
    smallest p, all calibrated with the same joint toys.

    Attributes:
        bins: the context bins.
        per_bin: one :class:`~genval.gof.result.GoFResult` per bin (t_b and its toys).
        combined: the :class:`~genval.gof.result.GoFResult` of ``T = Σ_b t_b``.
        p_min: the smallest per-bin p-value.
        p_global: its look-elsewhere-corrected p-value from the toys.
        bin_min: the bin with the smallest p.
        per_bin_weights: whether each bin had its own fitted weights.
        n_pools_candidates: candidates per test event in each pool (R).
    """

    bins: ContextBins
    per_bin: tuple[GoFResult, ...]
    combined: GoFResult
    p_min: float
    p_global: float
    bin_min: int
    per_bin_weights: bool = False
    n_pools_candidates: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def z_per_bin(self) -> NDArray[np.float64]:
        """Z of each bin (one-sided, from its toy p-value); NaN where the bin's test failed
        (its :attr:`~genval.gof.GoFResult.failure` says why)."""
        return np.array([r.z if r.ok else np.nan for r in self.per_bin])

    @property
    def z_combined(self) -> float:
        """Z of the combined test (NaN when it failed: ``combined.failure`` says why)."""
        return self.combined.z if self.combined.ok else float("nan")

    @property
    def z_global(self) -> float:
        """Z of the smallest per-bin p after the look-elsewhere correction."""
        return float(scipy.stats.norm.isf(self.p_global))

    @property
    def n_toys(self) -> int:
        return self.combined.n_toys

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the bins, each bin's result, the combined result and the LEE numbers."""
        return {"bins": self.bins.to_dict(), "labels": self.bins.labels,
                "per_bin": [r.to_dict() for r in self.per_bin],
                "combined": self.combined.to_dict(), "p_min": self.p_min,
                "p_global": self.p_global, "z_global": self.z_global,
                "bin_min": self.bin_min, "z_per_bin": self.z_per_bin.tolist(),
                "z_combined": self.z_combined, "per_bin_weights": self.per_bin_weights,
                "candidates_per_event": self.n_pools_candidates,
                "timings": dict(self.timings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionalGoFResult:
        """The result :meth:`to_dict` described (the observed fits are not saved: None).

        As :meth:`GoFResult.from_dict <genval.gof.GoFResult.from_dict>` does, the derived
        numbers are recomputed from the toys: the per-bin and combined p and Z by each
        result, the look-elsewhere p from the toys usable in every bin.

        Raises:
            KeyError: a field is missing.
        """
        bins = ContextBins.from_dict(data["bins"])
        per_bin = tuple(GoFResult.from_dict(dict(r)) for r in data["per_bin"])
        combined = GoFResult.from_dict(dict(data["combined"]))
        t_obs = np.array([r.t_obs for r in per_bin])
        t_null = np.stack([r.t_null for r in per_bin], axis=1)
        whole = (np.array([v == TOY_OK for v in combined.toy_status], dtype=bool)
                 & combined.toy_converged & np.isfinite(t_null).all(axis=1))
        p_min, p_global, bin_min = look_elsewhere(t_obs, t_null[whole]) if whole.any() else (
            float("nan"), float("nan"), -1)
        return cls(bins, per_bin, combined, p_min, p_global, bin_min,
                   bool(data.get("per_bin_weights", False)),
                   int(data.get("candidates_per_event", 0)),
                   {str(k): float(v) for k, v in dict(data.get("timings", {})).items()})

    def _repr_html_(self) -> str:  # notebook display, genval.display
        from genval.display import conditional_gof_html

        return conditional_gof_html(self)

    def __repr__(self) -> str:
        lines = [f"ConditionalGoFResult(variant={self.combined.variant!r}, "
                 f"{self.bins.n_bins} context bins, {self.n_toys} joint toys, "
                 f"{'per-bin' if self.per_bin_weights else 'shared'} weights)"]
        rows = [*zip(self.bins.labels, self.per_bin, strict=True),
                ("combined (sum of t)", self.combined)]
        for label, r in rows:
            head = f"  {label:<32s} N = {r.n_test:<7d} t = {r.t_obs:<10.4g} "
            if not r.ok:
                lines.append(head + f"FAILED: {r.failure}")
                continue
            bound = " (bound)" if r.z_is_bound else ""
            lines.append(head + f"p = {r.p_value:<9.3g} Z = {r.z:.2f}{bound}")
        lines.append(f"  smallest p {self.p_min:.3g} in bin {self.bin_min} "
                     f"({self.bins.labels[self.bin_min]}); look-elsewhere corrected "
                     f"p = {self.p_global:.3g}, Z = {self.z_global:.2f}")
        return "\n".join(lines)


def look_elsewhere(t_obs: ArrayLike, t_null: ArrayLike) -> tuple[float, float, int]:
    """The smallest per-bin p and its look-elsewhere-corrected p from joint toys.

    Args:
        t_obs: (n_bins,) observed statistics.
        t_null: (B, n_bins) the same statistics in B joint toys.

    Returns:
        ``(p_min, p_global, bin)``: ``p_b = (1 + #{t_null[:, b] ≥ t_obs[b]}) / (1 + B)``,
        their minimum and where it is, and ``(1 + #{i: min_b p_ib ≤ p_min}) / (1 + B)``. Toy
        i's own p-value is its rank among the same B + 1 values as the data's,
        ``p_ib = (1 + #{j ≠ i: t_null[j, b] ≥ t_null[i, b]} + [t_obs[b] ≥ t_null[i, b]]) /
        (1 + B)``: under the null the data and the toys are exchangeable, so p_global is
        exactly valid (ties count against the data). Ranking the toys among the toys alone
        would put them on a coarser grid than the data and make p_global too small.
    """
    obs = np.asarray(t_obs, dtype=np.float64)
    null = np.asarray(t_null, dtype=np.float64)
    if null.ndim != 2 or null.shape[1] != obs.size or null.shape[0] < 1:
        raise InputError(f"t_null must be (B, {obs.size}), got {null.shape}")
    b = null.shape[0]
    p_obs = np.empty(obs.size)
    p_toys = np.empty_like(null)
    for k in range(obs.size):
        ordered = np.sort(null[:, k])
        p_obs[k] = (1.0 + b - np.searchsorted(ordered, obs[k], side="left")) / (1.0 + b)
        # #{j: t_j ≥ t_i} counts toy i itself (the "+1"); the data join the reference set.
        p_toys[:, k] = (b - np.searchsorted(ordered, null[:, k], side="left")
                        + (obs[k] >= null[:, k])) / (1.0 + b)
    k_min = int(np.argmin(p_obs))
    p_min = float(p_obs[k_min])
    p_global = (1.0 + float((p_toys.min(axis=1) <= p_min).sum())) / (1.0 + b)
    return p_min, p_global, k_min


@dataclass(frozen=True)
class _BinPool:
    """A bin's pool in the toys' form: R candidate rows per event, then the check points."""

    c: NDArray[np.float64]  # (R * n_b + n_ref,)
    a: NDArray[np.float64]  # (R * n_b + n_ref, rank + K)
    n_events: int
    n_ref: int
    rank: int


@dataclass(frozen=True)
class _Setup:
    """Everything a toy needs (inherited by forked workers, never pickled)."""

    pools: list[list[_BinPool]]  # [pool][bin]
    n_candidates: int
    group: NDArray[np.int64]  # constraint group of each bin (shared weights: all 0)
    ranks: NDArray[np.int64]  # whitened rank of each group
    seed: int
    centre: str
    settings: ProfileSettings


ToyRow = tuple[NDArray[np.float64], NDArray[np.bool_], list[str]]


def _one_toy(setup: _Setup, i: int) -> ToyRow:
    """Toy i: one candidate per event; t_b, convergence and "ok" or why it failed, per bin."""
    rng = np.random.default_rng([setup.seed, TOY_STREAM, i])
    pools = setup.pools[i % len(setup.pools)]
    u0 = [rng.standard_normal(int(r)) if setup.centre == "redrawn" else np.zeros(int(r))
          for r in setup.ranks]
    t = np.empty(len(pools))
    conv = np.empty(len(pools), dtype=bool)
    status = []
    for b, pool in enumerate(pools):
        pick = rng.integers(0, setup.n_candidates, size=pool.n_events)
        idx = pick * pool.n_events + np.arange(pool.n_events)
        if pool.n_ref:
            base = setup.n_candidates * pool.n_events
            idx = np.concatenate([idx, np.arange(base, base + pool.n_ref)])
        try:
            pair = profile_pair(pool.c[idx], pool.a[idx], pool.rank, u0[setup.group[b]],
                                n_ref=pool.n_ref, settings=setup.settings)
        except (FitError, np.linalg.LinAlgError) as exc:
            # A toy bin that cannot be fitted is a failed toy (recorded and counted against
            # max_failed_fraction, as in the unconditional test), not the end of the run.
            t[b], conv[b] = float("nan"), False
            status.append(f"error: {type(exc).__name__}: {exc}")
            continue
        t[b], conv[b] = pair.t, pair.converged
        status.append(pair.failure or TOY_OK)
    return t, conv, status


_FORKED: _Setup | None = None


def _forked_chunk(chunk: NDArray[np.int64]) -> list[ToyRow]:
    assert _FORKED is not None
    with limit_blas_threads(1):
        return [_one_toy(_FORKED, int(i)) for i in chunk]


def _run_toys(setup: _Setup, indices: NDArray[np.int64], n_jobs: int
              ) -> tuple[NDArray[np.float64], NDArray[np.bool_], list[list[str]]]:
    """Toys ``indices`` sequentially or in forked workers (identical results either way)."""
    global _FORKED
    jobs = _n_jobs(n_jobs)
    context = _fork_context()  # None off Linux and inside a Dask worker (no children there)
    out: list[ToyRow]
    if jobs > 1 and indices.size > 1 and context is not None:
        chunks = np.array_split(indices, min(indices.size, 8 * jobs))
        _FORKED = setup
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as ex:
                    out = [row for part in ex.map(_forked_chunk, chunks) for row in part]
        finally:
            _FORKED = None
    else:
        with limit_blas_threads(1):
            out = [_one_toy(setup, int(i)) for i in indices]
    n_bins = len(setup.pools[0])
    if not out:
        return np.zeros((0, n_bins)), np.zeros((0, n_bins), dtype=bool), []
    return (np.stack([o[0] for o in out]), np.stack([o[1] for o in out]),
            [o[2] for o in out])


def _constraints(fit: Any, members: Members, n_bins: int, variant: str, member: int | None
                 ) -> tuple[list[Constraint], NDArray[np.int64], bool]:
    """One constraint per bin, the constraint group of each bin, and whether per-bin."""
    m = members.n_members
    if isinstance(fit, ConditionalWeightFit) and fit.per_bin and variant != "single":
        if fit.n_bins != n_bins:
            raise InputError(f"the per-bin fit has {fit.n_bins} bins, the test {n_bins}")
        return ([make_constraint(fit.fit_for(b), m, variant, member) for b in range(n_bins)],
                np.arange(n_bins), True)
    shared = fit.fit_for(0) if isinstance(fit, ConditionalWeightFit) else fit
    constraint = make_constraint(shared, m, variant, member)
    return [constraint] * n_bins, np.zeros(n_bins, dtype=np.int64), False


Kernels = KernelBasis | ContextKernels


def _kernel_log_pdf(kb: Kernels, x: NDArray[np.float64], ctx: NDArray[np.float64]
                    ) -> NDArray[np.float64]:
    """``log G`` (N, K) of either kind of kernels at events with contexts."""
    return kb.log_pdf(x, context=ctx) if isinstance(kb, ContextKernels) else kb.log_pdf(x)


def bin_kernel_bases(x_heldout: ArrayLike, context_heldout: ArrayLike, bins: ContextBins,
                     n_kernels: int = 20, sigma: float = 0.3, *, standardize: bool = True,
                     follow_context: bool = False, transform: FeatureTransform | None = None,
                     seed: np.random.Generator | int | None = None) -> list[Kernels]:
    """One kernel basis per context bin, its centres drawn from the bin's held-out events.

    ``x | c`` is often much narrower than the marginal of x (a response whose mean follows
    the context): kernels as wide as the whole sample are then much wider than the densities
    they perturb, the extended term rewards large negative amplitudes where f(x | c) is
    small, and t grows heavy-tailed and loses power. With ``standardize`` each bin's σ is
    measured in units of the standard deviation of x among that bin's held-out events.
    With ``follow_context`` the kernels are :class:`~genval.gof.ContextKernels` fitted on
    the bin's held-out events: Gaussians in the residual of x about an affine ``m(c)``,
    which move with the conditional mean inside the bin (σ then in units of the residuals'
    spread). ``transform``: the feature transform of x the fixed kernels are Gaussian after
    (:class:`~genval.gof.KernelBasis`, the members' coordinates); kernels following the
    context are Gaussian in x itself.

    Raises:
        InputError: a bin with fewer held-out events than ``n_kernels``.
    """
    x = as_events(x_heldout, name="held-out events")
    ctx_h = as_context(context_heldout, x.shape[0], bins.n_context, name="held-out contexts")
    index = bins.assign(ctx_h, outside="drop")
    gen = as_rng(seed)
    bases = []
    for b in range(bins.n_bins):
        rows = x[index == b]
        if rows.shape[0] < max(n_kernels, 2):
            raise InputError(f"context bin {b} holds {rows.shape[0]} held-out events, fewer "
                             f"than the {n_kernels} kernel centres")
        if follow_context:
            bases.append(ContextKernels.from_events(rows, ctx_h[index == b], n_kernels, sigma,
                                                    standardize=standardize, seed=gen))
        else:
            bases.append(KernelBasis.from_events(rows, n_kernels, sigma,
                                                 standardize=standardize, transform=transform,
                                                 seed=gen))
    return bases


def conditional_goodness_of_fit(members: Members, fit: Any, x_test: ArrayLike,
                                context_test: ArrayLike,
                                basis: Kernels | Sequence[Kernels], bins: ContextBins,
                                n_toys: int = 1000, seed: int = 0, *,
                                variant: Variant = "ensemble", member: int | None = None,
                                settings: GoFSettings | None = None, outside: str = "error",
                                **overrides: Any) -> ConditionalGoFResult:
    """The test of Eq. (5) in each context bin and combined, calibrated with joint toys.

    Args:
        members: conditional members ``f_k(x | c)`` (``n_context = C > 0``).
        fit: the weight fit on conditional rows: a :class:`~genval.wifi.WeightFit` (shared
            weights) or a :class:`~genval.conditional.ConditionalWeightFit` (shared or per
            bin, with the same bins); may be None for ``variant="single"``.
        x_test: (N, D) test events, disjoint from everything used to train and fit.
        context_test: (N, C) their observed contexts.
        basis: the kernels of the alternative, normalised in x: one basis for every bin, or
            one per bin (:func:`bin_kernel_bases`, recommended when x | c is much narrower than
            the marginal of x); a :class:`~genval.gof.KernelBasis` (fixed in x) or
            :class:`~genval.gof.ContextKernels` (following the conditional mean).
        bins: the context bins (:class:`~genval.conditional.ContextBins`).
        n_toys: joint toys B.
        seed: seed of the pools and of every toy stream.
        variant: "ensemble", "frozen" or "single" (as :func:`~genval.gof.goodness_of_fit`).
        member: the member of ``variant="single"``.
        settings: :class:`~genval.gof.GoFSettings`: ``centre``, ``n_pools``, ``pool_size``
            (candidates per event R = pool_size // N, at least 5; default max(5 N, 10 000)
            events), ``first_toy``, ``target_z``, ``n_jobs``, ``toy_tol``, ``cl``,
            ``max_negative_mass`` and ``profile`` are used; ``toy_size`` must be "fixed".
        outside: test events outside every bin: "error" (default) or "drop".
        **overrides: fields of :class:`~genval.gof.GoFSettings` or of its profile settings.

    Returns:
        :class:`ConditionalGoFResult`.

    Raises:
        InputError: unconditional members, malformed inputs, a bin with fewer than two test
            events, Poisson toy sizes, too few toys for ``target_z``, a per-bin fit whose bins
            differ from ``bins``.
        FitError: f(x | c; ŵ) ≤ 0 at test events with no weights to fix it, or a negative
            mass above ``max_negative_mass``.

    References:
        Badaracco et al., Eq. (5), Step 4 and the conclusions.
    """
    start = time.perf_counter()
    cfg = apply_overrides(settings or GoFSettings(), overrides, "conditional_goodness_of_fit")
    if cfg.toy_size != "fixed":
        raise InputError("the conditional test conditions on the observed contexts: its toys "
                         "keep every bin's size (toy_size='fixed')")
    _check_toy_count(n_toys, cfg.target_z)
    c_dim = n_context_of(members)
    if c_dim == 0:
        raise InputError("the conditional test needs conditional members (n_context > 0)")
    if bins.n_context != c_dim:
        raise InputError(f"the bins describe {bins.n_context} context features, the members "
                         f"take {c_dim}")
    single = isinstance(basis, (KernelBasis, ContextKernels))
    bases = [basis] * bins.n_bins if single else list(basis)
    if len(bases) != bins.n_bins:
        raise InputError(f"{len(bases)} kernel bases for {bins.n_bins} context bins")
    for kb in bases:
        if isinstance(kb, ContextKernels) and kb.n_context != c_dim:
            raise InputError(f"context kernels take {kb.n_context} context features, the "
                             f"members {c_dim}")
        if kb.n_features != members.n_features:
            raise InputError(f"basis has {kb.n_features} features, members "
                             f"{members.n_features}")
    x = as_events(x_test, n_features=members.n_features, name="test events")
    ctx = as_context(context_test, x.shape[0], c_dim, name="test contexts")
    index = bins.assign(ctx, outside=outside)
    keep = index >= 0
    x, ctx, index = x[keep], ctx[keep], index[keep]
    counts = np.bincount(index, minlength=bins.n_bins)
    if counts.min() < MIN_BIN_EVENTS:
        low = np.flatnonzero(counts < MIN_BIN_EVENTS)
        raise InputError(f"context bins {low.tolist()} hold {counts[low].tolist()} test events "
                         f"(fewer than {MIN_BIN_EVENTS}): merge them with their neighbours")
    n = x.shape[0]
    n_cand = max(MIN_POOL_RATIO, cfg.pool_events(n) // n)
    constraints, group, per_bin_weights = _constraints(fit, members, bins.n_bins, variant,
                                                       member)

    test_log_f = log_density_matrix(members, x, ctx)
    order = [np.flatnonzero(index == b) for b in range(bins.n_bins)]
    check = []
    for b, kb in enumerate(bases):
        median = np.median(ctx[order[b]], axis=0)
        at = np.ascontiguousarray(np.broadcast_to(median, (kb.n_kernels, c_dim)))
        centres = kb.centers_at(median) if isinstance(kb, ContextKernels) else kb.centers
        check.append(scale_rows(log_density_matrix(members, centres, at),
                                _kernel_log_pdf(kb, centres, at), log=True))
    observed: list[LRStatistic] = []
    with limit_blas_threads(1):
        for b, kb in enumerate(bases):
            rows = scale_rows(test_log_f[order[b]],
                              _kernel_log_pdf(kb, x[order[b]], ctx[order[b]]), log=True)
            observed.append(statistic_from_rows(
                rows, constraints[b], variant, np.zeros(constraints[b].rank), ref=check[b],
                settings=cfg.profile))
    t_obs = np.array([float(s) for s in observed])
    observed_s = time.perf_counter() - start

    indices = np.arange(cfg.first_toy, cfg.first_toy + n_toys, dtype=np.int64)
    used = np.unique(indices % cfg.n_pools)
    pool_start = time.perf_counter()
    neg = np.full(cfg.n_pools, np.nan)
    neg_err = np.full(cfg.n_pools, np.nan)
    pools: list[list[_BinPool]] = [[] for _ in range(cfg.n_pools)]
    row_w = np.stack([constraints[b].weights for b in index])
    for j in used:
        pools[j], neg[j], neg_err[j] = _draw_pool(
            members, bases, ctx, order, row_w, constraints, check, n_cand, seed, int(j),
            cfg.max_negative_mass)
    # Unused pools (fewer toys than pools) are never indexed: toy i uses pool i mod n_pools.
    for j in range(cfg.n_pools):
        if not pools[j]:
            pools[j] = pools[int(used[0])]
    pool_s = time.perf_counter() - pool_start
    setup = _Setup(pools, n_cand, group, np.array([c.rank for c in constraints])[
        np.unique(group, return_index=True)[1]], int(seed), cfg.centre, cfg.toy_profile)
    toy_start = time.perf_counter()
    t_null, conv, status = _run_toys(setup, indices, cfg.n_jobs)
    toy_s = time.perf_counter() - toy_start
    # A toy counts in the combined test and the look-elsewhere correction only when every
    # bin of it is usable (the per-bin results leave out their own failed toys).
    whole = np.array([all(v == TOY_OK for v in row) for row in status], dtype=bool) \
        & conv.all(axis=1) & np.isfinite(t_null).all(axis=1)
    p_min, p_global, bin_min = look_elsewhere(t_obs, t_null[whole]) if whole.any() else (
        float("nan"), float("nan"), -1)
    timings = {"observed": observed_s, "pool": pool_s, "toys": toy_s,
               "total": time.perf_counter() - start}
    common = dict(toy_index=indices, variant=variant, centre=cfg.centre, seed=int(seed),
                  poisson=False, cl=cfg.cl, n_pools=cfg.n_pools, pool_negative_mass=neg,
                  pool_negative_mass_error=neg_err, timings=timings,
                  max_failed_fraction=cfg.max_failed_fraction)
    per_bin = tuple(GoFResult(t_obs=float(t_obs[b]), t_null=t_null[:, b],
                              toy_converged=conv[:, b],
                              toy_status=tuple(row[b] for row in status),
                              observed_failure=observed[b].failure,
                              toy_size=np.full(indices.size, counts[b], dtype=np.int64),
                              observed=observed[b], pool_size=int(n_cand * counts[b]),
                              n_test=int(counts[b]), n_kernels=kb.n_kernels,
                              kernel_basis=kb.describe(), **common)
                    for b, kb in enumerate(bases))
    # The combined alternative has every bin's kernels; one shared basis is described as such.
    combined_status = tuple(
        TOY_OK if ok else "; ".join(f"bin {b}: {v}" for b, v in enumerate(row) if v != TOY_OK)
        or "t not finite" for ok, row in zip(whole, status, strict=True))
    failures = [f"bin {b}: {o.failure}" for b, o in enumerate(observed) if o.failure]
    combined = GoFResult(t_obs=float(t_obs.sum()), t_null=t_null.sum(axis=1),
                         toy_converged=conv.all(axis=1), toy_status=combined_status,
                         observed_failure="; ".join(failures) or None,
                         toy_size=np.full(indices.size, n, dtype=np.int64), observed=None,
                         pool_size=int(n_cand * n), n_test=n,
                         n_kernels=int(sum(kb.n_kernels for kb in bases)),
                         kernel_basis=(bases[0].describe() if single
                                       else {"per_bin": [kb.describe() for kb in bases]}),
                         **common)
    return ConditionalGoFResult(bins, per_bin, combined, p_min, p_global, bin_min,
                                per_bin_weights, int(n_cand), timings)


def _draw_pool(members: Members, bases: list[Kernels],
               ctx: NDArray[np.float64], order: list[NDArray[np.int64]],
               row_w: NDArray[np.float64], constraints: list[Constraint],
               check: list[ScaledRows], n_cand: int, seed: int, pool: int, limit: float
               ) -> tuple[list[_BinPool], float, float]:
    """Pool ``pool``: ``n_cand`` candidates ``x ~ f(x | c_n; ŵ_b(n))`` per test event, F and G
    evaluated once, split by bin and projected onto each bin's constraint."""
    n = ctx.shape[0]
    rng = pool_rng(seed, pool)
    ctx_pool = np.tile(ctx, (n_cand, 1))
    drawn = sample_conditional_mixture(members, np.tile(row_w, (n_cand, 1)), ctx_pool, rng,
                                       warn=False)
    if drawn.negative_mass > limit:
        raise FitError(
            f"f(x | c; ŵ) has negative mass {drawn.negative_mass:.3g} ± "
            f"{drawn.negative_mass_error:.2g} (fraction of ∫|f| where f < 0, measured while "
            f"drawing toy pool {pool}), above max_negative_mass = {limit:g}: the toys would "
            "calibrate max(f, 0) / ∫max(f, 0), not f(x | c; ŵ)")
    out = []
    for b, events in enumerate(order):
        # Candidate-major rows of the bin: candidate j of its i-th event at j * n_b + i.
        sel = (np.arange(n_cand)[:, None] * n + events[None, :]).ravel()
        rows = scale_rows(drawn.log_f[sel],
                          _kernel_log_pdf(bases[b], drawn.x[sel], ctx_pool[sel]), log=True)
        c, a = constraints[b].project(rows)
        c_ref, a_ref = constraints[b].project(check[b])
        ok = c_ref > 0
        out.append(_BinPool(np.concatenate([c, c_ref[ok]]), np.concatenate([a, a_ref[ok]]),
                            events.size, int(ok.sum()), constraints[b].rank))
    return out, drawn.negative_mass, drawn.negative_mass_error
