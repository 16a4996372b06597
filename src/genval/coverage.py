"""Coverage study: do the ensemble's error bars contain a known truth as often as they claim?

Repeatedly draw a fresh weight-fit data set from the truth, refit the weights, generate
``oversampling × n_events`` events from the fitted mixture f(x; ŵ) itself, estimate an
observable ``Ô ± σ`` from them (default: the first moment of each feature; every member
integral an importance estimate from that one sample, with the weight error of Eq. 3 and the
full Monte-Carlo covariance propagated, :mod:`genval.products.observables`) and record whether
``|Ô − O*| < z σ`` (paper Eq. 4). The covered fraction per feature and level comes with an
exact binomial (Clopper–Pearson) interval. The paper reports 61.3 % and 68.7 % for its two
features at the 68 % level over 284 data sets with 2x oversampling (Appendix A: 100k target
events, 200k events generated from f̂).

References:
    Badaracco et al., Step 3, Eq. (4), Appendix A.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from tqdm.auto import tqdm

from genval._validation import as_events
from genval.compute import Executor, SchedulerLike, open_executor
from genval.errors import InputError
from genval.members import Members, log_density_matrix
from genval.products import (
    MemberIntegrals,
    ObservableEstimate,
    common_sample_integrals,
    estimate_observable,
)
from genval.sampling import sample_mixture
from genval.stats import clopper_pearson
from genval.wifi import WeightFit, fit_weights

__all__ = ["COVERAGE_CL", "CoverageResult", "coverage_interval", "run_coverage"]

COVERAGE_CL = 0.6827
"""Level of the Clopper–Pearson interval shown with a covered fraction (report, figure).

