"""Disjoint train / weight-fit / kernel-centre / test splits, recorded as indices and a hash.

The paper's test is only valid if the events used to fit the GoF hypotheses were never used to
train the members or fit the weights (Sec. 2, Step 4: "to avoid double-dipping"). The splits
are therefore built from one permutation cut into consecutive blocks, so they are disjoint by
construction; the indices are saved with a SHA-256 hash, and loading re-checks both.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from genval._atomic import atomic_write_bytes
from genval.errors import ArtifactError, InputError

__all__ = ["SPLIT_ORDER", "Splits", "check_split_specs", "check_disjoint", "make_splits",
           "hash_events", "share_at_least"]

SPLIT_ORDER = ("train", "weight_fit", "centres", "test")
"""Split names, in the order their blocks are cut from the (shuffled) events."""

SplitSpec = float | tuple[float, float]
_TOL = 1e-9  # fractions are floats from YAML: 0.6 + 0.2 + 0.2 must not count as > 1


def _as_range(name: str, spec: SplitSpec) -> tuple[float, float] | None:
    if isinstance(spec, (int, float)):
        return None
    lo, hi = (float(v) for v in spec)
    if not (0.0 <= lo < hi <= 1.0 + _TOL):
        raise InputError(f"split {name!r}: range [{lo}, {hi}] must satisfy 0 <= start < stop <= 1")
    return lo, hi


def check_split_specs(specs: Mapping[str, SplitSpec | None]) -> None:
    """Refuse split specifications that could overlap or that exceed the events.

    Args:
        specs: split name to a fraction in (0, 1], a ``(start, stop)`` range of fractions, or
            ``None`` (the split is absent or comes from another file).

    Raises:
        InputError: naming the offending splits: fractions outside (0, 1] or summing above 1,
            overlapping ranges, or fractions mixed with ranges.
    """
    given = {n: s for n, s in specs.items() if s is not None}
    ranges = {n: _as_range(n, s) for n, s in given.items()}
    kinds = {r is None for r in ranges.values()}
    if len(kinds) > 1:
        raise InputError("splits mix fractions and [start, stop] ranges; use one form for all")
    if kinds == {True}:  # fractions
        for name, frac in given.items():
            if not 0.0 < float(frac) <= 1.0:  # type: ignore[arg-type]
                raise InputError(f"split {name!r}: fraction {frac} must be in (0, 1]")
        total = sum(float(f) for f in given.values())  # type: ignore[arg-type]
        if total > 1.0 + _TOL:
            parts = " + ".join(f"{n}={f}" for n, f in given.items())
            raise InputError(f"splits overlap: fractions sum to {total:.6g} > 1 ({parts})")
        return
    items = sorted(((r, n) for n, r in ranges.items() if r is not None))
    for (r1, n1), (r2, n2) in zip(items, items[1:], strict=False):
        if r2[0] < r1[1] - _TOL:
            raise InputError(f"splits {n1!r} {list(r1)} and {n2!r} {list(r2)} overlap")


def check_disjoint(indices: Mapping[str, NDArray[np.int64]]) -> None:
    """Raise :class:`InputError` if any two index sets share an event (or one repeats one)."""
    names = list(indices)
    for i, a in enumerate(names):
        if np.unique(indices[a]).size != indices[a].size:
            raise InputError(f"split {a!r} lists some events more than once")
        for b in names[i + 1:]:
            shared = np.intersect1d(indices[a], indices[b])
            if shared.size:
                raise InputError(f"splits {a!r} and {b!r} overlap in {shared.size} events "
                                 f"(first: row {shared[0]})")


@dataclass(frozen=True)
class Splits:
    """Row indices of each split into the event table, and their hash.

    Attributes:
        n_events: rows in the event table the indices refer to.
        indices: split name to sorted int64 row indices. A split absent here comes from
            elsewhere (``data.test_path``).
        seed: seed of the shuffling permutation (``None`` when not shuffled).
        hash: SHA-256 over ``n_events`` and every split's indices.
    """

    n_events: int
    indices: dict[str, NDArray[np.int64]]
    seed: int | None = None
    hash: str = field(default="")

    def __post_init__(self) -> None:
        check_disjoint(self.indices)
        for name, idx in self.indices.items():
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_events):
                raise InputError(f"split {name!r} has indices outside [0, {self.n_events})")
        object.__setattr__(self, "hash", _hash_indices(self.n_events, self.indices))

    def __getitem__(self, name: str) -> NDArray[np.int64]:
        return self.indices[name]

    def sizes(self) -> dict[str, int]:
        """Events per split."""
        return {n: int(i.size) for n, i in self.indices.items()}

    def take(self, x: NDArray[np.float64], name: str) -> NDArray[np.float64]:
        """The rows of ``x`` (the full event table) that belong to split ``name``."""
        if x.shape[0] != self.n_events:
            raise InputError(f"event table has {x.shape[0]} rows but the splits were made for "
                             f"{self.n_events}")
        return x[self.indices[name]]

    def summary(self) -> dict[str, object]:
        """A JSON-able record: sizes, seed and hash (the indices go to :meth:`save`)."""
        return {"n_events": self.n_events, "sizes": self.sizes(), "seed": self.seed,
                "hash": self.hash}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the indices to an ``.npz`` file atomically."""
        buf = io.BytesIO()
        np.savez(buf, n_events=np.int64(self.n_events), hash=np.str_(self.hash),
                 seed=np.int64(-1 if self.seed is None else self.seed),
                 **{f"idx_{n}": i for n, i in self.indices.items()})
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Splits:
        """Read indices written by :meth:`save`, checking the hash and the disjointness.

        Raises:
            ArtifactError: if the file is missing or unreadable, or its hash does not match.
        """
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                n = int(z["n_events"])
                stored = str(z["hash"])
                seed = int(z["seed"])
                indices = {k[4:]: z[k].astype(np.int64) for k in z.files if k.startswith("idx_")}
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"cannot read splits from {p}: {exc}") from exc
        splits = cls(n, indices, None if seed < 0 else seed)
        if splits.hash != stored:
            raise ArtifactError(f"{p}: split indices do not match their recorded hash")
        return splits


