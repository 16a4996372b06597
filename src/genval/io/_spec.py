"""Data specifications ``file.ext[:key]`` and the event table they read into."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from genval.errors import InputError

__all__ = ["FORMATS", "DataSpec", "EventTable", "parse_spec", "select_columns", "default_names"]

FORMATS = (".npy", ".npz", ".csv", ".parquet", ".h5", ".root")
_ALIASES = {".pq": ".parquet", ".hdf5": ".h5", ".hdf": ".h5"}
# The key is whatever follows the first ':' after a known extension, so dataset paths such as
# "file.h5:/group/events" and trees in directories "file.root:dir/tree" both work.
_SPEC = re.compile(r"^(?P<path>.*?\.(?P<ext>npy|npz|csv|parquet|pq|h5|hdf5|hdf|root))"
                   r"(?::(?P<key>.+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``file.ext[:key]``: the path, its normalised format and the optional key."""

    path: Path
    fmt: str
    key: str | None

    def __str__(self) -> str:
        return f"{self.path}:{self.key}" if self.key else str(self.path)


@dataclass(frozen=True)
class EventTable:
    """Events read from a file: ``x`` (N, D) float64 and the D feature names.

    Attributes:
        x: the events, after the selection.
        names: the D feature names.
        source: where they came from, for messages (the first file of several).
        files: every file read, in order (``path:key``).
        n_read: with a selection, the events read before it; ``None`` without one.
        selection: the selection applied, as written.
        weights: the per-event weights (N,) when a weight column was read (finite, possibly
            negative); None for unweighted events.
        weight_name: that column's name, or None.
    """

    x: NDArray[np.float64]
    names: list[str]
    source: str
    files: tuple[str, ...] = ()
    n_read: int | None = None
    selection: str | None = None
    weights: NDArray[np.float64] | None = None
    weight_name: str | None = None

    @property
    def n_events(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])


def parse_spec(spec: str | Path) -> DataSpec:
    """Split ``"events.root:Events"`` into path, format and key.

    Raises:
        InputError: if the extension is not one of :data:`FORMATS`.
    """
    text = str(spec)
    match = _SPEC.match(text)
    if match is None:
        raise InputError(f"cannot tell the format of {text!r}: use a file ending in one of "
                         f"{', '.join(FORMATS)} (optionally followed by ':key')")
    ext = "." + match["ext"].lower()
    return DataSpec(Path(match["path"]), _ALIASES.get(ext, ext), match["key"])


def default_names(n: int) -> list[str]:
    """Names given to unnamed columns: ``x0, x1, ...``."""
    return [f"x{i}" for i in range(n)]


def missing_feature_message(name: str, available: Sequence[str], source: str) -> str:
    """``feature 'foo' not found in f.csv; available: ... (did you mean 'fo'?)``."""
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
    return f"feature {name!r} not found in {source}; available: {shown}{hint}"


def select_columns(names: Sequence[str], features: Sequence[str] | None,
                   source: str) -> list[int]:
    """Column positions of ``features`` among ``names`` (all columns when ``features`` is None).

    Raises:
        InputError: naming the first missing feature and the closest available name.
    """
    if features is None:
        return list(range(len(names)))
    lookup = {n: i for i, n in enumerate(names)}
    positions = []
    for feat in features:
        if feat not in lookup:
            raise InputError(missing_feature_message(feat, list(names), source))
        positions.append(lookup[feat])
    return positions
