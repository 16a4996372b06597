"""Coverage study: do the ensemble's error bars contain a known truth as often as they claim?

Repeatedly draw a fresh weight-fit data set from the truth, refit the weights, estimate an
observable ``Ô ± σ`` (default: the first moment of each feature, with member integrals from
each member's own samples and their Monte-Carlo error propagated) and record whether
``|Ô − O*| < z σ`` (paper Eq. 4). The covered fraction per feature and level comes with an
exact binomial (Clopper–Pearson) interval. The paper reports 61.3 % and 68.7 % for its two
features at the 68 % level over 284 data sets with 2x oversampling (Appendix A).

References:
    Badaracco et al., Step 3, Eq. (4), Appendix A.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from tqdm.auto import tqdm

from genval._validation import as_events
from genval.errors import InputError
from genval.members import Members, log_density_matrix
from genval.products import MemberIntegrals, estimate_observable, member_integrals
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
        weights: ŵ per data set (R, M).
        covs: Cov(ŵ) per data set (R, M, M).
        converged: whether each weight fit converged (R,).
        n_events: weight-fit events per data set.
        n_generated: generated events per data set used for the member integrals (0 if exact).
        messages: warnings issued by the fits.
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

    @property
    def n_datasets(self) -> int:
        return int(self.estimates.shape[0])

    @property
    def z_values(self) -> NDArray[np.float64]:
        """Standard-normal quantiles z_α of the levels (two-sided)."""
        return stats.norm.isf((1.0 - self.levels) / 2)

    @property
    def pulls(self) -> NDArray[np.float64]:
        """``(Ô − O*) / σ`` (R, P): standard normal if the errors are right."""
        return (self.estimates - self.truth) / self.stds

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
                 f"{self.n_generated} generated per set, "
                 f"{int((~self.converged).sum())} non-converged fits)"]
        for p, truth in enumerate(self.truth):
            cells = ", ".join(
                f"{100 * lvl:.1f}%: {100 * self.fractions[p, i]:.1f}% "
                f"[{100 * bounds[p, i, 0]:.1f}, {100 * bounds[p, i, 1]:.1f}]"
                for i, lvl in enumerate(self.levels))
            lines.append(f"  observable {p} (truth {truth:.6g}): {cells}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name; arrays stay numpy arrays, ``messages`` becomes a list.

        The schema of a saved study (``coverage/coverage.npz`` and ``coverage.json`` of a run
        directory); :meth:`from_dict` inverts it.
        """
        return {f.name: (list(self.messages) if f.name == "messages" else getattr(self, f.name))
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageResult:
        """The study :meth:`to_dict` described; keys that are not fields are ignored.

        Raises:
            KeyError: a field is missing.
        """
        arrays = {name: np.asarray(data[name], dtype=np.float64) for name in
                  ("truth", "levels", "estimates", "stds", "stds_weights", "weights", "covs")}
        return cls(**arrays, converged=np.asarray(data["converged"], dtype=np.bool_),
                   n_events=int(data["n_events"]), n_generated=int(data["n_generated"]),
                   messages=tuple(str(m) for m in data.get("messages", ())))


def _fit_recording_warnings(members: Members, data: NDArray[np.float64]
                            ) -> tuple[WeightFit, list[tuple[type[Warning], str]]]:
    """The weight fit (Eq. 1) of one data set and the warnings it issued, kept, not shown:
    the study reports them once, summarised, instead of once per data set."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_weights(log_density_matrix(members, data), log=True)
    return fit, [(w.category, str(w.message)) for w in caught]


def run_coverage(members: Members, sample_truth: Callable[[int, np.random.Generator], ArrayLike],
                 truth: ArrayLike, *, n_datasets: int, n_events: int,
                 g: Callable[[NDArray[np.float64]], ArrayLike] | None = None,
                 oversampling: float | None = 2.0, integrals: MemberIntegrals | None = None,
                 levels: ArrayLike = (0.6827, 0.9545), seed: int = 0, progress: bool = True
                 ) -> CoverageResult:
    """Run the coverage study of paper Step 3 with fixed members and fresh weight-fit data.

    Args:
        members: the (already trained) density members.
        sample_truth: ``(n, rng) -> (n, D)`` events from the true density.
        truth: the true observable values O* (P,).
        n_datasets: number of independent data sets R.
        n_events: weight-fit events per data set.
        g: observable function (default: first moment of each feature).
        oversampling: generated events per data set as a multiple of ``n_events``, split
            evenly across members, for Monte-Carlo member integrals redrawn per data set.
        integrals: exact member integrals instead (then ``oversampling`` is ignored).
        levels: nominal coverage levels.
        seed: seed; data set ``r`` uses the stream ``default_rng([seed, r])``, so studies can be
            split and merged.
        progress: show a progress bar on stderr.
    """
    target = np.atleast_1d(np.asarray(truth, dtype=np.float64))
    if n_datasets < 2:
        raise InputError(f"a coverage study needs at least 2 data sets, got {n_datasets}")
    if integrals is None and oversampling is None:
        raise InputError("give either oversampling (MC member integrals) or exact integrals")
    n_per_member = 0
    if integrals is None:
        n_per_member = max(2, int(round(float(oversampling) * n_events / members.n_members)))
    estimates, stds, stds_weights, weights, covs, converged = [], [], [], [], [], []
    messages: list[str] = []
    categories: dict[type[Warning], str] = {}
    for r in tqdm(range(n_datasets), desc="coverage", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, r])
        data = as_events(sample_truth(n_events, rng), n_features=members.n_features,
                         name=f"truth sample {r}")
        fit, caught = _fit_recording_warnings(members, data)
        for category, message in caught:
            text = f"data set {r}: {message}"
            messages.append(text)
            categories.setdefault(category, text)
        these = integrals if integrals is not None else member_integrals(
            members, g, n_per_member, rng)
        estimate = estimate_observable(fit, these)
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
                            n_generated=n_per_member * members.n_members,
                            messages=tuple(messages))
    for category, first in categories.items():
        warnings.warn(f"coverage study: weight fits issued {len(messages)} warnings (all kept in "
                      f"result.messages); first {category.__name__}: {first}", category,
                      stacklevel=2)
    return result
