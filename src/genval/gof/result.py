"""Result of the calibrated goodness-of-fit test: p-value, significance and their errors.

p = (1 + k) / (1 + B) with k of B toys at or above t_obs, a Clopper–Pearson interval on the
tail probability, Z = Φ⁻¹(1 − p). The toys are subsets of a few independent pools drawn from
f(x; ŵ); each pool's own fluctuation shifts the null of all its toys, so the spread of the tail
fraction between the pools (beyond the binomial) is added to the Clopper–Pearson interval
(``p_interval_total``). Beyond the toys' reach a scaled χ², ``t ~ a·χ²(ν)`` fitted to
the null toys by maximum likelihood, extrapolates Z; it is always labelled as extrapolated.

Failures are loud (:class:`GoFFailure`): a non-finite observed statistic, or more failed toys
than ``max_failed_fraction`` of them, gives a result that carries its cause and raises
:class:`~genval.errors.FitError` for p, Z and everything derived from them. Below that fraction
the failed toys (a fit stopped before its tolerance, or t not finite; each with its reason) are
left out of p, and ``p_bounds`` counts them either way.

References:
    Badaracco et al., Step 4 (calibration paragraph) and Fig. 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from genval.errors import FitError, InputError
from genval.gof.kernels import kernel_basis_text
from genval.stats import clopper_pearson

__all__ = ["GoFResult", "GoFFailure", "ChiSquareFit", "ZSummary", "clopper_pearson",
           "fit_scaled_chi2", "summarize_z", "merge_results", "MAX_FAILED_FRACTION",
           "TOY_OK"]

#: Default largest fraction of failed toys with which a p-value is still quoted (with bounds).
MAX_FAILED_FRACTION = 0.05
#: ``GoFResult.toy_status`` of a toy whose fits converged with a finite t.
TOY_OK = "ok"


@dataclass(frozen=True)
class GoFFailure:
    """Why a :class:`GoFResult` gives no p-value and no Z.

    Attributes:
        step: "observed" (the statistic on the test events could not be computed) or "toys"
            (too many toys failed to calibrate it).
        message: the cause in one line: which fit stopped and why, at which events or kernels,
            or how many toys failed and for which reasons.
    """

    step: str
    message: str

    def __str__(self) -> str:
        what = "observed statistic" if self.step == "observed" else "toys"
        return f"{what}: {self.message}"



@dataclass(frozen=True)
class ChiSquareFit:
    """Maximum-likelihood fit ``t ~ scale · χ²(dof)`` to the null toys."""

    scale: float
    dof: float

    def sf(self, t: float) -> float:
        return float(scipy.stats.chi2.sf(t / self.scale, self.dof))

    def z(self, t: float) -> float:
        """Extrapolated significance of ``t`` (via the log survival function: no underflow)."""
        return float(-scipy.special.ndtri_exp(scipy.stats.chi2.logsf(t / self.scale, self.dof)))


def fit_scaled_chi2(t: ArrayLike) -> ChiSquareFit:
    """Fit ``a · χ²(ν)`` by maximum likelihood (a profiled analytically: a = mean / ν)."""
    x = np.asarray(t, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2 or np.all(x <= 0):
        raise InputError("need at least two positive toy statistics to fit a scaled chi2")
    x = np.maximum(x, 1e-12 * np.median(x[x > 0]))  # t = 0 to rounding: keep logs finite
    mean, mean_log = float(x.mean()), float(np.log(x).mean())

    def nll(log_nu: float) -> float:
        nu = np.exp(log_nu)
        a = mean / nu
        return float(-((nu / 2 - 1) * (mean_log - np.log(a)) - nu / 2 - nu / 2 * np.log(2)
                       - scipy.special.gammaln(nu / 2) - np.log(a)))

    res = scipy.optimize.minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e6)),
                                         method="bounded", options={"xatol": 1e-10})
    nu = float(np.exp(res.x))
    return ChiSquareFit(mean / nu, nu)


@dataclass(frozen=True, repr=False)
class GoFResult:
    """Calibrated learned likelihood-ratio test (Eq. 5) with its toy null distribution.

    Attributes:
        t_obs: observed statistic.
        t_null: toy statistics (B,), in toy-index order; failed toys (``toy_status`` other
            than "ok") are kept here, left out of p and counted either way in ``p_bounds``.
        toy_index: toy indices (B,); toy i uses the RNG stream ``(seed, i)``.
        toy_converged: (B,) whether both fits of each toy converged.
        toy_size: (B,) events per toy.
        observed: the observed :class:`~genval.gof.LRStatistic` with its fits.
        variant: "ensemble", "frozen" or "single".
        centre: constraint centre in the toys, "redrawn" (z₀ ~ N(0, C_r)) or "fixed" (z₀ = 0).
        seed: seed of the pool and of the toy streams.
        pool_size: events in the pool drawn once from f(x; ŵ); toys are subsets of it.
        n_test: test events. n_kernels: K.
        poisson: toy sizes Poisson(n_test) instead of n_test.
        timings: seconds spent on "observed", "pool", "toys" and "total".
        cl: confidence level of the Clopper–Pearson interval (default 68.27 %).
        n_pools: independent pools; toy ``i`` is a subset of pool ``i mod n_pools``.
        pool_negative_mass: (n_pools,) negative mass of f(x; ŵ) (the fraction of ∫|f| where
            f < 0) measured on each pool, NaN for pools this run did not draw.
        pool_negative_mass_error: (n_pools,) its statistical error per pool.
        toy_status: (B,) "ok", or why the toy failed (which fit stopped and why, t not
            finite, an error); empty for results saved before reasons were recorded (then
            derived from ``toy_converged``).
        observed_failure: why the observed statistic failed (which fit, which events or
            kernels), or None; ``t_obs`` is then not finite or not to be trusted.
        max_failed_fraction: above this fraction of failed toys the result is a failure.
        kernel_basis: which kernels the alternative used
            (:meth:`~genval.gof.KernelBasis.describe`: K, σ, its units, the per-feature
            scale and the transformed coordinates); empty in files written before it was
            recorded.
    """

    t_obs: float
    t_null: NDArray[np.float64]
    toy_index: NDArray[np.int64]
    toy_converged: NDArray[np.bool_]
    toy_size: NDArray[np.int64]
    observed: Any
    variant: str
    centre: str
    seed: int
    pool_size: int
    n_test: int
    n_kernels: int
    poisson: bool
    timings: dict[str, float] = field(default_factory=dict)
    cl: float = 0.6827
    n_pools: int = 1
    pool_negative_mass: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    pool_negative_mass_error: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    toy_status: tuple[str, ...] = ()
    observed_failure: str | None = None
    max_failed_fraction: float = MAX_FAILED_FRACTION
    kernel_basis: dict[str, Any] = field(default_factory=dict)

    @property
    def n_toys(self) -> int:
        """All toys B, failed ones included."""
        return int(self.t_null.size)

    @property
    def statuses(self) -> NDArray[np.str_]:
        """(B,) "ok" or the reason each toy failed (see ``toy_status``)."""
        if len(self.toy_status) == self.n_toys:
            status = np.array(self.toy_status, dtype=str)
        else:  # saved before reasons were recorded
            status = np.where(self.toy_converged, TOY_OK, "did not converge (reason not recorded)")
        return np.where(np.isfinite(self.t_null) | (status != TOY_OK), status, "t not finite")

    @property
    def toy_ok(self) -> NDArray[np.bool_]:
        """(B,) toys whose fits converged with a finite t: the ones p counts."""
        return (self.statuses == TOY_OK) & self.toy_converged & np.isfinite(self.t_null)

    @property
    def n_failed(self) -> int:
        """Toys whose null or alternative fit stopped before its tolerance, or whose t is not
        finite (left out of p; ``p_bounds`` counts them either way)."""
        return int(self.n_toys - self.toy_ok.sum())

    @property
    def n_used(self) -> int:
        """Toys that calibrate p: B less the failed ones."""
        return int(self.toy_ok.sum())

    @property
    def failure_reasons(self) -> dict[str, int]:
        """Why toys failed: each reason (without its numbers) and how many toys gave it."""
        reasons: dict[str, int] = {}
        for status in self.statuses[~self.toy_ok]:
            key = str(status).split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))

    @property
    def failure(self) -> GoFFailure | None:
        """Why this result gives no p and no Z, or None when it does.

        The observed statistic failed (a fit stopped, or t not finite), or more than
        ``max_failed_fraction`` of the toys failed, or none is left.
        """
        if self.observed_failure is not None or not np.isfinite(self.t_obs):
            cause = self.observed_failure or "the observed statistic is not finite"
            return GoFFailure("observed", f"t_obs = {self.t_obs:.6g}: {cause}")
        if self.n_toys and (self.n_failed > self.max_failed_fraction * self.n_toys
                            or self.n_used == 0):
            why = ", ".join(f"{n} {reason}" for reason, n in self.failure_reasons.items())
            return GoFFailure("toys", f"{self.n_failed} of {self.n_toys} toys failed ({why}), "
                              f"more than max_failed_fraction = {self.max_failed_fraction:g} "
                              "of them: the null is not calibrated (config key "
                              "gof.max_failed_fraction)")
        return None

    @property
    def ok(self) -> bool:
        """Whether p and Z are defined (no :attr:`failure`)."""
        return self.failure is None

    def _require_ok(self) -> None:
        failure = self.failure
        if failure is not None:
            raise FitError(f"GoF variant {self.variant!r} has no p-value: {failure}")

    @property
    def overlap(self) -> float:
        """Expected fraction of events two toys share (toy size / pool size)."""
        return self.n_test / self.pool_size

    @property
    def n_above(self) -> int:
        """Toys that calibrate p (``toy_ok``) with t ≥ t_obs.

        Raises:
            FitError: the result failed (:attr:`failure`).
        """
        self._require_ok()
        return int((self.t_null[self.toy_ok] >= self.t_obs).sum())

    @property
    def p_value(self) -> float:
        """``(1 + k) / (1 + B')`` over the B' = ``n_used`` toys that did not fail.

        Raises:
            FitError: the result failed (:attr:`failure`): no p-value exists.
        """
        return (1.0 + self.n_above) / (1.0 + self.n_used)

    @property
    def p_bounds(self) -> tuple[float, float]:
        """p with every failed toy counted below t_obs, and above it: ``(1 + k) / (1 + B)``
        and ``(1 + k + n_failed) / (1 + B)``. They bracket :attr:`p_value` and equal it
        when no toy failed."""
        k, b = self.n_above, self.n_toys
        return (1.0 + k) / (1.0 + b), (1.0 + k + self.n_failed) / (1.0 + b)

    @property
    def z_bounds(self) -> tuple[float, float]:
        """Z from :attr:`p_bounds` (lower Z from the upper p)."""
        lo, hi = self.p_bounds
        return float(scipy.stats.norm.isf(hi)), float(scipy.stats.norm.isf(lo))

    @property
    def p_interval(self) -> tuple[float, float]:
        """Clopper–Pearson interval on the tail probability at level ``cl`` (the toys that
        did not fail)."""
        lo, hi = clopper_pearson(self.n_above, self.n_used, self.cl)
        return float(lo), float(hi)

    @property
    def pool_counts(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Per pool: toys that did not fail, and those with t ≥ t_obs (toy ``i`` is on pool
        ``i mod n_pools``)."""
        self._require_ok()
        ok = self.toy_ok
        which = self.toy_index[ok] % max(self.n_pools, 1)
        n = np.bincount(which, minlength=self.n_pools)
        k = np.bincount(which, weights=self.t_null[ok] >= self.t_obs, minlength=self.n_pools)
        return n.astype(np.int64), np.rint(k).astype(np.int64)

    @property
    def p_pool_sd(self) -> float | None:
        """The pools' share of the standard error of the tail fraction k / B.

        Toys of pool j estimate its own tail probability π_j; the π_j scatter around the
        tail probability of f(x; ŵ) with a variance τ² (the pool's fluctuation). Moment
        estimate over the pools with toys: ``Q = Σ n_j (p_j − p̂)²`` has expectation
        ``(P − 1) p̂(1 − p̂) + τ² (B − Σ n_j² / B)``, so ``τ̂² = max(0, ...)`` and the share of
        k / B is ``τ̂ (Σ n_j²)^{1/2} / B``. None with fewer than two pools with toys (not
        measured). With P pools it rests on P − 1 degrees of freedom.
        """
        n, k = self.pool_counts
        used = n > 0
        n, k = n[used].astype(np.float64), k[used].astype(np.float64)
        if n.size < 2:
            return None
        b = float(n.sum())
        p_hat = float(k.sum()) / b
        q = float(n @ (k / n - p_hat) ** 2)
        denominator = b - float(n @ n) / b
        tau2 = max(0.0, (q - (n.size - 1) * p_hat * (1.0 - p_hat) * b / (b - 1.0)) /
                   denominator) if denominator > 0 and b > 1 else 0.0
        return float(np.sqrt(tau2 * float(n @ n)) / b)

    @property
    def p_interval_total(self) -> tuple[float, float]:
        """The Clopper–Pearson interval widened by the pools' share, added in quadrature.

        Each side ``d → (d² + (z_cl · p_pool_sd)²)^{1/2}`` with ``z_cl`` the normal quantile
        of ``cl`` (1 at 68.27 %), clipped to [0, 1]; equal to ``p_interval`` when the share is
        zero or not measured (one pool).
        """
        lo, hi = self.p_interval
        share = self.p_pool_sd
        if not share:
            return lo, hi
        p_hat = self.n_above / self.n_used
        extra = (float(scipy.stats.norm.isf((1.0 - self.cl) / 2.0)) * share) ** 2
        return (max(0.0, p_hat - float(np.sqrt((p_hat - lo) ** 2 + extra))),
                min(1.0, p_hat + float(np.sqrt((hi - p_hat) ** 2 + extra))))

    @property
    def z_interval_total(self) -> tuple[float, float]:
        """``z_interval`` from :attr:`p_interval_total`."""
        lo, hi = self.p_interval_total
        return float(scipy.stats.norm.isf(hi)), float(scipy.stats.norm.isf(lo))

    @property
    def negative_mass(self) -> float:
        """Negative mass of f(x; ŵ) (fraction of ∫|f| where f < 0), mean over the pools."""
        drawn = self.pool_negative_mass[np.isfinite(self.pool_negative_mass)]
        return float(drawn.mean()) if drawn.size else 0.0

    @property
    def negative_mass_error(self) -> float:
        """Statistical error of :attr:`negative_mass`."""
        err = self.pool_negative_mass_error[np.isfinite(self.pool_negative_mass_error)]
        return float(np.sqrt((err ** 2).sum()) / err.size) if err.size else 0.0

    @property
    def null(self) -> str:
        """Which null the toys calibrate: f(x; ŵ), or max(f, 0)/∫max(f, 0) where f < 0."""
        if self.negative_mass > 0:
            return (f"max(f, 0) / ∫max(f, 0) (f(x; ŵ) has negative mass "
                    f"{self.negative_mass:.3g} ± {self.negative_mass_error:.2g} of ∫|f|)")
        return "f(x; ŵ)" if self.variant != "single" else "the single member"

    @property
    def z(self) -> float:
        """``Φ⁻¹(1 − p)``; a lower bound when ``z_is_bound`` (t_obs beyond every toy)."""
        return float(scipy.stats.norm.isf(self.p_value))

    @property
    def z_interval(self) -> tuple[float, float]:
        lo, hi = self.p_interval
        return float(scipy.stats.norm.isf(hi)), float(scipy.stats.norm.isf(lo))

    @property
    def z_is_bound(self) -> bool:
        """True when no toy reaches t_obs: Z is then only a lower bound (see ``z_chi2``)."""
        return self.n_above == 0

    @cached_property
    def chi2_fit(self) -> ChiSquareFit:
        """Scaled χ² ``a·χ²(ν)`` fitted by maximum likelihood to the toys that did not fail."""
        return fit_scaled_chi2(self.t_null[self.toy_ok])

    @property
    def z_chi2(self) -> float:
        """Z of t_obs under the fitted scaled χ²: an EXTRAPOLATION beyond the toys.

        Raises:
            FitError: the result failed (:attr:`failure`).
        """
        self._require_ok()
        return self.chi2_fit.z(self.t_obs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the fitted parameters of the observed statistic).

        A failed result has ``"failure"`` (its step and one-line message) and no p, Z or χ²
        extrapolation; the toys and their reasons are kept.
        """
        out: dict[str, Any] = {
            "t_obs": self.t_obs, "cl": self.cl, "n_toys": self.n_toys,
            "n_failed": self.n_failed, "n_used": self.n_used,
            "failure_reasons": self.failure_reasons,
            "max_failed_fraction": self.max_failed_fraction,
            "observed_failure": self.observed_failure, "variant": self.variant,
            "centre": self.centre, "seed": self.seed, "pool_size": self.pool_size,
            "n_test": self.n_test, "overlap": self.overlap, "n_kernels": self.n_kernels,
            "poisson": self.poisson, "n_pools": self.n_pools,
            "negative_mass": self.negative_mass,
            "negative_mass_error": self.negative_mass_error, "null": self.null,
            "pool_negative_mass": _nan_to_none(self.pool_negative_mass),
            "pool_negative_mass_error": _nan_to_none(self.pool_negative_mass_error),
            "kernel_basis": dict(self.kernel_basis),
            "timings": dict(self.timings), "t_null": self.t_null.tolist(),
            "toy_index": self.toy_index.tolist(),
            "toy_converged": self.toy_converged.tolist(), "toy_size": self.toy_size.tolist(),
            "toy_status": self.statuses.tolist(),
        }
        failure = self.failure
        if failure is not None:
            out["failure"] = {"step": failure.step, "message": failure.message}
            return out
        chi2 = self.chi2_fit
        out.update({
            "p_value": self.p_value, "p_interval": list(self.p_interval),
            "p_bounds": list(self.p_bounds), "z": self.z, "z_interval": list(self.z_interval),
            "z_bounds": list(self.z_bounds), "z_is_lower_bound": self.z_is_bound,
            "z_chi2_extrapolated": self.z_chi2, "chi2_scale": chi2.scale,
            "chi2_dof": chi2.dof, "p_pool_sd": self.p_pool_sd,
            "p_interval_total": list(self.p_interval_total),
            "z_interval_total": list(self.z_interval_total),
        })
        return out

    def __repr__(self) -> str:
        failure = self.failure
        if failure is not None:
            return (f"GoFResult(variant={self.variant!r}, centre={self.centre!r})\n"
                    f"  FAILED, no p-value and no Z: {failure}\n"
                    f"  t_obs = {self.t_obs:.4g}   N_test = {self.n_test}, "
                    f"K = {self.n_kernels}\n"
                    f"  toys: {self.n_toys} ({self.n_failed} failed), seed {self.seed}")
        lo, hi = self.p_interval
        zlo, zhi = self.z_interval
        bound = " (lower bound: t_obs beyond every toy)" if self.z_is_bound else ""
        try:
            chi2 = self.chi2_fit
            extra = (f"  Z_chi2 = {self.z_chi2:.2f}  [extrapolated: t ~ {chi2.scale:.3g} · "
                     f"chi2({chi2.dof:.3g})]")
        except InputError:
            extra = "  Z_chi2 unavailable (too few toys)"
        obs_ok = getattr(self.observed, "converged", True)
        share = self.p_pool_sd
        tlo, thi = self.p_interval_total
        pools = (f"  p [{tlo:.3g}, {thi:.3g}] with the pools' share (sd {share:.2g} from "
                 f"{self.n_pools} pools)\n" if share is not None else
                 f"  pools' share of p's error not measured ({self.n_pools} pool)\n")
        null = f"  null calibrated: toys from {self.null}\n"
        basis = kernel_basis_text(self.kernel_basis)
        basis = f", {basis}" if basis else ""
        return (
            f"GoFResult(variant={self.variant!r}, centre={self.centre!r})\n"
            f"  t_obs = {self.t_obs:.4g}   N_test = {self.n_test}, K = {self.n_kernels}"
            f"{basis}"
            f"{'' if obs_ok else '   (observed fit NOT converged)'}\n"
            f"  p = {self.p_value:.4g}  [{lo:.3g}, {hi:.3g}] Clopper-Pearson "
            f"{100 * self.cl:.1f}% CL, k = {self.n_above} of B = {self.n_used}\n"
            f"{pools}"
            f"  Z = {self.z:.2f}  [{zlo:.2f}, {zhi:.2f}]{bound}\n"
            f"{extra}\n"
            f"{self._failed_toys_line()}"
            f"  toys: {self.n_toys} ({self.n_failed} failed, left out of p), "
            f"{'Poisson' if self.poisson else 'fixed'} size, pool {self.pool_size} events "
            f"x {self.n_pools} independent pool(s) (overlap {100 * self.overlap:.1f}%), "
            f"seed {self.seed}\n"
            f"{null}"
            f"  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        )

    def _failed_toys_line(self) -> str:
        if not self.n_failed:
            return ""
        lo, hi = self.p_bounds
        why = ", ".join(f"{n} {reason}" for reason, n in self.failure_reasons.items())
        return (f"  {self.n_failed} failed toys ({why}): p in [{lo:.3g}, {hi:.3g}] counting "
                "them below or above t_obs\n")

    def _repr_html_(self) -> str:  # notebook display, genval.display
        from genval.display import gof_result_html
        from genval.gof.statistic import VARIANT_LABELS

        return gof_result_html(self, labels=VARIANT_LABELS)

    @classmethod
    def from_dict(cls, data: dict[str, Any], observed: Any = None) -> GoFResult:
        """The result :meth:`to_dict` described (``observed`` is not saved: pass it or None).

        Derived values in ``data`` (p, Z, the χ² fit, ...) are ignored: they are recomputed
        from the toys, so a saved result cannot disagree with itself. Files written before
        the pools were several read as one pool, without a measured negative mass.

        Raises:
            KeyError: a field of the result is missing.
        """
        return cls(
            t_obs=float(data["t_obs"]),
            t_null=np.asarray(data["t_null"], dtype=np.float64),
            toy_index=np.asarray(data["toy_index"], dtype=np.int64),
            toy_converged=np.asarray(data["toy_converged"], dtype=np.bool_),
            toy_size=np.asarray(data["toy_size"], dtype=np.int64),
            observed=observed, variant=str(data["variant"]), centre=str(data["centre"]),
            seed=int(data["seed"]), pool_size=int(data["pool_size"]),
            n_test=int(data["n_test"]), n_kernels=int(data["n_kernels"]),
            poisson=bool(data["poisson"]),
            timings={str(k): float(v) for k, v in dict(data.get("timings", {})).items()},
            cl=float(data.get("cl", 0.6827)), n_pools=int(data.get("n_pools", 1)),
            pool_negative_mass=_none_to_nan(data.get("pool_negative_mass", [])),
            pool_negative_mass_error=_none_to_nan(data.get("pool_negative_mass_error", [])),
            toy_status=tuple(str(v) for v in data.get("toy_status", [])),
            observed_failure=(None if data.get("observed_failure") is None
                              else str(data["observed_failure"])),
            max_failed_fraction=float(data.get("max_failed_fraction", MAX_FAILED_FRACTION)),
            kernel_basis=dict(data.get("kernel_basis") or {}),
        )


def _nan_to_none(values: NDArray[np.float64]) -> list[float | None]:
    """JSON has no NaN: pools not drawn are written as null."""
    return [None if not np.isfinite(v) else float(v) for v in values]


def _none_to_nan(values: Sequence[float | None]) -> NDArray[np.float64]:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


_MERGE_KEYS = ("variant", "centre", "seed", "pool_size", "n_test", "n_kernels", "poisson",
               "n_pools", "kernel_basis", "observed_failure", "max_failed_fraction")


def merge_results(results: Sequence[GoFResult]) -> GoFResult:
    """Merge runs over disjoint toy ranges of the same test (same seed, pool, data).

    The merged result equals a single run over the union of the toy indices.

    Raises:
        InputError: if the runs differ in their settings or observed t, or share toys.
    """
    if not results:
        raise InputError("nothing to merge")
    first = results[0]
    for other in results[1:]:
        for key in _MERGE_KEYS:
            if getattr(other, key) != getattr(first, key):
                raise InputError(f"cannot merge: {key} differs ({getattr(first, key)!r} vs "
                                 f"{getattr(other, key)!r})")
        if not np.isclose(other.t_obs, first.t_obs, rtol=1e-9, atol=1e-12, equal_nan=True):
            raise InputError(f"cannot merge: t_obs differs ({first.t_obs} vs {other.t_obs}); "
                             "different test data?")
    index = np.concatenate([r.toy_index for r in results])
    if np.unique(index).size != index.size:
        raise InputError("cannot merge: toy index ranges overlap")
    order = np.argsort(index, kind="stable")
    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    return replace(
        first,
        pool_negative_mass=_merge_pools([r.pool_negative_mass for r in results]),
        pool_negative_mass_error=_merge_pools([r.pool_negative_mass_error for r in results]),
        t_null=np.concatenate([r.t_null for r in results])[order],
        toy_index=index[order],
        toy_converged=np.concatenate([r.toy_converged for r in results])[order],
        toy_size=np.concatenate([r.toy_size for r in results])[order],
        toy_status=tuple(np.concatenate([r.statuses for r in results])[order].tolist()),
        timings=timings,
    )


def _merge_pools(parts: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Per-pool measurements of several runs: each pool's value from any run that drew it."""
    out = np.array(parts[0], dtype=np.float64, copy=True)
    for part in parts[1:]:
        if part.shape != out.shape:
            continue  # a file without per-pool values (older format)
        take = ~np.isfinite(out) & np.isfinite(part)
        out[take] = part[take]
    return out


@dataclass(frozen=True)
class ZSummary:
    """Median Z over several test sets with its 16–84 % band (as the paper quotes Z)."""

    median: float
    lower: float
    upper: float
    n_sets: int

    def __repr__(self) -> str:
        return (f"Z = {self.median:.2f} +{self.upper - self.median:.2f} "
                f"-{self.median - self.lower:.2f} (median, 16-84% over {self.n_sets} test sets)")


def summarize_z(results: Sequence[GoFResult] | ArrayLike) -> ZSummary:
    """Median and 16/84 % quantiles of Z over several test sets (results or Z values).

    Raises:
        FitError: a result failed (no Z to summarise).
        InputError: no test set, or a Z value that is NaN.
    """
    zs = np.array([r.z if isinstance(r, GoFResult) else float(r) for r in results]) \
        if isinstance(results, Sequence) else np.asarray(results, dtype=np.float64)
    if zs.size < 1:
        raise InputError("need at least one test set")
    if np.isnan(zs).any():
        raise InputError(f"{int(np.isnan(zs).sum())} of {zs.size} Z values are NaN: no median")
    q16, q50, q84 = np.percentile(zs, [16, 50, 84])
    return ZSummary(float(q50), float(q16), float(q84), int(zs.size))
