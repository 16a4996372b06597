"""Event data in and out: numpy, CSV, parquet, HDF5 and ROOT, with features selected by name.

Specifications are ``file.ext[:key]``: ``events.h5:/train/x``, ``ntuple.root:Events``,
``arrays.npz:x``. The key names the HDF5 dataset, the ROOT tree or the npz array.
"""

from __future__ import annotations

from genval.io._spec import FORMATS, DataSpec, EventTable, parse_spec
from genval.io.readers import read_events
from genval.io.writers import write_events

__all__ = ["FORMATS", "DataSpec", "EventTable", "parse_spec", "read_events", "write_events"]
