"""Exact draws ``x_n ~ f(x | c_n; w) = Σ_k w_k f_k(x | c_n)``, one at each given context.

The conditional counterpart of :func:`genval.sampling.sample_mixture`: the contexts are given
(observed, or chosen for targeted oversampling) and each row n needs one event ``x | c_n``.
Weights may be negative and may differ per row (per-bin weights). Each row is drawn by
rejection from a proposal with a proven envelope, so every draw is exact and independent:

* ``|w|`` proposal ``q = Σ_k |w_k| f_k(x | c) / Σ|w|``, envelope ``C = Σ|w|``;
* equal-weight proposal ``q = (1/M') Σ_{k: w_k ≠ 0} f_k(x | c)``, envelope ``C = M' max_k w_k``;

whichever has the smaller C, row by row. A proposal x is accepted with probability
``max(f, 0) / (C q)`` (≤ 1 by construction); rejected rows are proposed again until every row
holds an event. Where f < 0 the events follow ``max(f, 0)`` and the negative mass (the fraction
of ``∫|f|`` where f < 0, averaged over the rows' contexts) is measured from the proposals, as
in the unconditional sampler.

The cost is about C proposals per event. Unlike the unconditional sampler (whose empirical
envelope makes the cost independent of Σ|w|), a proven envelope is needed here because each
context gets one draw: there is no pool in which to return a violating proposal several times.
Ensembles of near-duplicate members (Σ|w| of 10²–10⁴) are therefore expensive to sample
conditionally; ``max_proposals`` bounds the work and raises beyond it.

References:
    Badaracco et al., Step 3 (sampling the w_i f_i mixture) and the conclusions (conditional
    models, targeted oversampling).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_context, as_rng
from genval.errors import InputError, NegativeDensityWarning
from genval.members import Members, log_density_matrix, n_context_of
from genval.row_scaling import scale_log_rows

__all__ = ["ConditionalSample", "sample_conditional_mixture", "row_weights"]


@dataclass(frozen=True)
class ConditionalSample:
    """One event per context row, drawn from the signed conditional mixture.

    Attributes:
        x: (N, D) events, row n drawn given ``context[n]``.
        log_f: (N, M) ``log f_k(x_n | c_n)`` at the events -- reuse it.
        n_proposed: proposals drawn (each one evaluation of every member).
        n_rounds: rejection rounds until every row held an event.
        negative_mass: fraction of ``∫|f(·|c)|`` where f < 0, averaged over the contexts.
        negative_mass_error: its Monte-Carlo standard error.
        max_envelope: the largest envelope constant C over the rows.
    """

    x: NDArray[np.float64]
    log_f: NDArray[np.float64]
    n_proposed: int
    n_rounds: int
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0
    max_envelope: float = 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.x.shape[0] / self.n_proposed if self.n_proposed else float("nan")

    def diagnostics(self) -> dict[str, Any]:
        return {"n_proposed": int(self.n_proposed), "n_rounds": int(self.n_rounds),
                "acceptance_rate": float(self.acceptance_rate),
                "negative_mass": float(self.negative_mass),
                "negative_mass_error": float(self.negative_mass_error),
                "max_envelope": float(self.max_envelope)}


def row_weights(weights: ArrayLike, n_rows: int, n_members: int) -> NDArray[np.float64]:
    """Weights as one row per event (N, M) from shared (M,) or per-row (N, M) weights.

    Raises:
        InputError: wrong shape, non-finite weights, or a row whose weights sum to <= 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape == (n_members,):
        w = np.broadcast_to(w, (n_rows, n_members))
    if w.shape != (n_rows, n_members) or not np.all(np.isfinite(w)):
        raise InputError(f"weights must be ({n_members},) or ({n_rows}, {n_members}) finite "
                         f"numbers, got shape {w.shape}")
    if n_rows and not np.all(w.sum(axis=1) > 0):
        raise InputError("weights sum to <= 0 on some rows: not a density")
    return w