The 1σ-equivalent level, as for the p-value of the GoF test, so the interval reads like the
``±1σ`` it replaces.
"""


def coverage_interval(covered: int, n_datasets: int, cl: float = COVERAGE_CL
                      ) -> tuple[float, float]:
    """Clopper–Pearson interval on a covered fraction ``covered / n_datasets`` (Eq. 4).

    The one interval wherever a coverage is shown: the same exact binomial interval as
    :meth:`CoverageResult.intervals`, never a normal (Wald) approximation, which collapses to
    zero width at 0 % or 100 % and undercovers for few data sets.
    """
    lower, upper = clopper_pearson(covered, n_datasets, cl)
    return float(lower), float(upper)


@dataclass(frozen=True, repr=False)
class CoverageResult:
    """Outcome of :func:`run_coverage` over R data sets, P observables and L levels.

    Attributes:
        truth: O* (P,).
        levels: nominal coverage levels (L,), e.g. 0.6827 and 0.9545 (z = 1 and 2).
        estimates: Ô per data set (R, P).
        stds: σ per data set (R, P), weight and Monte-Carlo parts combined.
        stds_weights: the weight-uncertainty part of σ alone (R, P); judging coverage with it
            shows what leaving out the Monte-Carlo error (as the reference code did) costs.
            The Monte-Carlo part is :attr:`stds_mc`.
        weights: ŵ per data set (R, M).
        covs: Cov(ŵ) per data set (R, M, M).
        converged: whether each weight fit converged (R,).
        n_events: weight-fit events per data set.
        n_generated: events generated from f(x; ŵ) per data set, ``oversampling × n_events``
            (0 with exact member integrals).
        messages: warnings issued by the fits and the samplers, one per data set and warning.
        integrals: how the member integrals were obtained: ``"common sample"`` (one sample of
            f(x; ŵ) per data set, importance ratios), ``"exact"`` (given), or
            ``"member samples"`` (each member sampled on its own; studies saved before the
            common sample).
        truth_stds: the statistical error of each O* (P,), when the truth is itself an
            estimate (a larger independent sample); added in quadrature to σ in
            :attr:`pulls`. ``None``: exact.
    """

    truth: NDArray[np.float64]
    levels: NDArray[np.float64]
    estimates: NDArray[np.float64]
    stds: NDArray[np.float64]
    stds_weights: NDArray[np.float64]
    weights: NDArray[np.float64]
    covs: NDArray[np.float64]
    converged: NDArray[np.bool_]
    n_events: int
    n_generated: int
    messages: tuple[str, ...] = field(default=())
    integrals: str = "common sample"
    truth_stds: NDArray[np.float64] | None = None

    @property
    def n_datasets(self) -> int:
        return int(self.estimates.shape[0])

    @property
    def z_values(self) -> NDArray[np.float64]:
        """Standard-normal quantiles z_α of the levels (two-sided)."""
        return stats.norm.isf((1.0 - self.levels) / 2)

    @property
    def stds_mc(self) -> NDArray[np.float64]:
        """The Monte-Carlo part of σ (R, P): ``σ² = σ_weights² + σ_mc²``."""
        return np.sqrt(np.clip(self.stds ** 2 - self.stds_weights ** 2, 0.0, None))

    @property
    def pulls(self) -> NDArray[np.float64]:
        """``(Ô − O*) / σ`` (R, P): standard normal if the errors are right.

        With :attr:`truth_stds`, σ is ``sqrt(σ² + σ_O*²)``: the truth's own error is
        independent of the data sets'."""
        if self.truth_stds is None:
            return (self.estimates - self.truth) / self.stds
        return (self.estimates - self.truth) / np.hypot(self.stds, self.truth_stds)

    @property
    def covered(self) -> NDArray[np.bool_]:
        """``|Ô − O*| < z σ`` for each data set, observable and level (R, P, L)."""
        return np.abs(self.pulls)[..., None] < self.z_values

    @property
    def fractions(self) -> NDArray[np.float64]:
        """Covered fraction (P, L)."""
        return self.covered.mean(axis=0)

    def intervals(self, cl: float = 0.95) -> NDArray[np.float64]:
        """Clopper–Pearson intervals on the covered fractions (P, L, 2)."""
        return clopper_pearson(self.covered.sum(axis=0), self.n_datasets, cl)

    @property
    def weight_mean(self) -> NDArray[np.float64]:
        return self.weights.mean(axis=0)

    @property
    def weight_cov_empirical(self) -> NDArray[np.float64]:
        """Spread of ŵ across data sets (M, M): what the sandwich covariance should predict."""
        return np.cov(self.weights, rowvar=False)

    @property
    def weight_cov_mean(self) -> NDArray[np.float64]:
        """Mean sandwich covariance over data sets (M, M)."""
        return self.covs.mean(axis=0)

    def __repr__(self) -> str:
        bounds = self.intervals()
        lines = [f"CoverageResult({self.n_datasets} data sets of {self.n_events} events, "
                 f"{self.n_generated} generated per set ({self.integrals}), "
                 f"{int((~self.converged).sum())} non-converged fits)"]
        for p, truth in enumerate(self.truth):
            cells = ", ".join(
                f"{100 * lvl:.1f}%: {100 * self.fractions[p, i]:.1f}% "
                f"[{100 * bounds[p, i, 0]:.1f}, {100 * bounds[p, i, 1]:.1f}]"
                for i, lvl in enumerate(self.levels))
            lines.append(f"  observable {p} (truth {truth:.6g}): {cells}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # notebook display, genval.display
        from genval.display import coverage_html

        return coverage_html(self, cl=COVERAGE_CL)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name; arrays stay numpy arrays, ``messages`` becomes a list.

        The schema of a saved study (``coverage/coverage.npz`` and ``coverage.json`` of a run
        directory); :meth:`from_dict` inverts it.
        """
        data = {f.name: (list(self.messages) if f.name == "messages" else getattr(self, f.name))
                for f in fields(self)}
        if self.truth_stds is None:
            del data["truth_stds"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageResult:
        """The study :meth:`to_dict` described; keys that are not fields are ignored.

        Files written before ``integrals`` existed read as ``"member samples"`` (or
        ``"exact"`` when nothing was generated), which is how they were computed.

        Raises:
            KeyError: a field is missing.
        """
        arrays = {name: np.asarray(data[name], dtype=np.float64) for name in
                  ("truth", "levels", "estimates", "stds", "stds_weights", "weights", "covs")}
        return cls(**arrays, converged=np.asarray(data["converged"], dtype=np.bool_),
                   n_events=int(data["n_events"]), n_generated=int(data["n_generated"]),
                   messages=tuple(str(m) for m in data.get("messages", ())),
                   integrals=str(data.get("integrals", "member samples"
                                          if int(data["n_generated"]) else "exact")),
                   truth_stds=(np.asarray(data["truth_stds"], dtype=np.float64)
                               if data.get("truth_stds") is not None else None))


def _one_dataset(members: Members, data: NDArray[np.float64],
                 g: Callable[[NDArray[np.float64]], ArrayLike] | None,
                 integrals: MemberIntegrals | None, n_generated: int, rng: np.random.Generator
                 ) -> tuple[WeightFit, ObservableEstimate, list[tuple[type[Warning], str]]]:
    """The weight fit (Eq. 1) of one data set, ``Ô ± σ`` from ``n_generated`` events of the
    fitted f(x; ŵ) (App. A; or from exact ``integrals``), and the warnings the fit and the
    sampler issued, kept, not shown: the study reports them once, summarised, instead of once
    per data set."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_weights(log_density_matrix(members, data), log=True)
        if integrals is None:
            drawn = sample_mixture(members, fit.weights, n_generated, rng)
            integrals = common_sample_integrals(drawn.x, drawn.log_f, fit.weights, g)
        estimate = estimate_observable(fit, integrals)
    return fit, estimate, [(w.category, str(w.message)) for w in caught]


@dataclass(frozen=True)
class _DatasetTask:
    """Data set ``r`` of a study: its events (given, or drawn from the stream
    ``default_rng([seed, r])``), the weight fit and ``Ô ± σ`` (a picklable callable, so ranges
    of ``r`` can run anywhere)."""

    members: Members
    sample_truth: Callable[[int, np.random.Generator], ArrayLike] | None
    datasets: Sequence[ArrayLike] | None
    g: Callable[[NDArray[np.float64]], ArrayLike] | None
    integrals: MemberIntegrals | None
    n_events: int
    n_generated: int
    seed: int

    def __call__(self, r: int) -> tuple[WeightFit, ObservableEstimate,
                                        list[tuple[type[Warning], str]]]:
        rng = np.random.default_rng([self.seed, r])
        drawn = (self.datasets[r] if self.datasets is not None
                 else self.sample_truth(self.n_events, rng))
        data = as_events(drawn, n_features=self.members.n_features, name=f"data set {r}")
        return _one_dataset(self.members, data, self.g, self.integrals, self.n_generated, rng)


def _dataset_range(task: _DatasetTask, first: int, stop: int) -> list[Any]:
    """Data sets ``first .. stop - 1`` on a Dask worker."""
    return [task(r) for r in range(first, stop)]


#: Data-set tasks per worker thread: balance without scheduling overhead.
_TASKS_PER_THREAD = 4


def _datasets_on(executor: Executor, task: _DatasetTask, n_datasets: int, progress: bool
                 ) -> list[Any]:
    """Every data set as ranges of tasks on a Dask cluster, in data-set order."""
    shared = executor.share(task)
    size = max(1, math.ceil(n_datasets / (_TASKS_PER_THREAD * executor.n_threads)))
    starts = range(0, n_datasets, size)
    futures = [executor.submit(_dataset_range, shared, a, min(a + size, n_datasets))
               for a in starts]
    with tqdm(total=n_datasets, desc="coverage", disable=not progress, leave=False) as bar:
        ranges = executor.gather(futures, on_done=lambda _i, out: bar.update(len(out)))
    return [outcome for block in ranges for outcome in block]


def run_coverage(members: Members,
                 sample_truth: Callable[[int, np.random.Generator], ArrayLike] | None,
                 truth: ArrayLike, *, n_datasets: int, n_events: int,
                 g: Callable[[NDArray[np.float64]], ArrayLike] | None = None,
                 oversampling: float | None = 2.0, integrals: MemberIntegrals | None = None,
                 levels: ArrayLike = (0.6827, 0.9545), seed: int = 0, progress: bool = True,
                 datasets: Sequence[ArrayLike] | None = None,
                 truth_stds: ArrayLike | None = None, scheduler: SchedulerLike = None
                 ) -> CoverageResult:
    """Run the coverage study of paper Step 3 with fixed members and fresh weight-fit data.

    Args:
        members: the (already trained) density members.
        sample_truth: ``(n, rng) -> (n, D)`` events from the true density; ``None`` when
            ``datasets`` are given.
        truth: the true observable values O* (P,).
        n_datasets: number of independent data sets R.
        n_events: weight-fit events per data set.
        g: observable function (default: first moment of each feature).
        oversampling: events generated from the fitted f(x; ŵ) per data set, as a multiple of
            ``n_events`` (App. A: 2); every member integral is an importance estimate from
            that one sample (:func:`genval.products.common_sample_integrals`).
        integrals: exact member integrals instead (then ``oversampling`` is ignored).
        levels: nominal coverage levels.
        seed: seed; data set ``r`` uses the stream ``default_rng([seed, r])``, so studies can be
            split and merged.
        progress: show a progress bar on stderr.
        datasets: the data sets themselves instead of ``sample_truth`` (file data: disjoint
            subsets of independent events that trained no member); ``n_datasets`` of them.
        truth_stds: the statistical error of each O* (P,), when the truth is an estimate from
            an independent sample (:attr:`CoverageResult.truth_stds`).
        scheduler: where the data sets run (:mod:`genval.compute`): None or ``"local"``
            (this process), ``"processes"``, ``"tcp://HOST:PORT"``, ``"slurm"`` or an open
            :class:`~genval.compute.Executor`; ranges of data sets become tasks (the members
            and ``sample_truth`` are sent once per worker), with the same result.
    """
    if (sample_truth is None) == (datasets is None):
        raise InputError("give exactly one of sample_truth (a generator of data sets) and "
                         "datasets (the data sets themselves)")
    if datasets is not None and len(datasets) != n_datasets:
        raise InputError(f"n_datasets={n_datasets} but {len(datasets)} data sets were given")
    target = np.atleast_1d(np.asarray(truth, dtype=np.float64))
    if n_datasets < 2:
        raise InputError(f"a coverage study needs at least 2 data sets, got {n_datasets}")
    if integrals is None and oversampling is None:
        raise InputError("give either oversampling (events generated from f(x; ŵ)) or exact "
                         "integrals")
    n_generated = 0
    if integrals is None:
        n_generated = max(2, int(round(float(oversampling) * n_events)))
    task = _DatasetTask(members, sample_truth, datasets, g, integrals, int(n_events),
                        n_generated, seed)
    with open_executor(scheduler) as executor:
        # in this process lazily, so that a bad observable stops the study at data set 0
        outcomes = (_datasets_on(executor, task, n_datasets, progress) if executor is not None
                    else (task(r) for r in tqdm(range(n_datasets), desc="coverage",
                                                disable=not progress, leave=False)))
    estimates, stds, stds_weights, weights, covs, converged = [], [], [], [], [], []
    messages: list[str] = []
    categories: dict[type[Warning], str] = {}
    for r, (fit, estimate, caught) in enumerate(outcomes):
        for category, message in caught:
            text = f"data set {r}: {message}"
            messages.append(text)
            categories.setdefault(category, text)
        if estimate.value.shape != target.shape:
            raise InputError(f"observable has {estimate.value.size} components, truth "
                             f"{target.size}")
        estimates.append(estimate.value)
        stds.append(estimate.std)
        stds_weights.append(estimate.std_weights)
        weights.append(fit.weights)
        covs.append(fit.cov)
        converged.append(fit.converged)
    result = CoverageResult(truth=target, levels=np.asarray(levels, dtype=np.float64),
                            estimates=np.array(estimates), stds=np.array(stds),
                            stds_weights=np.array(stds_weights),
                            weights=np.array(weights), covs=np.array(covs),
                            converged=np.array(converged), n_events=int(n_events),
                            n_generated=n_generated, messages=tuple(messages),
                            integrals="exact" if integrals is not None else "common sample",
                            truth_stds=(None if truth_stds is None else np.broadcast_to(
                                np.asarray(truth_stds, dtype=np.float64), target.shape).copy()))
    for category, first in categories.items():
        warnings.warn(f"coverage study: weight fits and samplers issued {len(messages)} "
                      f"warnings (all kept in result.messages); first {category.__name__}: "
                      f"{first}", category, stacklevel=2)
    return result
