"""Read event tables from numpy, CSV, parquet, HDF5 and ROOT files, selecting features by name.

Every reader returns named columns; formats without names (a plain 2D ``.npy``) call their
columns ``x0, x1, ...``. Heavy readers import their library only when used and fail with the
extra to install (``pip install 'genval[root]'``).

A damaged file (truncated, overwritten, not of its extension's format) is an
:class:`~genval.errors.InputError` naming the file and what its library reported, whatever
that library raises (:func:`_damaged`); the fuzz tests (tests/test_fuzz.py) hold every format
to it.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import os
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from genval.io.expressions import Expression, check_alias_name, evaluate_aliases

__all__ = ["read_events", "expand_specs"]

Columns = tuple[list[str], Any]  # names, and a callable name-list -> list of 1D arrays


def read_events(spec: str | Path | Sequence[str | Path], features: Sequence[str] | None = None,
                *, n_features: int | None = None, min_events: int = 1,
                weight: str | None = None, weight_required: bool = True,
                selection: str | Expression | None = None,
                aliases: Mapping[str, str | Expression] | None = None,
                tree: str | None = None) -> EventTable:
    """Read events from ``spec`` = ``file.ext[:key]``, or a list of them, concatenated in order.

    Args:
        spec: ``.npy``; ``.npz[:array]``; ``.csv`` (header row of names, or none);
            ``.parquet``; ``.h5:dataset`` (2D, compound, or a group of 1D datasets);
            ``.root:tree`` (a TTree or RNTuple of flat numeric branches). A list of such
            specifications (one format) is read as one table, in order; a file name may be a
            glob pattern (``dir/*.root:Events``), its matches taken in sorted order.
        features: names to read, in this order (columns, branches or ``aliases``); ``None``
            reads every column of the (first) file.
        n_features: if given, the number of features the caller expects.
        min_events: the fewest events accepted (after the selection).
        weight: the column (branch or alias) holding per-event weights, read with the
            features, cut by the same selection and never one of them (``features=None``
            then reads every other column).
        weight_required: a missing ``weight`` column is an error; False reads the files as
            unweighted instead (``EventTable.weights`` is None).
        selection: a cut (:mod:`genval.io.expressions`): only events where it is non-zero are
            kept. ROOT TTrees apply it in uproot (``cut=``), every other format in numpy.
        aliases: name -> expression of derived columns, usable as features, weight and in
            the selection (uproot's ``aliases=`` for TTrees).
        tree: the ROOT tree of ``.root`` files given without ``:tree``.

    Returns:
        :class:`EventTable` with float64 ``x`` (N, D), its feature names, the weights, the
        files read and, with a selection, how many events were read before it.

    Raises:
        InputError: missing file, a glob matching nothing, mixed formats, unknown key,
            feature or weight column (with a did-you-mean), non-numeric or jagged columns, no
            events, NaN/inf values (naming the features) or weights, a selection keeping
            nothing, a feature count other than ``n_features``, a weight column that is also
            a feature.
        MissingDependencyError: if the format's optional library is not installed.
    """
    specs = expand_specs(spec, tree=tree)
    cut = _expression(selection, "selection")
    derived = {name: _expression(text, f"alias {name!r}") for name, text in
               (aliases or {}).items()}
    for name in derived:
        check_alias_name(name)
    source = str(specs[0]) if len(specs) == 1 else f"{specs[0]} (+{len(specs) - 1} more files)"
    wanted = _Wanted(features, weight, weight_required)
    read = _read_root if specs[0].fmt == ".root" else _read_tables
    chosen, weight, cols, n_read = read(specs, wanted, cut, derived, source)
    if n_read == 0:
        raise InputError(f"{source}: no events (the input holds no rows)")
    if cut is not None and len(cols[0]) == 0:
        raise InputError(f"{source}: the selection {cut.text!r} kept none of the {n_read} "
                         "events")
    weights = None
    if weight is not None:  # read as the last column, in the same pass as the features
        weights = _stack(cols[-1:], [weight], source)[:, 0]
        cols = cols[:-1]
    x = _stack(cols, chosen, source)
    _check_finite(x, chosen, source)
    x = as_events(x, n_features=n_features, min_events=min_events, name=f"events in {source}")
    if weights is not None:
        weights = as_event_weights(weights, x.shape[0], name=f"weights {weight!r} in {source}",
                                   positive_total=False)
    return EventTable(x=x, names=chosen, source=source, files=tuple(str(d) for d in specs),
                      n_read=n_read if cut is not None else None,
                      selection=None if cut is None else cut.text, weights=weights,
                      weight_name=weight)


@dataclass(frozen=True)
class _Wanted:
    """What the caller asked for: the features (None: every column) and the weight column."""

    features: Sequence[str] | None
    weight: str | None
    weight_required: bool

    def resolve(self, names: list[str], derived: Mapping[str, Expression], source: str
                ) -> tuple[list[str], str | None]:
        """The features and the weight column (None when absent and not required) among the
        file's ``names`` and the aliases.

        Raises:
            InputError: a missing feature or required weight column (with a did-you-mean),
                a weight column that is also a feature, or nothing to read.
        """
        available = list(names) + [n for n in derived if n not in names]
        _check_unique_names(names, self.features, self.weight, source)
        weight = self.weight
        if weight is not None and weight not in available:
            if self.weight_required:
                raise InputError(missing_feature_message(weight, available, source)
                                 .replace("feature", "weight column", 1))
            weight = None
        if weight is not None and self.features is not None and weight in self.features:
            raise InputError(f"{source}: {weight!r} is both a feature and the weight column")
        candidates = [n for n in available if n != weight]
        asked = self.features if self.features is not None else [n for n in names
                                                                  if n != weight]
        chosen = [candidates[i] for i in select_columns(candidates, asked, source)]
        if not chosen:
            raise InputError(f"{source}: no columns to read")
        return chosen, weight


def _check_unique_names(names: Sequence[str], features: Sequence[str] | None,
                        weight: str | None, source: str) -> None:
    """Refuse a repeated column name among those read: a name picks one column, so the other
    would be lost silently (or read twice)."""
    wanted = set(names) if features is None else {*features, *([weight] if weight else [])}
    repeated = sorted({n for n in names if n in wanted and names.count(n) > 1})
    if repeated:
        raise InputError(f"{source}: the column name {repeated[0]!r} appears "
                         f"{list(names).count(repeated[0])} times; rename the columns so "
                         "that each name is one column")


def _damage_errors(fmt: str) -> tuple[type[BaseException], ...]:
    """What the format's library raises on a damaged or foreign file (never a genval bug:
    those are not caught)."""
    if fmt == ".csv":
        return (UnicodeDecodeError, csv.Error)
    if fmt in (".npy", ".npz"):
        # np.load on a damaged file: the zip layer, the npy header parser and a header that
        # claims more data than the file (or the memory) holds.
        # (the header is a Python literal: a garbled one fails in ast or tokenize)
        return (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, MemoryError, SyntaxError, tokenize.TokenError)
    if fmt == ".parquet":
        pa = require("pyarrow", "io", purpose="reading .parquet files")
        return (pa.ArrowException, OSError, ValueError)
    if fmt == ".h5":
        return (OSError, TypeError, ValueError, KeyError, RuntimeError)
    # uproot parses ROOT's own serialisation: a damaged file fails anywhere from struct and
    # zlib to its deserialisation classes, so every exception means "cannot read this file".
    return (Exception,)


@contextlib.contextmanager
def _damaged(source: str, fmt: str) -> Iterator[None]:
    """Turn what a reading library raises on a damaged file into an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except _damage_errors(fmt) as exc:
        detail = " ".join(str(exc).split())[:300] or "no detail"
        raise InputError(f"{source}: cannot read it as a {fmt} file (damaged, truncated or "
                         f"another format): {type(exc).__name__}: {detail}") from exc


def expand_specs(spec: str | Path | Sequence[str | Path], *, tree: str | None = None
                 ) -> list[DataSpec]:
    """Parse one specification or a list; expand globs; check every file exists.

    Args:
        spec: ``file.ext[:key]`` or a list of them; ``*``, ``?``, ``[...]`` and ``**`` in the
            file name are glob patterns (matches in sorted order).
        tree: the key of ``.root`` files given without one.

    Raises:
        InputError: an empty list, a missing file, a pattern matching no file, formats mixed
            in one list, or a file (and key) listed twice (its events would count twice).
    """
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not items:
        raise InputError("no data files given (an empty list)")
    out: list[DataSpec] = []
    for item in items:
        ds = parse_spec(item)
        if ds.key is None and tree is not None and ds.fmt == ".root":
            ds = DataSpec(ds.path, ds.fmt, tree)
        if glob.has_magic(str(ds.path)):
            matches = [Path(m) for m in sorted(glob.glob(str(ds.path), recursive=True))
                       if Path(m).is_file()]
            if not matches:
                raise InputError(f"{item}: the pattern {str(ds.path)!r} matches no file")
            out += [DataSpec(m, ds.fmt, ds.key) for m in matches]
        elif not ds.path.is_file():
            raise InputError(f"data file not found: {ds.path}")
        else:
            out.append(ds)
    formats = sorted({d.fmt for d in out})
    if len(formats) > 1:
        raise InputError(f"the data files mix formats {formats}; give files of one format")
    seen: dict[tuple[str, str | None], DataSpec] = {}
    for ds in out:
        key = (os.path.realpath(ds.path), ds.key)
        if key in seen:
            raise InputError(f"{ds} is listed twice (as {seen[key]} too): its events would be "
                             "counted twice")
        seen[key] = ds
    return out


def _expression(text: str | Expression | None, what: str) -> Expression | None:
    if text is None or isinstance(text, Expression):
        return text
    return Expression(str(text), what=what)


def _closure(chosen: Sequence[str], cut: Expression | None,
             derived: Mapping[str, Expression]) -> set[str]:
    """Every name the features and the selection need, following aliases through aliases."""
    todo = list(chosen) + sorted(cut.names if cut is not None else ())
    need: set[str] = set()
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        if name in derived:
            todo += sorted(derived[name].names)
    return need


_Read = tuple[list[str], str | None, list[NDArray[Any]], int]
"""The features, the weight column (or None), their columns after the cut (the weight's
last) and the number of events read before it."""


def _read_tables(specs: list[DataSpec], wanted: _Wanted, cut: Expression | None,
                 derived: Mapping[str, Expression], source: str) -> _Read:
    """Every non-ROOT format: each file's columns, concatenated, then aliases and the cut."""
    reader = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv,
              ".parquet": _read_parquet, ".h5": _read_h5}[specs[0].fmt]
    parts: list[dict[str, NDArray[Any]]] = []
    chosen: list[str] = []
    weight: str | None = None
    needed: list[str] = []
    for i, ds in enumerate(specs):
        with _damaged(str(ds), ds.fmt):
            names, load = reader(ds)
        if i == 0:
            chosen, weight = wanted.resolve(names, derived, source)
            closure = _closure(_outputs(chosen, weight), cut, derived)
            needed = [n for n in names if n in closure and n not in derived]
            for expr in [*derived.values(), *([cut] if cut is not None else [])]:
                expr.require_names([*names, *derived])
            # At least one column, to count the events when only constant aliases are wanted.
            needed = needed or names[:1]
        shadowing = sorted(set(derived) & set(names))
        if shadowing:
            raise InputError(f"alias {shadowing[0]!r} has the name of a column in {ds}; "
                             "rename the alias")
        missing = [n for n in needed if n not in names]
        if missing:
            raise InputError(missing_feature_message(missing[0], names, str(ds)))
        with _damaged(str(ds), ds.fmt):
            loaded = load(needed) if needed else []
        # Checked before their lengths are compared: a 0-d "column" has no length.
        cols = [_column(c, n, str(ds)) for n, c in zip(needed, loaded, strict=True)]
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise InputError(f"{ds}: columns have different lengths {sorted(lengths)}")
        parts.append(dict(zip(needed, cols, strict=True)))
    columns = {n: np.concatenate([p[n] for p in parts]) for n in needed}
    return chosen, weight, *_derive(_outputs(chosen, weight), columns, cut, derived)


def _outputs(chosen: list[str], weight: str | None) -> list[str]:
    return chosen if weight is None else [*chosen, weight]


def _derive(chosen: list[str], columns: dict[str, NDArray[Any]], cut: Expression | None,
            derived: Mapping[str, Expression]) -> tuple[list[NDArray[Any]], int]:
    """The chosen columns (aliases evaluated) of the events the cut keeps; events read."""
    n_read = len(next(iter(columns.values()))) if columns else 0
    values = {**columns, **evaluate_aliases(_closure(chosen, cut, derived), columns, derived,
                                            n_read)}
    out = [values[n] for n in chosen]
    if cut is not None:
        keep = _mask(cut.evaluate(values), n_read, cut)
        out = [c[keep] for c in out]
    return out, n_read


def _mask(value: Any, n_events: int, cut: Expression) -> NDArray[np.bool_]:
    """Events where the selection is non-zero (NaN counts as true, as in uproot)."""
    arr = np.asarray(value)
    if arr.shape != (n_events,):
        raise InputError(f"the selection {cut.text!r} gives one value of shape {arr.shape}, "
                         f"not one per event: it must use a column")
    return np.asarray(arr != 0)


def _column(col: Any, name: str, source: str) -> NDArray[Any]:
    arr = np.asarray(col)
    if arr.dtype == object or arr.ndim != 1:
        raise InputError(f"{source}: column {name!r} is not one number per event (jagged or "
                         "multi-dimensional); flatten or select other features")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{source}: column {name!r} is not numeric (dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.complexfloating):  # float64 would drop the imaginary part
        raise InputError(f"{source}: column {name!r} holds complex numbers (dtype "
                         f"{arr.dtype}); give its real and imaginary parts as two columns")
    return arr


def _stack(cols: list[NDArray[Any]], names: list[str], source: str) -> NDArray[np.float64]:
    if not cols:
        raise InputError(f"{source}: no columns to read")
    out = [_column(c, n, source).astype(np.float64) for n, c in zip(names, cols, strict=True)]
    return np.column_stack(out)


def _check_finite(x: NDArray[np.float64], names: list[str], source: str) -> None:
    """Name the features holding NaN or inf (the rows alone do not say which value is bad)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    counts = bad.sum(axis=0)
    which = ", ".join(f"{names[j]!r} ({int(counts[j])})" for j in np.flatnonzero(counts))
    raise InputError(f"events in {source} contain {rows.size} rows with NaN/inf (first at row "
                     f"{rows[0]}); NaN/inf values per feature: {which}")


def _from_array(arr: NDArray[Any], source: str, names: list[str] | None = None) -> Columns:
    """Columns of a structured, 2D or 1D array."""
    if arr.dtype.names:
        if arr.ndim != 1:  # one record per event; a 0-d record has no length to count
            raise InputError(f"{source}: expected a 1D array of records (one per event), got "
                             f"shape {arr.shape}")
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
    with open(ds.path, "rb") as handle:
        magic = handle.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:  # np.load would try a zip archive or a pickle instead
        raise InputError(f"{ds}: not a .npy file (it does not start with the .npy magic)")
    try:
        # Memory-mapped first: a header claiming more data than the file holds is refused
        # by the map, where a plain load would first allocate all of it.
        arr = np.array(np.load(ds.path, mmap_mode="r", allow_pickle=False))
    except ValueError as exc:
        raise InputError(f"{ds}: not a plain numeric .npy file, or truncated ({exc})") from exc
    return _from_array(arr, str(ds))


_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(ds: DataSpec) -> Columns:
    # Our own handle: np.load leaves the file it opened open when the archive is damaged.
    with open(ds.path, "rb") as handle:
        loaded = np.load(handle, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load also reads a .npy file
            raise InputError(f"{ds.path}: not a .npz archive (a single .npy array inside a "
                             "file named .npz); rename it to .npy")
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    if ds.key is not None:
        if ds.key not in arrays:
            raise InputError(missing_feature_message(ds.key, list(arrays), str(ds.path))
                             .replace("feature", "array", 1))
        return _from_array(arrays[ds.key], str(ds))
    if "x" in arrays and "features" in arrays:  # the layout write_events produces
        return _from_array(arrays["x"], str(ds), _feature_names(arrays["features"], str(ds)))
    if len(arrays) == 1:
        return _from_array(next(iter(arrays.values())), str(ds))
    if all(a.ndim == 1 for a in arrays.values()):  # one array per feature
        return list(arrays), lambda chosen: [arrays[n] for n in chosen]
    raise InputError(f"{ds.path} holds several arrays {list(arrays)}: name one as file.npz:key")


def _feature_names(value: Any, source: str) -> list[str]:
    """Feature names stored beside an array (npz ``features``, HDF5 attribute): a 1D list."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InputError(f"{source}: the stored feature names must be a list (1D), got "
                         f"shape {arr.shape}")
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in arr]


def _read_csv(ds: DataSpec) -> Columns:
    # utf-8-sig: a byte-order mark (spreadsheets write one) is not part of the first name.
    with open(ds.path, newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        # blank lines are skipped (loadtxt skips them too); line_num counts them
        first = next((r for r in rows if any(v.strip() for v in r)), None)
        first_line = rows.line_num
        second = next((r for r in rows if any(v.strip() for v in r)), None)
    if first is None:
        raise InputError(f"{ds}: empty CSV file (no header, no events)")
    try:  # a first row of numbers means no header
        [float(v) for v in first]
        header = None
    except ValueError:
        header = [h.strip() for h in first]
    if header is not None and second is None:  # loadtxt would see one column of nothing
        return header, lambda chosen: [np.zeros(0) for _ in chosen]
    try:
        data = np.loadtxt(ds.path, delimiter=",", skiprows=0 if header is None else first_line,
                          ndmin=2, dtype=np.float64, encoding="utf-8-sig")
    except ValueError as exc:
        raise InputError(f"{ds}: cannot parse as numbers: {exc}") from exc
    if header is not None and len(header) != data.shape[1]:
        raise InputError(f"{ds}: the header names {len(header)} columns ({', '.join(header)}) "
                         f"but the rows hold {data.shape[1]} numbers")
    return _from_array(data, str(ds), header)


def _read_parquet(ds: DataSpec) -> Columns:
    pq = require("pyarrow.parquet", "io", purpose="reading .parquet files")
    names = list(pq.read_schema(ds.path).names)

    def load(chosen: list[str]) -> list[NDArray[Any]]:
        table = pq.read_table(ds.path, columns=chosen)
        return [_parquet_values(table.column(n)) for n in chosen]

    return names, load


def _parquet_values(column: Any) -> NDArray[Any]:
    """A parquet column as numpy values; dictionary-encoded columns decoded first (pyarrow's
    own conversion fails with an IndexError on a dictionary of nulls with no entries)."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_numpy()


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
    names_list = None if names is None else _feature_names(names, str(ds))
    return _from_array(np.asarray(arr), str(ds), names_list)


@dataclass(frozen=True)
class _RootTree:
    """One ROOT tree to read: where it is, its class, entries and branch names."""

    spec: DataSpec
    classname: str
    n_entries: int
    branches: list[str]


def _root_tree(uproot: Any, ds: DataSpec) -> _RootTree:
    with uproot.open(ds.path) as f:
        trees = [k.rsplit(";", 1)[0] for k, c in f.classnames().items()
                 if c in ("TTree", "ROOT::RNTuple")]
        if ds.key is None:
            if len(trees) != 1:
                raise InputError(f"{ds.path} holds trees {trees}: name one as file.root:tree "
                                 "(or set data.tree)")
            key = trees[0]
        else:
            key = ds.key
        try:
            obj = f[key]
        except KeyError:
            raise InputError(missing_feature_message(key, trees, str(ds.path))
                             .replace("feature", "tree", 1)) from None
        return _RootTree(DataSpec(ds.path, ds.fmt, key), str(obj.classname),
                         int(obj.num_entries), [str(k) for k in obj.keys()])


def _read_root(specs: list[DataSpec], wanted: _Wanted, cut: Expression | None,
               derived: Mapping[str, Expression], source: str) -> _Read:
    """ROOT trees, concatenated by ``uproot.concatenate`` with the cut and aliases applied there.

    RNTuples are read branch by branch and cut here: uproot (5.7) silently ignores ``cut=``
    and ``aliases=`` for them.
    """
    uproot = require("uproot", "root", purpose="reading .root files")
    trees = []
    for ds in specs:
        with _damaged(str(ds), ds.fmt):
            trees.append(_root_tree(uproot, ds))
    branches = trees[0].branches
    chosen, weight = wanted.resolve(branches, derived, source)
    outputs = _outputs(chosen, weight)
    for expr in [*derived.values(), *([cut] if cut is not None else [])]:
        expr.require_names([*branches, *derived])
    shadowing = sorted(set(derived) & set(branches))
    if shadowing:
        raise InputError(f"alias {shadowing[0]!r} has the name of a branch; rename the alias")
    closure = _closure(outputs, cut, derived)
    needed = [n for n in branches if n in closure] or branches[:1]
    for tree in trees:
        missing = [n for n in needed if n not in tree.branches]
        if missing:
            raise InputError(missing_feature_message(missing[0], tree.branches, str(tree.spec)))
    n_read = sum(t.n_entries for t in trees)
    if n_read == 0:
        return chosen, weight, [np.zeros(0) for _ in outputs], 0
    if any(t.classname != "TTree" for t in trees):
        columns: dict[str, list[NDArray[Any]]] = {n: [] for n in needed}
        for tree in trees:
            with _damaged(str(tree.spec), tree.spec.fmt), uproot.open(tree.spec.path) as f:
                arrays = f[tree.spec.key].arrays(needed, library="np")
            for n in needed:
                columns[n].append(_column(arrays[n], n, str(tree.spec)))
        return chosen, weight, *_derive(outputs, {n: np.concatenate(c)
                                                  for n, c in columns.items()}, cut, derived)
    try:
        with np.errstate(all="ignore"):  # inf and NaN are values, as in genval's evaluator
            arrays = uproot.concatenate(
                [{str(t.spec.path): t.spec.key} for t in trees], outputs,
                cut=None if cut is None else cut.uproot(),
                aliases={n: e.uproot() for n, e in derived.items()} or None, library="np")
    except (uproot.KeyInFileError, ValueError, TypeError) as exc:
        raise InputError(f"{source}: uproot could not read the branches, aliases or cut: "
                         f"{exc}") from None
    except Exception as exc:  # noqa: BLE001 -- a damaged file, as in _damaged
        raise InputError(f"{source}: cannot read it as a .root file (damaged or truncated): "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(arrays, dict):  # uproot returns [] when no event is left
        arrays = {n: np.zeros(0) for n in outputs}
    return chosen, weight, [np.asarray(arrays[n]) for n in outputs], n_read