def _proposals(w: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row: member probabilities π (N, M) and the proven envelope C with f ≤ C q."""
    abs_w = np.abs(w)
    abs_c = abs_w.sum(axis=1)
    active = w != 0
    n_active = active.sum(axis=1)
    mix_c = n_active * np.max(np.where(active, w, -np.inf), axis=1)
    use_abs = abs_c <= mix_c
    probs = np.where(use_abs[:, None], abs_w / abs_c[:, None], active / n_active[:, None])
    return probs, np.where(use_abs, abs_c, mix_c)


def _draw(members: Members, member: NDArray[np.int64], context: NDArray[np.float64],
          rng: np.random.Generator) -> NDArray[np.float64]:
    """Row i from member ``member[i]`` given ``context[i]`` (batched when the members can)."""
    order = np.argsort(member, kind="stable")
    counts = np.bincount(member, minlength=members.n_members)
    batched = getattr(members, "sample_members", None)
    if callable(batched):
        grouped = np.asarray(batched(counts, rng, context=context[order]), dtype=np.float64)
    else:
        parts = [members.sample(int(c), k, rng, context=context[order][start:start + c])
                 for k, (start, c) in enumerate(zip(np.cumsum(counts) - counts, counts,
                                                    strict=True)) if c > 0]
        grouped = np.concatenate(parts) if parts else np.empty((0, members.n_features))
    out = np.empty_like(grouped)
    out[order] = grouped
    return out


def sample_conditional_mixture(members: Members, weights: ArrayLike, context: ArrayLike,
                               rng: np.random.Generator | int | None = None, *,
                               max_proposals: int | None = None, warn: bool = True
                               ) -> ConditionalSample:
    """One exact draw ``x_n ~ Σ_k w_k f_k(x | c_n)`` per context row (module docstring).

    Args:
        members: conditional members (``n_context > 0``).
        weights: (M,) shared or (N, M) per-row mixture weights, possibly negative.
        context: (N, C) contexts, one event drawn at each.
        rng: generator or seed.
        max_proposals: raise beyond this many proposals (default ``20 Σ_n C_n + 10^5``).
        warn: issue a :class:`~genval.errors.NegativeDensityWarning` when f < 0 was seen.

    Raises:
        InputError: unconditional members, malformed weights or contexts, or a mixture so
            negative that ``max_proposals`` is reached.
    """
    c_dim = n_context_of(members)
    if c_dim == 0:
        raise InputError("sample_conditional_mixture needs conditional members (n_context > 0);"
                         " use genval.sampling.sample_mixture")
    ctx = as_context(context, np.shape(context)[0], c_dim)
    n, m = ctx.shape[0], members.n_members
    w = row_weights(weights, n, m)
    gen = as_rng(rng)
    probs, envelope = _proposals(w)
    limit = max_proposals if max_proposals is not None else int(20 * envelope.sum()) + 100_000
    x = np.empty((n, members.n_features))
    log_f = np.empty((n, m))
    pending = np.arange(n)
    n_proposed = rounds = 0
    sums = np.zeros(5)  # Σa, Σb, Σa², Σb², Σab with a = max(−r, 0), b = |r|
    while pending.size:
        if n_proposed >= limit:
            raise InputError(f"{pending.size} of {n} contexts still without an event after "
                             f"{n_proposed} proposals: the mixture is non-positive almost "
                             "everywhere there")
        rounds += 1
        p = probs[pending]
        # One member per pending row: inverse CDF of its proposal probabilities.
        pick = np.minimum((np.cumsum(p, axis=1) < gen.random(pending.size)[:, None]).sum(axis=1),
                          m - 1)
        xs = _draw(members, pick, ctx[pending], gen)
        lf = log_density_matrix(members, xs, ctx[pending])
        scaled, _ = scale_log_rows(lf)
        f = np.einsum("nk,nk->n", scaled, w[pending])
        q = np.einsum("nk,nk->n", scaled, p)
        # Unresolved numerators (|f| within rounding of Σ|w|F) count as 0, as unconditionally.
        resolved = np.abs(f) > m * np.finfo(np.float64).eps * np.einsum(
            "nk,nk->n", scaled, np.abs(w[pending]))
        r = np.where(resolved, f, 0.0) / q
        a, b = np.maximum(-r, 0.0), np.abs(r)
        sums += [a.sum(), b.sum(), a @ a, b @ b, a @ b]
        accept = gen.random(pending.size) * envelope[pending] < np.maximum(r, 0.0)
        x[pending[accept]] = xs[accept]
        log_f[pending[accept]] = lf[accept]
        n_proposed += pending.size
        pending = pending[~accept]
    neg, err = _negative_mass(sums, n_proposed)
    if warn and neg > 0:
        warnings.warn(f"the conditional mixture f(x | c; w) is negative on a fraction {neg:.3g} "
                      f"± {err:.2g} of ∫|f| ({n_proposed} proposals); events there follow "
                      "max(f, 0)", NegativeDensityWarning, stacklevel=2)
    return ConditionalSample(x, log_f, n_proposed, rounds, neg, err,
                             float(envelope.max(initial=1.0)))


def _negative_mass(sums: NDArray[np.float64], n: int) -> tuple[float, float]:
    """Ratio estimate ``Σa / Σb`` with its delta-method error (as genval.sampling)."""
    sa, sb, saa, sbb, sab = sums
    if n < 2 or sb <= 0:
        return 0.0, 0.0
    p = sa / sb
    resid = max(saa - 2 * p * sab + p * p * sbb, 0.0)
    return float(p), float(math.sqrt(resid / (n * (n - 1))) / (sb / n))