def _hash_indices(n_events: int, indices: Mapping[str, NDArray[np.int64]]) -> str:
    h = hashlib.sha256(f"n_events={n_events}".encode())
    for name in sorted(indices):
        h.update(name.encode())
        h.update(np.ascontiguousarray(indices[name], dtype="<i8").tobytes())
    return h.hexdigest()


def hash_events(x: NDArray[np.float64]) -> str:
    """SHA-256 of an event table's shape and float64 bytes: identifies the data a run used."""
    arr = np.ascontiguousarray(x, dtype="<f8")
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def share_at_least(n_needed: int, n_events: int) -> float:
    """The smallest fraction, rounded up to 4 decimals, whose split holds ``n_needed`` events."""
    return math.ceil(n_needed / n_events * 1e4 - _TOL) / 1e4


def make_splits(n_events: int, specs: Mapping[str, SplitSpec | None], *, seed: int | None = 0,
                shuffle: bool = True, min_events: int = 1,
                min_sizes: Mapping[str, tuple[int, str]] | None = None) -> Splits:
    """Cut ``n_events`` rows into disjoint splits.

    The rows are permuted once (when ``shuffle``) and each split takes a consecutive block of
    the permutation: fractions are laid out in :data:`SPLIT_ORDER`, ranges where they say.
    Disjointness therefore holds by construction and is re-checked.

    Args:
        n_events: rows in the event table.
        specs: as in :func:`check_split_specs`; ``None`` drops the split.
        seed: seed of the permutation.
        shuffle: permute the rows first (off: blocks in file order, e.g. time-ordered data).
        min_events: the fewest events any split may hold.
        min_sizes: per-split stricter minima with the reason, e.g.
            ``{"centres": (100, "gof.n_kernels")}``.

    Raises:
        InputError: if the specs overlap or a split would be smaller than its minimum.
    """
    check_split_specs(specs)
    given = {n: specs[n] for n in SPLIT_ORDER if specs.get(n) is not None}
    unknown = set(specs) - set(SPLIT_ORDER)
    if unknown:
        raise InputError(f"unknown split names {sorted(unknown)}; use {SPLIT_ORDER}")
    order = np.random.default_rng(seed).permutation(n_events) if shuffle else np.arange(n_events)
    bounds: dict[str, tuple[int, int]] = {}
    start = 0
    for name, spec in given.items():
        if isinstance(spec, (int, float)):
            size = int(np.floor(float(spec) * n_events + _TOL))
            bounds[name] = (start, start + size)
            start += size
        else:
            lo, hi = spec  # type: ignore[misc]
            bounds[name] = (int(np.floor(lo * n_events + _TOL)),
                            int(np.floor(min(hi, 1.0) * n_events + _TOL)))
    minima = dict(min_sizes or {})
    for name, (lo, hi) in bounds.items():
        need, why = minima.get(name, (min_events, "splits.min_events"))
        if min_events > need:  # name the constraint that actually binds
            need, why = min_events, "splits.min_events"
        if hi - lo < need:
            share = share_at_least(need, n_events)
            fraction = isinstance(given[name], (int, float))
            fix = (f"set splits.{name} to at least {share:g}" if fraction
                   else f"widen the range of splits.{name} to at least {share:g}")
            raise InputError(f"split {name!r} would hold {hi - lo} of {n_events} events, fewer "
                             f"than the {need} required ({why}); {fix} (taking the share from "
                             "another split) or provide more events")
    indices = {n: np.sort(order[lo:hi]).astype(np.int64) for n, (lo, hi) in bounds.items()}
    return Splits(n_events, indices, seed if shuffle else None)
