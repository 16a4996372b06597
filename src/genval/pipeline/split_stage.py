"""The split stage (paper Step 1): events in, disjoint train / weight-fit / centres / test out.

It reads the events (files, globs, selection and aliases of ``data``), checks that every
feature can be standardised, resolves the data-dependent defaults (:mod:`.adapt`) and cuts
the splits; the run's metadata records the files, the selection's yield and the choices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from genval._validation import check_feature_spread
from genval.config import Config
from genval.errors import InputError
from genval.io import DataSpec, EventTable, expand_specs, parse_spec, read_events
from genval.pipeline.adapt import plan_splits, resolve_n_kernels
from genval.pipeline.artifacts import save_events, save_splits, save_test_events
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir
from genval.splits import Splits, hash_events, make_splits

__all__ = ["stage_split"]


def _generate(config: Config) -> EventTable:
    """The configured diagonal Gaussian (the paper's toy, Eq. 6, by default)."""
    gen = config.data.generate
    rng = np.random.default_rng(stage_seed(config, "data"))
    x = rng.normal(gen.mean, gen.std, size=(gen.n_events, len(gen.mean)))
    names = config.data.features or [f"x{i}" for i in range(len(gen.mean))]
    if len(names) != x.shape[1]:
        raise InputError(f"data.features names {len(names)} features but data.generate has "
                         f"{x.shape[1]}")
    return EventTable(x=x, names=list(names), source="generated")


def _read(config: Config, which: str, features: list[str] | None, **checks: Any) -> EventTable:
    """``data.path`` or ``data.test_path``, with the selection, aliases and tree of ``data``."""
    data = config.data
    return read_events(data.files(which), features, selection=data.selection,  # type: ignore[arg-type]
                       aliases=data.aliases, tree=data.tree, **checks)


def _cut(config: Config, n_events: int) -> tuple[Splits, dict[str, Any]]:
    """The disjoint splits, each at least as large as what uses it needs, and the choices of
    the ``auto`` keys (:mod:`genval.pipeline.adapt`)."""
    sp = config.splits
    plan = plan_splits(config, n_events)
    n_members = config.members.n_members
    minima: dict[str, tuple[int, str]] = {}
    if config.gof.n_kernels != "auto":
        k = int(config.gof.n_kernels)
        have = _size(plan.specs["centres"], n_events)
        minima["centres"] = (k, f"gof.n_kernels = {k}; or set gof.n_kernels to at most "
                                f"{have} or to auto")
    have_fit = _size(plan.specs["weight_fit"], n_events)
    minima["weight_fit"] = (max(n_members + 1, sp.min_events),
                            f"more events than members.n_members = {n_members}; or set "
                            f"members.n_members to at most {max(have_fit - 1, 1)}")
    splits = make_splits(n_events, plan.specs, seed=stage_seed(config, "split"),
                         shuffle=sp.shuffle, min_events=sp.min_events, min_sizes=minima)
    choices = dict(plan.choices)
    _, kernels = resolve_n_kernels(config, splits.sizes()["centres"])
    if kernels is not None:
        choices["gof.n_kernels"] = kernels
    return splits, choices


def _size(spec: Any, n_events: int) -> int:
    """Events a fraction or range spec selects (as :func:`genval.splits.make_splits` cuts)."""
    if spec is None:
        return 0
    if isinstance(spec, (int, float)):
        return int(np.floor(float(spec) * n_events + 1e-9))
    lo, hi = (float(v) for v in spec)
    return int(np.floor(min(hi, 1.0) * n_events + 1e-9)) - int(np.floor(lo * n_events + 1e-9))


def _file_record(table: EventTable) -> dict[str, Any]:
    record: dict[str, Any] = {"source": table.source, "n_events": table.n_events,
                              "hash": hash_events(table.x)}
    if table.files:
        record["files"] = list(table.files)
    if table.selection is not None:
        record["selection"] = {"expression": table.selection, "n_read": table.n_read,
                               "n_kept": table.n_events}
    return record


def _say_selection(log: Log, table: EventTable, what: str) -> None:
    if table.selection is not None and table.n_read:
        log(f"[split] selection {table.selection!r} kept {table.n_events} of {table.n_read} "
            f"{what} events ({table.n_events / table.n_read:.1%})")


def _check_no_shared_file(train_files: Sequence[str], test_specs: Sequence[DataSpec]) -> None:
    """After globs are expanded: no file (and key) feeds both the training and the test."""
    def key(ds: DataSpec) -> tuple[str, str | None]:
        return os.path.realpath(ds.path), ds.key

    shared = {key(parse_spec(f)) for f in train_files} & {key(ds) for ds in test_specs}
    if shared:
        path, tree = sorted(shared, key=str)[0]
        raise InputError(f"{path}{':' + tree if tree else ''} is read by both data.path and "
                         "data.test_path: the test split would overlap the training splits")


def stage_split(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Read (or generate) the events, cut the disjoint splits and record both in the run."""
    cfg = run.config()
    table = _generate(cfg) if cfg.data.path is None else _read(cfg, "path", cfg.data.features)
    _say_selection(log, table, "input")
    check_feature_spread(table.x, table.names, source=table.source)
    if cfg.data.test_path is not None:  # before any work: the files themselves must differ
        _check_no_shared_file(table.files, expand_specs(cfg.data.files("test_path"),
                                                        tree=cfg.data.tree))
    splits, choices = _cut(cfg, table.n_events)
    check_feature_spread(splits.take(table.x, "train"), table.names,
                         source=f"the train split of {table.source}")
    save_events(run, table)
    info: dict[str, Any] = {**_file_record(table), "features": table.names,
                            "splits": splits.summary()}
    if cfg.data.test_path is not None:
        test = _read(cfg, "test_path", table.names, n_features=table.n_features,
                     min_events=cfg.splits.min_events)
        _say_selection(log, test, "test")
        check_feature_spread(test.x, test.names, source=test.source)
        save_test_events(run, test)
        info["test"] = _file_record(test)
    save_splits(run, splits)
    if choices:
        log("[split] " + "; ".join(
            f"{key} = {c['value']:.4g}" + (f" (configured {c['configured']})"
                                            if c["configured"] != "auto" else " (auto)")
            + f": {c['why']}" for key, c in choices.items()))
    run.update_metadata(data=info, adapted=choices,
                        seeds={"data": stage_seed(cfg, "data"),
                               "split": stage_seed(cfg, "split")})
    return {"sizes": splits.sizes(), "hash": splits.hash, "adapted": choices}
