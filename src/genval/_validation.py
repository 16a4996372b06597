"""Input checks shared by every public entry point."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval.errors import InputError

__all__ = ["as_events", "as_event_weights", "as_context", "as_rng", "check_device",
           "MPS_UNSUPPORTED"]


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
