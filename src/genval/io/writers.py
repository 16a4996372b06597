"""Write event tables (oversampled events) to the formats :func:`read_events` reads.

Every file is written to a temporary name beside the target and renamed onto it, so a killed
run never leaves a truncated artifact. Names survive the round trip in every format except a
plain ``.npy`` (which holds only the numbers).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from genval._atomic import atomic_path, atomic_write_bytes
from genval._optional import require
from genval._validation import as_events
from genval.errors import InputError
from genval.io._spec import default_names, parse_spec

__all__ = ["write_events"]


def write_events(spec: str | Path, x: ArrayLike, names: Sequence[str] | None = None) -> Path:
    """Write events ``x`` (N, D) to ``spec`` = ``file.ext[:key]``, the format from the extension.

    Args:
        spec: ``.npy`` (plain 2D array), ``.npz`` (arrays ``x`` and ``features``), ``.csv``
            (header of names), ``.parquet`` (one column per feature), ``.h5[:dataset]`` (2D
            dataset with a ``features`` attribute; default ``events``) or ``.root[:tree]`` (a
            TTree of double branches; default ``events``).
        x: the events.
        names: D feature names (default ``x0, x1, ...``).

    Returns:
        The path written.

    Raises:
        InputError: non-finite events, or a number of names other than D.
        MissingDependencyError: if the format's optional library is not installed.
    """
    ds = parse_spec(spec)
    arr = as_events(x, min_events=0, name="events to write")
    cols = list(names) if names is not None else default_names(arr.shape[1])
    if len(cols) != arr.shape[1]:
        raise InputError(f"{len(cols)} feature names for events with {arr.shape[1]} features")
    if len(set(cols)) != len(cols):
        raise InputError(f"feature names must be unique, got {cols}")
    key = ds.key or "events"
    if ds.fmt == ".npy":
        buf = io.BytesIO()
        np.save(buf, arr)  # a file object: np.save would append ".npy" to a temporary name
        return atomic_write_bytes(ds.path, buf.getvalue())
    if ds.fmt == ".npz":
        buf = io.BytesIO()
        np.savez(buf, x=arr, features=np.array(cols, dtype=np.str_))
        return atomic_write_bytes(ds.path, buf.getvalue())
    if ds.fmt == ".csv":
        buf = io.StringIO()
        # %.17g round-trips float64 exactly.
        np.savetxt(buf, arr, delimiter=",", header=",".join(cols), comments="", fmt="%.17g")
        return atomic_write_bytes(ds.path, buf.getvalue().encode())
    if ds.fmt == ".parquet":
        pa = require("pyarrow", "io", purpose="writing .parquet files")
        pq = require("pyarrow.parquet", "io", purpose="writing .parquet files")
        table = pa.table({n: arr[:, i] for i, n in enumerate(cols)})
        with atomic_path(ds.path) as tmp:
            pq.write_table(table, tmp)
        return ds.path
    if ds.fmt == ".h5":
        h5py = require("h5py", "io", purpose="writing .h5 files")
        with atomic_path(ds.path) as tmp, h5py.File(tmp, "w") as f:
            dset = f.create_dataset(key, data=arr)
            dset.attrs["features"] = np.array(cols, dtype=h5py.string_dtype())
        return ds.path
    if ds.fmt == ".root":
        uproot = require("uproot", "root", purpose="writing .root files")
        with atomic_path(ds.path) as tmp:
            with uproot.recreate(tmp) as f:
                # mktree + extend writes a classic TTree (assignment would write an RNTuple).
                tree = f.mktree(key, {n: np.float64 for n in cols})
                if arr.shape[0]:
                    tree.extend({n: arr[:, i] for i, n in enumerate(cols)})
        return ds.path
    raise InputError(f"cannot write format {ds.fmt}")  # unreachable: parse_spec checked it
