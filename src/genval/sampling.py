"""Exact sampling from a signed mixture ``f(x) = Σ_k w_k f_k(x)``, and its negative mass.

Weights of a w_i f_i ensemble (Badaracco et al., Eq. 1) may be negative, and near-duplicate
members make ``Σ|w_k|`` reach 10²–10⁴. Two proposals are implemented:

``"mixture"`` (the default whenever ``Σ|w| > 2``)
    Proposals from the members' equal-weight mixture ``q = (1/M) Σ_k f_k`` (over the members
    with ``w_k ≠ 0``): pick a member uniformly, sample it. Each proposal x has the ratio
    ``r = f(x) / q(x)`` and yields ``K`` events with ``E[K | x] = max(r, 0) / C``: ``K ∈ {0, 1}``
    (plain rejection, accept with probability ``r / C``) wherever ``r ≤ C``, and
    ``⌊r/C⌋`` or ``⌈r/C⌉`` copies of x where ``r > C`` (a *violation* of the envelope ``C q``).
    The expected number of events in ``dx`` is therefore exactly ``n_proposed f⁺(x) dx / C``
    everywhere, violations included: no region is cut off and every event is distributed as
    ``f⁺ / ∫f⁺``. The only departure from independent draws is the repeated copies of violating
    proposals, counted in ``MixtureSample.n_duplicates`` (typically 10⁻⁵–10⁻⁴ of the events).
    The constant C is estimated from a pilot batch (``safety ×`` its largest ratio, capped at
    ``max_envelope ×`` ∫f⁺ as estimated from the proposals, and at the proven bound
    ``max_k w_k / π_k`` where ``C q`` dominates f everywhere -- taken whenever it is within 1.5
    times the cap), raised after every violation for the following batches, and always applied
    to proposals it does not depend on (the pilot's own proposals are not returned): so the
    cost is about ``C / ∫f⁺ ≤ max_envelope`` proposals per event, independent of ``Σ|w|``.
    Raising C *retroactively* (empirical-supremum rejection) would make C depend on the
    proposals it judges, and a C fixed without the copies would cut off ``∫(f − C q)⁺``.

``"abs"``
    The ``|w|`` envelope ``g = Σ_k |w_k| f_k / Σ|w|``, with the proven constant ``C = Σ|w|``
    (``f ≤ Σ|w| g``): exact independent draws at ``Σ|w|`` proposals per event. ``"auto"``
    uses it when ``Σ|w| ≤ 2`` (then it costs at most 2 and has no copies).

Both measure the **negative mass**, the fraction of ``∫|f|`` where ``f < 0``, by importance
sampling with their proposals: ``mean(max(−r, 0)) / mean(|r|)`` with its delta-method error;
where f < 0 the events follow ``max(f, 0)``, and a :class:`~genval.errors.NegativeDensityWarning`
says so whenever a proposal saw ``f < 0`` beyond float64 rounding.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_rng
from genval.errors import InputError, NegativeDensityWarning
from genval.members import Members, log_density_matrix
from genval.row_scaling import scale_log_rows

__all__ = ["MixtureSample", "sample_mixture", "mixture_ratio", "estimate_negative_mass",
           "METHODS"]

METHODS = ("auto", "mixture", "abs")
"""Proposals of :func:`sample_mixture` (see the module docstring)."""

_ABS_LIMIT = 2.0
"""``"auto"`` uses the |w| envelope up to this Σ|w| (≤ 2 proposals per event, proven C)."""

_PILOT = 2048
"""Pilot proposals that set the first envelope constant of the ``"mixture"`` proposal."""


@dataclass(frozen=True)
class MixtureSample:
    """Events drawn from a signed mixture, with the sampler's diagnostics.

    Attributes:
        x: events (n, D), in random order.
        log_f: ``log F`` at the events (n, M) -- reuse it instead of re-evaluating.
        n_proposed: proposals drawn (each one evaluation of ``log F``, all M members).
        n_accepted: events produced (a few more than ``len(x)``: the last batch overshoots).
        method: ``"mixture"`` or ``"abs"`` (module docstring).
        envelope: the constant C at the end (``f ≤ C q`` assumed).
        envelope_bound: ``max_k w_k / π_k``: C at or above it dominates f everywhere.
        n_violations: proposals with ``f / q > C`` (returned with the right multiplicity).
        n_duplicates: extra copies returned for violations (0: independent draws).
        max_ratio: largest ``f / q`` seen.
        negative_mass: fraction of ``∫|f|`` where ``f < 0``, from every proposal.
        negative_mass_error: its Monte-Carlo standard error.
    """

    x: NDArray[np.float64]
    log_f: NDArray[np.float64]
    n_proposed: int
    n_accepted: int
    method: str = "abs"
    envelope: float = float("nan")
    envelope_bound: float = float("nan")
    n_violations: int = 0
    n_duplicates: int = 0
    max_ratio: float = float("nan")
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Events per proposal; about ``∫f⁺ / C`` (``1 / Σ|w_k|`` for ``"abs"`` where f ≥ 0)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

    @property
    def evaluations_per_event(self) -> float:
        """Evaluations of ``log F`` (all members at one point) per event produced."""
        return self.n_proposed / self.n_accepted if self.n_accepted else float("inf")

    def diagnostics(self) -> dict[str, Any]:
        """The sampler's numbers as plain JSON values (stage info, artifacts, report)."""
        return {"method": self.method, "n_proposed": int(self.n_proposed),
                "n_accepted": int(self.n_accepted),
                "evaluations_per_event": float(self.evaluations_per_event),
                "envelope": float(self.envelope), "envelope_bound": float(self.envelope_bound),
                "n_violations": int(self.n_violations), "n_duplicates": int(self.n_duplicates),
                "max_ratio": float(self.max_ratio), "negative_mass": float(self.negative_mass),
                "negative_mass_error": float(self.negative_mass_error)}


