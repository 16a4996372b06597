"""Read event tables from numpy, CSV, parquet, HDF5 and ROOT files, selecting features by name.

Every reader returns named columns; formats without names (a plain 2D ``.npy``) call their
columns ``x0, x1, ...``. Heavy readers import their library only when used and fail with the
extra to install (``pip install 'genval[root]'``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval._optional import require
from genval._validation import as_event_weights, as_events
from genval.errors import InputError
from genval.io._spec import (
    DataSpec,
    EventTable,
    default_names,
    missing_feature_message,
    parse_spec,
    select_columns,
)

__all__ = ["read_events"]

Columns = tuple[list[str], Any]  # names, and a callable name-list -> list of 1D arrays


def read_events(spec: str | Path, features: Sequence[str] | None = None, *,
                n_features: int | None = None, min_events: int = 1,
                weight: str | None = None, weight_required: bool = True) -> EventTable:
    """Read events from ``spec`` = ``file.ext[:key]``.

    Args:
        spec: ``.npy``; ``.npz[:array]``; ``.csv`` (header row of names, or none);
            ``.parquet``; ``.h5:dataset`` (2D, compound, or a group of 1D datasets);
            ``.root:tree`` (a TTree or RNTuple of flat numeric branches).
        features: names to read, in this order; ``None`` reads every column.
        n_features: if given, the number of features the caller expects.
        min_events: the fewest events accepted.
        weight: the column (branch) holding per-event weights, read with the features and
            never one of them (``features=None`` then reads every other column).
        weight_required: a missing ``weight`` column is an error; False reads the file as
            unweighted instead (``EventTable.weights`` is None).

    Returns:
        :class:`EventTable` with float64 ``x`` (N, D), its feature names and the weights.

    Raises:
        InputError: missing file, unknown key, feature or weight column (with a
            did-you-mean), non-numeric or jagged columns, NaN/inf rows or weights, a feature
            count other than ``n_features``, a weight column that is also a feature.
        MissingDependencyError: if the format's optional library is not installed.
    """
    ds = parse_spec(spec)
    if not ds.path.is_file():
        raise InputError(f"data file not found: {ds.path}")
    reader = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv,
              ".parquet": _read_parquet, ".h5": _read_h5, ".root": _read_root}[ds.fmt]
    names, load = reader(ds)
    if weight is not None and weight not in names:
        if weight_required:
            raise InputError(missing_feature_message(weight, list(names), str(ds))
                             .replace("feature", "weight column", 1))
        weight = None
    if weight is not None and features is not None and weight in features:
        raise InputError(f"{ds}: {weight!r} is both a feature and the weight column")
    candidates = [n for n in names if n != weight]
    chosen = [candidates[i] for i in select_columns(candidates, features, str(ds))]
    # The weight column comes in the same read as the features (one pass over the file).
    cols = load(chosen if weight is None else [*chosen, weight])
    if not chosen:
        raise InputError(f"{ds}: no columns to read")
    weights = None
    if weight is not None:
        weights = _stack(cols[-1:], [weight], str(ds))[:, 0]
        cols = cols[:-1]
    x = as_events(_stack(cols, chosen, str(ds)), n_features=n_features, min_events=min_events,
                  name=f"events in {ds}")
    if weights is not None:
        weights = as_event_weights(weights, x.shape[0], name=f"weights {weight!r} in {ds}",
                                   positive_total=False)
    return EventTable(x=x, names=chosen, source=str(ds), weights=weights, weight_name=weight)


def _stack(cols: list[NDArray[Any]], names: list[str], source: str) -> NDArray[np.float64]:
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise InputError(f"{source}: columns have different lengths {sorted(lengths)}")
    out = []
    for name, col in zip(names, cols, strict=True):
        arr = np.asarray(col)
        if arr.dtype == object or arr.ndim != 1:
            raise InputError(f"{source}: column {name!r} is not one number per event (jagged or "
                             "multi-dimensional); flatten or select other features")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{source}: column {name!r} is not numeric (dtype {arr.dtype})")
        out.append(arr.astype(np.float64))
    return np.column_stack(out)


def _from_array(arr: NDArray[Any], source: str, names: list[str] | None = None) -> Columns:
    """Columns of a structured, 2D or 1D array."""
    if arr.dtype.names:
        return list(arr.dtype.names), lambda chosen: [arr[n] for n in chosen]
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{source}: expected a 2D array (N events, D features), got shape "
                         f"{arr.shape}")
    cols = names if names is not None else default_names(arr.shape[1])
    if len(cols) != arr.shape[1]:
        raise InputError(f"{source}: {len(cols)} feature names for {arr.shape[1]} columns")
    lookup = {n: i for i, n in enumerate(cols)}
    return cols, lambda chosen: [arr[:, lookup[n]] for n in chosen]


def _read_npy(ds: DataSpec) -> Columns:
    try:
        arr = np.load(ds.path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{ds}: not a plain numeric .npy file ({exc})") from exc
    return _from_array(arr, str(ds))


def _read_npz(ds: DataSpec) -> Columns:
    with np.load(ds.path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if ds.key is not None:
        if ds.key not in arrays:
            raise InputError(missing_feature_message(ds.key, list(arrays), str(ds.path))
                             .replace("feature", "array", 1))
        return _from_array(arrays[ds.key], str(ds))
    if "x" in arrays and "features" in arrays:  # the layout write_events produces
        return _from_array(arrays["x"], str(ds), [str(n) for n in arrays["features"]])
    if len(arrays) == 1:
        return _from_array(next(iter(arrays.values())), str(ds))
    if all(a.ndim == 1 for a in arrays.values()):  # one array per feature
        return list(arrays), lambda chosen: [arrays[n] for n in chosen]
    raise InputError(f"{ds.path} holds several arrays {list(arrays)}: name one as file.npz:key")


def _read_csv(ds: DataSpec) -> Columns:
    with open(ds.path, newline="", encoding="utf-8") as handle:
        first = next(csv.reader(handle), None)
    if first is None:
        raise InputError(f"{ds}: empty CSV file")
    try:  # a first row of numbers means no header
        [float(v) for v in first]
        header = None
    except ValueError:
        header = [h.strip() for h in first]
    try:
        data = np.loadtxt(ds.path, delimiter=",", skiprows=0 if header is None else 1, ndmin=2,
                          dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{ds}: cannot parse as numbers: {exc}") from exc
    return _from_array(data, str(ds), header)


def _read_parquet(ds: DataSpec) -> Columns:
    pq = require("pyarrow.parquet", "io", purpose="reading .parquet files")
    names = list(pq.read_schema(ds.path).names)

    def load(chosen: list[str]) -> list[NDArray[Any]]:
        table = pq.read_table(ds.path, columns=chosen)
        return [table.column(n).to_numpy() for n in chosen]

    return names, load


def _read_h5(ds: DataSpec) -> Columns:
    h5py = require("h5py", "io", purpose="reading .h5 files")
    with h5py.File(ds.path, "r") as f:
        if ds.key is None:
            keys = list(f.keys())
            if len(keys) != 1:
                raise InputError(f"{ds.path} holds {keys}: name the dataset as file.h5:dataset")
            key = keys[0]
        else:
            key = ds.key
        if key not in f:
            raise InputError(missing_feature_message(key, list(f.keys()), str(ds.path))
                             .replace("feature", "dataset", 1))
        obj = f[key]
        if isinstance(obj, h5py.Group):  # a group of 1D datasets, one per feature
            arrays = {k: obj[k][()] for k in obj if isinstance(obj[k], h5py.Dataset)}
            return list(arrays), lambda chosen: [arrays[n] for n in chosen]
        arr = obj[()]
        names = obj.attrs.get("features")
    names_list = None if names is None else [n.decode() if isinstance(n, bytes) else str(n)
                                             for n in names]
    return _from_array(np.asarray(arr), str(ds), names_list)


def _read_root(ds: DataSpec) -> Columns:
    uproot = require("uproot", "root", purpose="reading .root files")
    with uproot.open(ds.path) as f:
        trees = [k.rsplit(";", 1)[0] for k, c in f.classnames().items()
                 if c in ("TTree", "ROOT::RNTuple")]
    if ds.key is None:
        if len(trees) != 1:
            raise InputError(f"{ds.path} holds trees {trees}: name one as file.root:tree")
        key = trees[0]
    else:
        key = ds.key
    f = uproot.open(ds.path)
    try:
        tree = f[key]
    except KeyError:
        f.close()
        raise InputError(missing_feature_message(key, trees, str(ds.path))
                         .replace("feature", "tree", 1)) from None
    names = list(tree.keys())

    def load(chosen: list[str]) -> list[NDArray[Any]]:
        try:
            arrays = tree.arrays(chosen, library="np")
            return [arrays[n] for n in chosen]
        finally:
            f.close()

    return names, load
