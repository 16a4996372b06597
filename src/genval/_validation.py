"""Input checks shared by every public entry point."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError

__all__ = ["as_events", "as_event_weights", "as_context", "as_rng", "check_device",
           "MPS_UNSUPPORTED", "check_feature_spread"]


def as_events(x: ArrayLike, *, n_features: int | None = None, min_events: int = 1,
              name: str = "events") -> NDArray[np.float64]:
    """Return ``x`` as a C-contiguous float64 (N, D) array, or raise :class:`InputError`.

    Rejects non-numeric input, wrong dimensionality, a feature count other than ``n_features``,
    fewer than ``min_events`` rows and any NaN/inf (reporting how many rows and the first one).
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim == 1 and n_features == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2D array (N events, D features), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise InputError(f"{name} have {arr.shape[1]} features, expected {n_features}")
    if arr.shape[0] < min_events:
        raise InputError(f"{name}: need at least {min_events} events, got {arr.shape[0]}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InputError(f"{name} contain {rows.size} rows with NaN/inf (first at row {rows[0]})")
    return np.ascontiguousarray(arr)


def as_event_weights(weights: ArrayLike, n_events: int, *, name: str = "event weights",
                     positive_total: bool = True) -> NDArray[np.float64]:
    """Per-event weights as a float64 (N,) array, or raise :class:`InputError`.

    Monte-Carlo weights may be negative; they must be finite, one per event and (with
    ``positive_total``) sum to a positive total, without which no weighted mean is defined.
    """
    try:
        arr = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1 or arr.shape[0] != n_events:
        raise InputError(f"{name} must be one number per event ({n_events},), got shape "
                         f"{arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InputError(f"{name} contain {rows.size} NaN/inf values (first at row {rows[0]})")
    if positive_total and not arr.sum() > 0:
        raise InputError(f"{name} sum to {arr.sum():.6g}: the total weight must be positive")
    return np.ascontiguousarray(arr)


def as_context(context: ArrayLike, n_events: int, n_context: int, *, name: str = "context",
               broadcast: bool = False) -> NDArray[np.float64]:
    """Per-event context features as a C-contiguous float64 (N, C) array, or raise.

    ``context[n]`` is the observed context ``c_n`` of event ``n`` (the conditioning of
    ``f(x | c)``). A 1D array is one context per event when ``C = 1``; with ``broadcast`` a
    single context row ``(C,)`` is repeated for every event.

    Raises:
        InputError: non-numeric values, a shape other than (N, C), or NaN/inf.
    """
    try:
        arr = np.asarray(context, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim == 1 and broadcast and arr.shape[0] == n_context:
        arr = np.broadcast_to(arr, (n_events, n_context))
    elif arr.ndim == 1 and n_context == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape != (n_events, n_context):
        raise InputError(f"{name} must have shape ({n_events}, {n_context}) (one row of "
                         f"{n_context} context features per event), got {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise InputError(f"{name} contain {rows.size} rows with NaN/inf (first at row {rows[0]})")
    return np.ascontiguousarray(arr)


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, a seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def check_feature_spread(x: NDArray[np.float64], names: Sequence[str], *,
                         source: str = "the events") -> None:
    """Refuse a feature that cannot be standardised, naming it with its statistics.

    Every member standardises the features (flows by their mean and standard deviation, KDEs
    by a bandwidth proportional to it): a constant feature has no scale, and one whose
    values reach ~1e154 (squares) or ~1e308 (sums, ranges) overflows float64 on the way.
    Without this check both surface later as "bandwidth must be finite and positive" or as
    NaN losses, which name the symptom, not the feature.

    Raises:
        InputError: naming the feature, its mean, standard deviation, minimum and maximum,
            and what to do.
    """
    if x.shape[0] == 0:
        return
    with np.errstate(all="ignore"):  # overflow is what this looks for
        lo, hi = x.min(axis=0), x.max(axis=0)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        width = hi - lo
        scaled_ok = np.isfinite((x - mean) / std).all(axis=0)
    for j, name in enumerate(names):
        stats = (f"mean {mean[j]:.6g}, std {std[j]:.6g}, min {lo[j]:.6g}, max {hi[j]:.6g} over "
                 f"{x.shape[0]} events")
        if lo[j] == hi[j]:
            raise InputError(f"feature {name!r} in {source} is constant ({stats}): it carries "
                             "no information and cannot be standardised; drop it from "
                             "data.features")
        if not (np.isfinite(mean[j]) and np.isfinite(std[j]) and np.isfinite(width[j])):
            raise InputError(f"feature {name!r} in {source} overflows float64 arithmetic "
                             f"({stats}): its sum, spread or range exceeds 1.8e308; express it "
                             "in other units (e.g. an alias in data.aliases such as "
                             f"'{name}_scaled: {name} / 1e300')")
        if std[j] == 0 or not scaled_ok[j]:
            raise InputError(f"feature {name!r} in {source} is not finite after "
                             f"standardisation ({stats}): its spread underflows float64; "
                             "express it in other units (an alias in data.aliases)")


MPS_UNSUPPORTED = ("device 'mps' is not supported: the flows return their densities and "
                   "accumulate their training losses in float64, which Apple's MPS backend "
                   "does not have; use 'cpu'")
"""Why ``mps`` is refused everywhere a device is chosen (config, pipeline, flows)."""

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|auto")


def check_device(name: str) -> str:
    """``name`` if it is a device genval runs on (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

    Only the spelling is checked; whether CUDA is present is decided when the device is
    resolved (:func:`genval.pipeline.device.resolve_device`).

    Raises:
        InputError: for ``mps`` (:data:`MPS_UNSUPPORTED`) and for unknown names.
    """
    if name.split(":", 1)[0] == "mps":
        raise InputError(MPS_UNSUPPORTED)
    if not _DEVICE.fullmatch(name):
        raise InputError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name