def mixture_ratio(log_f: NDArray[np.float64], weights: NDArray[np.float64],
                  envelope: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """``Σ w_k F_k / Σ e_k F_k`` per row of ``log F`` (N, M), computed without underflow.

    ``e`` defaults to ``|w|``; with proposal probabilities ``π`` (summing to 1) the result is
    ``f / q``. Rows are rescaled by their maximum over the members with ``w_k ≠ 0`` first
    (:func:`genval.row_scaling.scale_log_rows`): the ratio is invariant to that scale. The
    scaling sets densities below 1.2e-38 of the row maximum to 0 (no subnormal operands,
    :mod:`genval.subnormal`), 22 orders below float64 rounding. A numerator within its own
    rounding, ``|Σ w F| ≤ M ε Σ|w| F``, is returned as exactly 0: its sign is not resolved.
    """
    env = np.abs(weights) if envelope is None else np.asarray(envelope, dtype=np.float64)
    active = weights != 0
    if not active.all():  # members of weight 0 add nothing to f (nor, here, to q)
        log_f, weights, env = log_f[:, active], weights[active], env[active]
    scaled, _ = scale_log_rows(log_f)
    sums = scaled @ np.column_stack([weights, env, np.abs(weights)])
    numerator = sums[:, 0]
    resolved = np.abs(numerator) > weights.size * np.finfo(np.float64).eps * sums[:, 2]
    return np.where(resolved, numerator, 0.0) / sums[:, 1]


class _NegativeMass:
    """Running importance-sampling estimate of ``∫ max(−f, 0) / ∫|f|`` from ratios ``f/q``."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = np.zeros(5)  # Σa, Σb, Σa², Σb², Σab with a = max(−r, 0), b = |r|

    @property
    def positive_mass(self) -> float:
        """``∫ max(f, 0)`` estimated as ``mean(max(r, 0))``."""
        return float((self.sums[1] - self.sums[0]) / self.n) if self.n else 0.0

    def add(self, r: NDArray[np.float64]) -> None:
        a, b = np.maximum(-r, 0.0), np.abs(r)
        self.n += r.size
        self.sums += [a.sum(), b.sum(), a @ a, b @ b, a @ b]

    def estimate(self) -> tuple[float, float]:
        """The fraction and its delta-method standard error (ratio estimator)."""
        sa, sb, saa, sbb, sab = self.sums
        if self.n < 2 or sb <= 0:
            return 0.0, 0.0
        p = sa / sb
        resid = max(saa - 2 * p * sab + p * p * sbb, 0.0)  # Σ (a_i − p b_i)²
        return float(p), float(math.sqrt(resid / (self.n * (self.n - 1))) / (sb / self.n))

    def warn(self, stacklevel: int = 3) -> None:
        p, err = self.estimate()
        if p > 0:
            warnings.warn(f"the mixture f(x; w) is negative on a fraction {p:.3g} ± {err:.2g} "
                          f"of ∫|f| ({self.n} proposals); events there follow max(f, 0)",
                          NegativeDensityWarning, stacklevel=stacklevel)


@dataclass(frozen=True)
class _Proposal:
    method: str
    probs: NDArray[np.float64]  # π_k, the members' probabilities in the proposal
    bound: float                # max_k w_k / π_k: f ≤ bound · q everywhere

    @classmethod
    def build(cls, w: NDArray[np.float64], method: str) -> _Proposal:
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        abs_w = np.abs(w)
        if method == "abs" or (method == "auto" and abs_w.sum() <= _ABS_LIMIT):
            return cls("abs", abs_w / abs_w.sum(), float(abs_w.sum()))
        active = w != 0
        probs = active / active.sum()
        return cls("mixture", probs, float(np.max(w[active] / probs[active])))

    def ratios(self, members: Members, w: NDArray[np.float64], n: int,
               rng: np.random.Generator) -> tuple[NDArray[np.float64], ...]:
        """``n`` proposals, their ``log F`` and ``r = f/q``."""
        x = _draw_from_members(members, rng.multinomial(n, self.probs), rng)
        log_f = log_density_matrix(members, x)
        return x, log_f, mixture_ratio(log_f, w, self.probs)


def _checked_weights(members: Members, weights: ArrayLike) -> NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (members.n_members,) or not np.all(np.isfinite(w)):
        raise InputError(f"weights must be {members.n_members} finite numbers, got shape {w.shape}")
    if w.sum() <= 0:
        raise InputError(f"weights sum to {w.sum():.3g} <= 0: not a density")
    return w


def _draw_from_members(members: Members, counts: NDArray[np.int64],
                       rng: np.random.Generator) -> NDArray[np.float64]:
    batched = getattr(members, "sample_members", None)
    if callable(batched):  # flow ensembles sample every member in one pass
        return np.asarray(batched(counts, rng), dtype=np.float64)
    parts = [members.sample(int(c), k, rng) for k, c in enumerate(counts) if c > 0]
    return np.concatenate(parts) if parts else np.empty((0, members.n_features))


def estimate_negative_mass(members: Members, weights: ArrayLike, n_proposals: int = 8192,
                           rng: np.random.Generator | int | None = None, *,
                           warn: bool = True) -> tuple[float, float]:
    """The fraction of ``∫|f|`` where ``f(x; w) < 0``, and its Monte-Carlo error.

    Importance sampling with the members' equal-weight mixture q (no rejection, so it costs
    ``n_proposals`` evaluations of ``log F``): ``mean(max(−f,0)/q) / mean(|f|/q)``. Issues a
    :class:`~genval.errors.NegativeDensityWarning` when it is non-zero and ``warn`` is set.
    """
    gen = as_rng(rng)
    w = _checked_weights(members, weights)
    proposal = _Proposal.build(w, "mixture")
    acc = _NegativeMass()
    for start in range(0, int(n_proposals), 2**16):
        acc.add(proposal.ratios(members, w, min(2**16, int(n_proposals) - start), gen)[2])
    if warn:
        acc.warn()
    return acc.estimate()


class _Envelope:
    """The constant C of the ``"mixture"`` proposal: estimated, capped, raised on violations."""

    def __init__(self, proposal: _Proposal, max_envelope: float, safety: float) -> None:
        self.bound, self.max_envelope, self.safety = proposal.bound, max_envelope, safety
        self.value = proposal.bound if proposal.method == "abs" else float("nan")

    def update(self, largest_ratio: float, positive_mass: float) -> None:
        """C for the *next* proposals (never lowered), after seeing ``largest_ratio`` and
        estimating ``∫f⁺ = E_q[max(r, 0)]`` as ``positive_mass``."""
        cap = self.max_envelope * positive_mass
        if self.bound <= 1.5 * cap:  # the proven bound is affordable: independent draws
            cap = self.bound
        cap = min(cap, self.bound)
        wanted = min(max(self.safety * largest_ratio, 0.0), cap)
        if not wanted > 0:  # nothing positive seen yet: the proven bound
            wanted = self.bound
        if math.isnan(self.value) or wanted > self.value:
            self.value = wanted


def sample_mixture(members: Members, weights: ArrayLike, n: int,
                   rng: np.random.Generator | int | None = None, *, method: str = "auto",
                   max_envelope: float = 2.5, safety: float = 1.5,
                   envelope: float | None = None, max_proposals: int | None = None,
                   max_batch: int = 2**18, warn: bool = True) -> MixtureSample:
    """Draw ``n`` events from ``Σ_k w_k f_k`` (its positive part where it is negative).

    Args:
        members: the density members.
        weights: (M,) mixture weights, possibly negative, with ``Σ w > 0``.
        n: number of events wanted.
        rng: generator or seed.
        method: ``"auto"``, ``"mixture"`` or ``"abs"`` (module docstring).
        max_envelope: ``"mixture"``: the largest C, in units of ``∫f⁺`` (estimated from the
            proposals), i.e. the most proposals per event; ratios above C are violations,
            returned as copies.
        safety: ``"mixture"``: C is ``safety ×`` the largest ratio seen (up to the cap).
        envelope: ``"mixture"``: a starting C (e.g. ``MixtureSample.envelope`` of an earlier
            call) instead of a pilot batch.
        max_proposals: stop with an error beyond this many proposals (default 20 times
            ``n Σ|w|``, plus 10^5), guarding against a mixture negative almost everywhere.
        max_batch: proposals evaluated at once; only events are kept, so memory stays bounded.
        warn: issue a :class:`~genval.errors.NegativeDensityWarning` when f < 0 was seen.

    Returns:
        :class:`MixtureSample`: events, their ``log F`` and the sampler's diagnostics.
    """
    gen = as_rng(rng)
    w = _checked_weights(members, weights)
    proposal = _Proposal.build(w, method)
    env = _Envelope(proposal, max_envelope, safety)
    limit = (max_proposals if max_proposals is not None
             else int(20 * int(n) * np.abs(w).sum()) + 100_000)
    neg = _NegativeMass()
    counts = np.zeros(4, dtype=np.int64)  # proposed, produced, violations, duplicates
    largest = -math.inf
    if proposal.method == "mixture":
        if envelope is not None:
            env.value = min(float(envelope), proposal.bound)
        else:  # the pilot sets C and is not returned: C never depends on what it judges
            r = proposal.ratios(members, w, min(_PILOT, limit), gen)[2]
            neg.add(r)
            counts[0] += r.size
            largest = float(r.max(initial=-math.inf))
            env.update(largest, neg.positive_mass)
    xs, logfs = [], []
    while counts[1] < n:
        if counts[0] >= limit:
            raise InputError(f"only {counts[1]} of {n} events accepted after {counts[0]} "
                             "proposals: the mixture is non-positive almost everywhere")
        # expected rate ∫f⁺/C before any event (1/Σ|w| for the |w| envelope, as always)
        rate = (counts[1] / counts[0] if counts[1] else 1.0 / env.value
                if proposal.method == "abs" else w.sum() / env.value)
        # 20 % spare for the |w| envelope (its rate is known only roughly); 5 % once the
        # mixture's pilot has measured its rate
        spare = 1.2 if proposal.method == "abs" else 1.05
        wanted = max(1024, spare * (n - counts[1]) / max(rate, 1e-6))
        x, log_f, r = proposal.ratios(members, w, int(min(limit - counts[0], max_batch,
                                                          wanted)), gen)
        copies = _copies(r, env.value, gen)
        xs.append(np.repeat(x, copies, axis=0))
        logfs.append(np.repeat(log_f, copies, axis=0))
        neg.add(r)
        counts += [len(x), copies.sum(), np.count_nonzero(r > env.value),
                   np.maximum(copies - 1, 0).sum()]
        largest = max(largest, float(r.max(initial=-math.inf)))
        if proposal.method == "mixture":
            env.update(largest, neg.positive_mass)
    if warn:
        neg.warn()
    x_all, logf_all = np.concatenate(xs), np.concatenate(logfs)
    # Proposals are grouped by member and copies adjacent: shuffle, then keep exactly n.
    order = gen.permutation(len(x_all))[:n]
    p, err = neg.estimate()
    return MixtureSample(x=x_all[order], log_f=logf_all[order], n_proposed=int(counts[0]),
                         n_accepted=int(counts[1]), method=proposal.method,
                         envelope=float(env.value), envelope_bound=proposal.bound,
                         n_violations=int(counts[2]), n_duplicates=int(counts[3]),
                         max_ratio=largest, negative_mass=p, negative_mass_error=err)


def _copies(r: NDArray[np.float64], c: float, rng: np.random.Generator) -> NDArray[np.int64]:
    """Events per proposal with ``E[K | r] = max(r, 0) / c``: 0 or 1 where ``r ≤ c``."""
    t = np.maximum(r, 0.0) / c
    whole = np.floor(t)
    return (whole + (rng.random(r.size) < t - whole)).astype(np.int64)
