"""Event data in and out: numpy, CSV, parquet, HDF5 and ROOT, with features selected by name.

Specifications are ``file.ext[:key]``: ``events.h5:/train/x``, ``ntuple.root:Events``,
``arrays.npz:x``. The key names the HDF5 dataset, the ROOT tree or the npz array. A list of
specifications (or a glob pattern) is read as one table; :class:`Expression` is the grammar of
selections and aliases (:mod:`genval.io.expressions`).
"""

from __future__ import annotations

from genval.io._spec import FORMATS, DataSpec, EventTable, parse_spec
from genval.io.expressions import Expression
from genval.io.readers import expand_specs, read_events
from genval.io.writers import write_events

__all__ = ["FORMATS", "DataSpec", "EventTable", "Expression", "parse_spec", "expand_specs",
           "read_events", "write_events"]
