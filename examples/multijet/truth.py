"""The truth of the multijet study's coverage observables, from an independent, larger sample.

A user of simulated data knows no density, but can generate more events of the same process:
the value of an observable in a large independent sample is then its truth, up to a
statistical error that this script reports too. The coverage stage compares its Eq. 3 error
bars with these values (``coverage.truth`` and ``coverage.truth_std`` in config.yaml).

    python examples/multijet/truth.py /tmp/mj_seed2            # the generator's chunk folder
    python examples/multijet/truth.py truth_sample.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import COLUMNS  # noqa: E402  (the generator's column order)

OBSERVABLES = {
    # name: (feature, threshold or None for the mean)
    "mean_mjj": ("mjj", None),
    "mean_jet1_mass": ("jet1_mass", None),
    "frac_jet1_pt_above_400": ("jet1_pt", 400.0),
}


def load(source: Path) -> dict[str, np.ndarray]:
    """Columns of a generator chunk folder or of a parquet file."""
    if source.is_dir():
        chunks = sorted(source.glob("chunk_*.npz"))
        if not chunks:
            raise SystemExit(f"no chunk_*.npz in {source}")
        rows = np.concatenate([np.load(path)["rows"] for path in chunks])
        columns = {name: rows[:, j] for j, name in enumerate(COLUMNS)}
        for name in ("jet1_mass", "jet2_mass"):  # as generate.py stores them
            columns[name] = np.maximum(columns[name], 0.0)
        return columns
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    return {name: table[name].to_numpy().astype(np.float64) for name in table.column_names}


def truth(columns: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Each observable's value and standard error (the mean of a feature or an indicator)."""
    values = {}
    for name, (feature, above) in OBSERVABLES.items():
        x = columns[feature].astype(np.float64)
        if above is not None:
            x = (x > above).astype(np.float64)
        values[name] = (float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    args = parser.parse_args()
    columns = load(args.source)
    values = truth(columns)
    n = len(next(iter(columns.values())))
    print(f"# from {n} events of {args.source}")
    print("  truth: {" + ", ".join(f"{k}: {v:.6g}" for k, (v, _) in values.items()) + "}")
    print("  truth_std: {" + ", ".join(f"{k}: {e:.3g}" for k, (_, e) in values.items()) + "}")


if __name__ == "__main__":
    main()
