"""Test other multijet samples against the model of a finished multijet run (issue 11).

The goodness-of-fit stage of ``genval run examples/multijet/config.yaml`` tests the model on
held-out events of the shipped sample. This script takes the same members, the same fit
ŵ, Cov(ŵ) and the same kernel basis (centres from the run's centre split, the config's K, σ
and kernel units) and runs the test of Eq. (5) on events from *other* generator runs:

* an independent sample of the same process (another seed, the same p̂_T cut): the test
  should not reject beyond what it rejects on the shipped sample's own held-out events;
* a sample with another p̂_T cut: the events near the lower cut are missing, which the
  model, trained with the lower cut, must notice.

Every sample is cut to the run's test-set size so that the Z values compare like with like.

    python studies/multijet_samples.py RUN_DIR --sample same=/path/seed2.parquet \\
        --sample pthat300=/path/seed3.parquet [--toys 200] [--out results.json]

A sample may also be a folder of the generator's ``chunk_*.npz`` files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import genval as gv
from genval.pipeline import artifacts, stage_seed
from genval.pipeline.gof_stage import _settings as gof_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "multijet"))
from generate import COLUMNS  # noqa: E402  (the generator's column order)


def load_sample(source: Path, features: list[str]) -> np.ndarray:
    """The run's features, in its order, from a parquet file or a generator chunk folder."""
    if source.is_dir():
        rows = np.concatenate([np.load(p)["rows"] for p in sorted(source.glob("chunk_*.npz"))])
        columns = {name: rows[:, j] for j, name in enumerate(COLUMNS)}
        for name in ("jet1_mass", "jet2_mass"):  # as generate.py stores them
            columns[name] = np.maximum(columns[name], 0.0)
        return np.column_stack([columns[f] for f in features]).astype(np.float64)
    table = gv.io.read_events(str(source), features=features)
    return np.asarray(table.x, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sample", action="append", default=[], metavar="NAME=PATH",
                        help="a sample to test (repeatable)")
    parser.add_argument("--toys", type=int, default=200)
    parser.add_argument("--variants", default="single,frozen,ensemble")
    parser.add_argument("--n-kernels", type=int, default=None, help="K (default: the run's)")
    parser.add_argument("--sigma", type=float, default=None, help="σ (default: the run's)")
    parser.add_argument("--test-split", action="store_true",
                        help="also test the run's own test split (as the gof stage does)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    run = gv.load_run(args.run_dir)
    cfg = run.config
    rundir = run.run_dir
    members = artifacts.load_members(rundir)
    fit = artifacts.load_fit(rundir)
    x_centres, names = artifacts.split_events(rundir, "centres")
    n_test = len(run.events("test"))
    seed = stage_seed(cfg, "gof")
    basis = gv.gof.KernelBasis.from_events(
        x_centres, args.n_kernels or cfg.gof.n_kernels, args.sigma or cfg.gof.sigma,
        standardize=cfg.gof.kernel_units == "standardised",
        transform=artifacts.load_transform(rundir), seed=seed)
    settings = gof_settings(cfg)  # the GoF stage's own settings of this config

    out: dict = {"run_dir": str(args.run_dir), "n_test": n_test, "toys": args.toys,
                 "kernels": basis.describe(), "samples": {},
                 "machine": os.uname().machine, "date": time.strftime("%Y-%m-%d %H:%M")}
    specs = [("test_split", None)] if args.test_split else []
    specs += [tuple(spec.partition("=")[::2]) for spec in args.sample]
    for name, path in specs:
        x = run.events("test") if path is None else load_sample(Path(path), list(names))
        rng = np.random.default_rng(12345)
        if len(x) > n_test:
            x = x[rng.choice(len(x), n_test, replace=False)]
        record: dict = {"path": path, "events": len(x),
                        "mean": dict(zip(names, np.round(x.mean(axis=0), 4).tolist(), strict=True))}
        prepared = gv.gof.prepare(members, x, basis, seed, settings=settings)
        for variant in args.variants.split(","):
            start = time.perf_counter()
            member = cfg.gof.single_member if variant == "single" else None
            try:
                res = gv.gof.goodness_of_fit(members, fit, x, basis, n_toys=args.toys,
                                             seed=seed, variant=variant, settings=settings,
                                             prepared=prepared, member=member)
            except gv.errors.FitError as exc:
                record[variant] = {"failed": str(exc)}
                continue
            entry = {"t_obs": float(res.t_obs), "seconds": round(time.perf_counter() - start, 1),
                     "n_failed": int(res.n_failed)}
            try:
                entry.update(p=res.p_value, z=res.z, z_is_bound=res.z_is_bound,
                             p_interval=list(res.p_interval), z_chi2=res.z_chi2)
            except Exception as exc:  # a failed test says why instead of giving numbers
                entry["failed"] = str(exc)
            record[variant] = entry
            print(name, variant, json.dumps(entry), flush=True)
        prepared.clear()
        out["samples"][name] = record
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
