"""Row scaling of member (and kernel) density matrices: the one place it happens.

Every quantity built from a density matrix ``F[n, k] = f_k(x_n)`` -- the weight fit of paper
Eq. (1), its sandwich covariance (Eq. 2), the band of Eq. (3), the statistic of Eq. (5), the
acceptance ratio of the signed-mixture sampler -- is either invariant to a per-event scale or
needs it only as an additive ``log`` constant. Dividing each row by its maximum over the members
keeps the values in ``(0, 1]`` and avoids underflow far in the tails, where ``exp(log F)``
would be 0 for every member.

References:
    Badaracco et al., Eqs. (1)-(3) and (5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError
from genval.subnormal import TINY32, exp_flushed, flush_subnormal

__all__ = ["scale_log_rows", "prepare_density_matrix", "ScaledRows", "scale_rows"]


def scale_log_rows(log_f: NDArray[np.float64], row_max: NDArray[np.float64] | None = None
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Split log-densities (N, M) into row-scaled densities and per-row log-scales.

    Returns ``(S, s)`` with ``log_f[n, k] = s[n] + log S[n, k]`` and ``max_k S[n, k] = 1``. No
    validation: a row that is ``-inf`` everywhere gives NaN (use
    :func:`prepare_density_matrix` to reject such input).

    Entries of S below 1.2e-38 (float32's normal range) are exactly 0: subnormal operands make
    products 10-100x slower on Intel cores (:mod:`genval.subnormal`), and such an entry changes
    ``f_n = S_n·w`` by < 1.2e-38 ‖w‖₁, 22 orders below the rounding of ``f_n`` (~1e-16 |w_k| at
    the member with ``S_nk = 1``); gradients and Hessians, sums of ``S/f`` and ``S Sᵀ/f²``,
    likewise.

    Args:
        log_f: (N, M) log-densities.
        row_max: ``log_f.max(axis=1)`` when the caller has it already.
    """
    s = log_f.max(axis=1) if row_max is None else row_max
    scaled = log_f - s[:, None]
    return exp_flushed(scaled, out=scaled), s


def prepare_density_matrix(F: ArrayLike, *, log: bool = False, name: str = "F"
                           ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate a member density matrix and split it into row-scaled values and log-scales.

    Returns ``(S, c)`` with ``F[n, k] = exp(c[n]) · S[n, k]`` and ``max_k S[n, k] = 1``.
    Every quantity the fit needs (``F_n / f_n``, the Hessian, the covariance) is invariant to a
    per-row scale, so working with ``S`` avoids underflow far in the tails; only the value of
    the NLL needs ``c``.

    Args:
        F: (N, M) densities, or log-densities when ``log=True``.
        log: whether ``F`` holds log-densities (``-inf`` allowed, meaning density 0).
        name: what to call the matrix in error messages.

    Raises:
        InputError: wrong shape, NaN, +inf, negative densities, or a row where every member is 0.
    """
    arr = np.asarray(F, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2D array (N events, M members), got shape {arr.shape}")
    if log:
        row_max = arr.max(axis=1)  # NaN propagates into the row maximum
        suspicious = not np.all(np.isfinite(row_max))
    else:
        row_max_linear = arr.max(axis=1)
        suspicious = not (np.isfinite(row_max_linear).all() and arr.min() >= 0)
    if suspicious:  # one cheap pass above; the detailed diagnosis only on failure
        _diagnose(arr, log, name)
    if not log:
        with np.errstate(divide="ignore"):
            row_max = np.log(row_max_linear)
    dead = ~np.isfinite(row_max)
    if dead.any():
        rows = np.flatnonzero(dead)
        raise InputError(f"{rows.size} events have zero density under every member (first at "
                         f"event {rows[0]}): the mixture cannot describe them")
    if log:
        return scale_log_rows(arr, row_max)
    # the same flush as scale_log_rows, for the same reason
    return flush_subnormal(arr / np.exp(row_max)[:, None], tiny=TINY32), row_max


def _diagnose(arr: NDArray[np.float64], log: bool, name: str) -> None:
    """Raise :class:`InputError` describing the first kind of invalid entry in ``arr``."""
    nan = np.isnan(arr)
    if nan.any():
        raise InputError(f"{name} has {int(nan.sum())} NaN entries "
                         f"(first at event {np.argwhere(nan)[0][0]})")
    if np.isposinf(arr).any():
        raise InputError(f"{name} has {int(np.isposinf(arr).sum())} +inf entries")
    bad = np.isneginf(arr) | (arr < 0)
    if not log and bad.any():
        raise InputError(f"{name} has {int(bad.sum())} negative densities "
                         f"(first at event {np.argwhere(bad)[0][0]}): densities must be >= 0")


@dataclass(frozen=True)
class ScaledRows:
    """Member and kernel densities divided by the row maximum of F.

    Attributes:
        f: (N, M) ``F / s``, each row's maximum is 1.
        g: (N, K) ``G / s``.
        log_s: (N,) ``log s``; ``−Σ log s`` is added back to report absolute NLLs.
    """

    f: NDArray[np.float64]
    g: NDArray[np.float64]
    log_s: NDArray[np.float64]


def scale_rows(f: ArrayLike, g: ArrayLike, *, log: bool = False) -> ScaledRows:
    """Row-scale F and G by F's row maximum (given as densities, or log-densities with ``log``).

    Raises:
        InputError: shapes disagree, values are NaN/+inf, densities are negative, or every
            member is zero at some event.
    """
    fa = np.asarray(f, dtype=np.float64)
    ga = np.asarray(g, dtype=np.float64)
    if fa.ndim == 1:
        fa = fa[:, None]
    if fa.ndim != 2 or ga.ndim != 2 or fa.shape[0] != ga.shape[0]:
        raise InputError(f"F must be (N, M) and G (N, K) with the same N, got {fa.shape} and "
                         f"{ga.shape}")
    if fa.shape[0] == 0:
        raise InputError("no test events")
    for name, arr in (("F", fa), ("G", ga)):
        bad = np.isnan(arr) | np.isposinf(arr) | (np.isneginf(arr) if not log else False)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise InputError(f"{name} has NaN/inf on {rows.size} events (first at row {rows[0]})")
    if not log and (ga < 0).any():
        raise InputError("G must hold densities (>= 0); pass log=True for log-densities")
    # F's row scaling is the weight fit's (same checks: negative densities, dead rows).
    f_scaled, log_s = prepare_density_matrix(fa, log=log)
    # Kernel densities below 1.2e-38 of the row's largest member density are set to 0: they
    # would be subnormal in the float32 Hessians (10-100x slower on Intel cores, see
    # genval.subnormal), and change f = F̃φ + G̃a by < 1.2e-38 |a|₁, far below its rounding.
    if log:
        g_scaled = ga - log_s[:, None]
        exp_flushed(g_scaled, out=g_scaled)
    else:
        g_scaled = flush_subnormal(ga / np.exp(log_s)[:, None], tiny=TINY32)
    return ScaledRows(f_scaled, g_scaled, log_s)
