"""Context bins: which context region each event belongs to.

The conditional test of genval runs the test of Eq. (5) within each context region and combines
the evidence (Badaracco et al., conclusions). A region is a cell of the grid spanned by bin
edges on some of the context features, e.g. the leading-jet pT in ``[200, 400, 800, inf)``
GeV, or pT times |η| bins. Edges may be infinite, so a last bin can be open-ended.

Bins are half-open ``[lo, hi)``; the last edge of a feature is included when it is finite
(histogram semantics, as in :func:`numpy.histogram`). Events outside every bin are either an
error (the default: a silently dropped event is a wrong test) or, with ``outside="drop"``,
marked ``-1`` and left out by the caller.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_context
from genval.errors import InputError

__all__ = ["ContextBins"]


def _edges(values: ArrayLike, name: str) -> tuple[float, ...]:
    try:
        e = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bin edges of {name} must be numbers: {exc}") from exc
    if e.size < 2 or np.isnan(e).any() or not np.all(np.diff(e) > 0):
        raise InputError(f"bin edges of {name} must be at least two strictly increasing numbers, "
                         f"got {e.tolist()}")
    return tuple(float(v) for v in e)


@dataclass(frozen=True)
class ContextBins:
    """A grid of bins on chosen context features.

    Args:
        features: indices of the binned context features (columns of the context array).
        edges: one increasing edge list per binned feature (``±inf`` allowed).
        n_context: C, the number of context features the contexts have.
        names: optional names of all C context features (for labels and the report).

    Raises:
        InputError: edges that are not increasing, features out of range or repeated,
            or names that do not match ``n_context``.
    """

    features: tuple[int, ...]
    edges: tuple[tuple[float, ...], ...]
    n_context: int
    names: tuple[str, ...] | None = None

    def __init__(self, features: Sequence[int], edges: Sequence[ArrayLike], n_context: int,
                 names: Sequence[str] | None = None) -> None:
        feats = tuple(int(f) for f in features)
        if len(feats) < 1 or len(feats) != len(edges):
            raise InputError(f"need one edge list per binned feature: {len(feats)} features, "
                             f"{len(edges)} edge lists")
        if int(n_context) != n_context or n_context < 1:
            raise InputError(f"n_context must be a positive integer, got {n_context!r}")
        if len(set(feats)) != len(feats) or min(feats) < 0 or max(feats) >= n_context:
            raise InputError(f"features must be distinct indices in 0..{n_context - 1}, "
                             f"got {list(feats)}")
        if names is not None and len(names) != n_context:
            raise InputError(f"{len(names)} names for {n_context} context features")
        label = (lambda f: names[f]) if names is not None else (lambda f: f"c{f}")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "edges", tuple(_edges(e, label(f))
                                                for f, e in zip(feats, edges, strict=True)))
        object.__setattr__(self, "n_context", int(n_context))
        object.__setattr__(self, "names", None if names is None else tuple(map(str, names)))

    @classmethod
    def single(cls, n_context: int, feature: int = 0, names: Sequence[str] | None = None
               ) -> ContextBins:
        """One bin holding every context (the conditional test without binning)."""
        return cls([feature], [[-np.inf, np.inf]], n_context, names)

    @property
    def shape(self) -> tuple[int, ...]:
        """Bins per binned feature."""
        return tuple(len(e) - 1 for e in self.edges)

    @property
    def n_bins(self) -> int:
        return int(np.prod(self.shape))

    def feature_name(self, feature: int) -> str:
        return self.names[feature] if self.names is not None else f"c{feature}"

    @property
    def labels(self) -> list[str]:
        """One text label per bin, in bin order (the last binned feature varies fastest)."""
        parts = []
        for f, e in zip(self.features, self.edges, strict=True):
            name = self.feature_name(f)
            parts.append([f"{name} in [{e[i]:.6g}, {e[i + 1]:.6g}"
                          + (")" if i + 2 < len(e) or not np.isfinite(e[-1]) else "]")
                          for i in range(len(e) - 1)])
        return [" & ".join(combo) for combo in itertools.product(*parts)]

    def bounds(self, b: int) -> dict[int, tuple[float, float]]:
        """``{feature: (lo, hi)}`` of bin ``b``."""
        if not 0 <= b < self.n_bins:
            raise InputError(f"bin {b} out of range 0..{self.n_bins - 1}")
        idx = np.unravel_index(b, self.shape)
        return {f: (e[i], e[i + 1]) for f, e, i in zip(self.features, self.edges, idx,
                                                        strict=True)}

    def assign(self, context: ArrayLike, *, outside: str = "error") -> NDArray[np.int64]:
        """The bin of each event's context (N,), ``-1`` outside every bin (``outside="drop"``).

        Raises:
            InputError: a malformed context, or (``outside="error"``) contexts outside the
                edges, with how many and the first.
        """
        if outside not in ("error", "drop"):
            raise InputError(f"outside must be 'error' or 'drop', got {outside!r}")
        ctx = as_context(context, np.shape(context)[0], self.n_context)
        index = np.zeros(ctx.shape[0], dtype=np.int64)
        inside = np.ones(ctx.shape[0], dtype=bool)
        for f, e, size in zip(self.features, self.edges, self.shape, strict=True):
            v, edges = ctx[:, f], np.asarray(e)
            i = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, size - 1)
            inside &= (v >= edges[0]) & ((v < edges[-1]) | (np.isfinite(edges[-1])
                                                            & (v == edges[-1])))
            index = index * size + i
        if not inside.all():
            bad = np.flatnonzero(~inside)
            if outside == "error":
                raise InputError(
                    f"{bad.size} of {inside.size} contexts lie outside the context bins (first: "
                    f"row {bad[0]}, context {ctx[bad[0]].tolist()}); widen the edges (±inf is "
                    "allowed) or drop them explicitly (outside='drop')")
            index[bad] = -1
        return index

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite edges as the strings "inf" / "-inf")."""
        return {"features": list(self.features), "n_context": self.n_context,
                "edges": [[v if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in e]
                          for e in self.edges],
                "names": None if self.names is None else list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContextBins:
        return cls(data["features"], [[float(v) for v in e] for e in data["edges"]],
                   int(data["n_context"]), data.get("names"))
