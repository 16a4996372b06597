"""Exact sampling from a signed mixture ``f(x) = Σ_k w_k f_k(x)``.

Weights of a w_i f_i ensemble may be negative. Proposals come from the positive envelope
``g(x) = Σ_k |w_k| f_k(x)`` (pick member k with probability ``|w_k| / Σ|w|``, sample it) and are
accepted with probability ``f(x) / g(x) ≤ 1``. The result is exact: no bounding box and no
guessed maximum of f. The expected acceptance rate is ``1 / Σ|w_k|`` when f ≥ 0 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_rng
from genval.errors import InputError
from genval.members import Members, log_density_matrix
from genval.row_scaling import scale_log_rows

__all__ = ["MixtureSample", "sample_mixture", "mixture_ratio"]


@dataclass(frozen=True)
class MixtureSample:
    """Events drawn from a signed mixture.

    Attributes:
        x: accepted events (n, D), in random order.
        log_f: ``log F`` at the accepted events (n, M) -- reuse it instead of re-evaluating.
        n_proposed: proposals drawn from the envelope.
        n_accepted: proposals accepted (a few more than ``len(x)``: the last batch overshoots).
    """

    x: NDArray[np.float64]
    log_f: NDArray[np.float64]
    n_proposed: int
    n_accepted: int

    @property
    def acceptance_rate(self) -> float:
        """Empirical acceptance rate; its expectation is ``1 / Σ|w_k|`` where f ≥ 0."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")


def mixture_ratio(log_f: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """``Σ w_k F_k / Σ |w_k| F_k`` per row of ``log F`` (N, M), computed without underflow.

    Rows are rescaled by their maximum over the members with a nonzero weight first
    (:func:`genval.row_scaling.scale_log_rows`): the ratio is invariant to that scale, and the
    denominator is then at least that member's |w_k| > 0. The scaling sets densities below
    1.2e-38 of the row maximum to 0 (no subnormal operands, :mod:`genval.subnormal`); that
    moves the ratio by < 1.2e-38 ‖w‖₁ / (Σ|w_k| F_k / max F), below the 1.1e-16 resolution of
    the uniform it is compared with except at events the envelope proposes with probability
    < 1e-22.
    """
    active = weights != 0
    if not active.all():  # members of weight 0 add nothing to either sum
        log_f, weights = log_f[:, active], weights[active]
    scaled, _ = scale_log_rows(log_f)
    return (scaled @ weights) / (scaled @ np.abs(weights))


def _draw_from_members(members: Members, counts: NDArray[np.int64],
                       rng: np.random.Generator) -> NDArray[np.float64]:
    batched = getattr(members, "sample_members", None)
    if callable(batched):  # flow ensembles sample every member in one pass
        return np.asarray(batched(counts, rng), dtype=np.float64)
    parts = [members.sample(int(c), k, rng) for k, c in enumerate(counts) if c > 0]
    return np.concatenate(parts) if parts else np.empty((0, members.n_features))


def sample_mixture(members: Members, weights: ArrayLike, n: int,
                   rng: np.random.Generator | int | None = None, *,
                   max_proposals: int | None = None, max_batch: int = 2**18) -> MixtureSample:
    """Draw ``n`` events exactly from ``Σ_k w_k f_k`` by envelope rejection.

    Args:
        members: the density members.
        weights: (M,) mixture weights, possibly negative, with ``Σ w > 0``.
        n: number of events wanted.
        rng: generator or seed.
        max_proposals: stop with an error beyond this many proposals (default 20 times the
            expected ``n Σ|w|``, plus 10^5), guarding against a mixture that is negative almost
            everywhere.
        max_batch: proposals evaluated at once. Only accepted events are kept, so memory stays
            bounded even when near-duplicate members make ``Σ|w|`` (and the number of
            proposals) large.

    Returns:
        :class:`MixtureSample` with the events, their ``log F`` and the acceptance rate.
    """
    gen = as_rng(rng)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (members.n_members,) or not np.all(np.isfinite(w)):
        raise InputError(f"weights must be {members.n_members} finite numbers, got shape {w.shape}")
    if w.sum() <= 0:
        raise InputError(f"weights sum to {w.sum():.3g} <= 0: not a density")
    abs_w = np.abs(w)
    probs = abs_w / abs_w.sum()
    limit = (max_proposals if max_proposals is not None
             else int(20 * int(n) * abs_w.sum()) + 100_000)
    accepted_x: list[NDArray[np.float64]] = []
    accepted_logf: list[NDArray[np.float64]] = []
    n_accepted = n_proposed = 0
    rate = 1.0 / abs_w.sum()
    while n_accepted < n:
        if n_proposed >= limit:
            raise InputError(f"only {n_accepted} of {n} events accepted after {n_proposed} "
                             "proposals: the mixture is non-positive almost everywhere")
        wanted = max(1024, 1.2 * (n - n_accepted) / rate)
        batch = int(min(limit - n_proposed, max_batch, wanted))
        counts = gen.multinomial(batch, probs)
        x = _draw_from_members(members, counts, gen)
        log_f = log_density_matrix(members, x)
        keep = gen.random(len(x)) < mixture_ratio(log_f, w)
        accepted_x.append(x[keep])
        accepted_logf.append(log_f[keep])
        n_accepted += int(keep.sum())
        n_proposed += len(x)
        rate = max(n_accepted / n_proposed, 1e-6)
    x_all = np.concatenate(accepted_x)
    logf_all = np.concatenate(accepted_logf)
    # Proposals are grouped by member: shuffle, then keep exactly n.
    order = gen.permutation(len(x_all))[:n]
    return MixtureSample(x=x_all[order], log_f=logf_all[order], n_proposed=n_proposed,
                         n_accepted=n_accepted)
