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
from numpy.typing import NDArray

from genval._validation import check_feature_spread
from genval.config import Config
from genval.errors import InputError
from genval.io import DataSpec, EventTable, expand_specs, parse_spec, read_events
from genval.pipeline.adapt import plan_splits
from genval.pipeline.artifacts import save_events, save_splits, save_test_events
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir
from genval.splits import Splits, hash_events, make_splits
from genval.transforms import FeatureTransform

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
    """The disjoint splits, each at least as large as what uses it needs, and the values
    chosen for the ``auto`` keys (:mod:`genval.pipeline.adapt`).

    Raises:
        InputError: a split smaller than it must be, naming the key and a value that works.
    """
    sp = config.splits
    plan = plan_splits(config, n_events)
    k, n_members = config.gof.n_kernels, config.members.n_members
    have_centres = _size(plan.specs["centres"], n_events)
    have_fit = _size(plan.specs["weight_fit"], n_events)
    minima = {"centres": (k, f"gof.n_kernels = {k}; or set gof.n_kernels to at most "
                             f"{max(have_centres, 1)}"),
              "weight_fit": (max(n_members + 1, sp.min_events),
                             f"more events than members.n_members = {n_members}; or set "
                             f"members.n_members to at most {max(have_fit - 1, 1)}")}
    splits = make_splits(n_events, plan.specs, seed=stage_seed(config, "split"),
                         shuffle=sp.shuffle, min_events=sp.min_events, min_sizes=minima)
    return splits, plan.choices


def _size(spec: Any, n_events: int) -> int:
    """Events a fraction or range spec selects (as :func:`genval.splits.make_splits` cuts)."""
    if spec is None:
        return 0
    if isinstance(spec, (int, float)):
        return int(np.floor(float(spec) * n_events + 1e-9))
    lo, hi = (float(v) for v in spec)
    return int(np.floor(min(hi, 1.0) * n_events + 1e-9)) - int(np.floor(lo * n_events + 1e-9))


def _check_spread(transform: FeatureTransform, x: NDArray[np.float64], names: list[str],
                  source: str) -> None:
    """Every feature the members standardise (after ``data.transforms``) has a finite scale."""
    if transform.is_identity:
        check_feature_spread(x, names, source=source)
    else:
        check_feature_spread(transform.forward(x), names,
                             source=f"{source} (after data.transforms)")


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


def _weight_summary(weights: NDArray[np.float64]) -> dict[str, Any]:
    """Total, effective size ``(Σs)²/Σs²`` and negative share of a set of event weights."""
    total = float(weights.sum())
    square = float(weights @ weights)
    return {"n_events": int(weights.size), "sum": total,
            "n_effective": total**2 / square if square > 0 else 0.0,
            "n_negative": int((weights < 0).sum()),
            "negative_sum": float(weights[weights < 0].sum())}


def _check_weights(weights: NDArray[np.float64], splits: Splits, source: str
                   ) -> dict[str, Any]:
    """Refuse a zero or negative total weight, overall or in a split that uses the weights.

    The kernel centres only place kernels: their weights are not used, so not checked.

    Raises:
        InputError: naming the split whose weights sum to <= 0.
    """
    if not weights.sum() > 0:
        raise InputError(f"the event weights of {source} sum to {weights.sum():.6g}: the total "
                         "weight must be positive")
    summary = {"all": _weight_summary(weights)}
    for name in splits.indices:
        part = splits.take(weights[:, None], name)[:, 0]
        summary[name] = _weight_summary(part)
        if name != "centres" and not part.sum() > 0:
            raise InputError(f"the event weights of split {name!r} sum to {part.sum():.6g} "
                             f"over its {part.size} events: a weighted {name} split needs a "
                             "positive total weight (give it a larger share, or use fewer "
                             "negative weights)")
    return summary


def stage_split(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Read (or generate) the events, cut the disjoint splits and record both in the run.

    With ``data.weight`` the weight column is read with the features and saved beside the
    events (:func:`genval.pipeline.artifacts.split_weights` gives each split's); each split's
    total weight must be positive.
    """
    cfg = run.config()
    table = _generate(cfg) if cfg.data.path is None else _read(
        cfg, "path", cfg.data.features, weight=cfg.data.weight)
    _say_selection(log, table, "input")
    # A feature outside its transform's domain (pT <= 0 under log) fails here, before any
    # training, naming the feature; the test events are checked below.
    transform = FeatureTransform.from_spec(cfg.data.transforms, table.names)
    transform.check(table.x)
    _check_spread(transform, table.x, table.names, table.source)
    if cfg.data.test_path is not None:  # before any work: the files themselves must differ
        _check_no_shared_file(table.files, expand_specs(cfg.data.files("test_path"),
                                                        tree=cfg.data.tree))
    splits, choices = _cut(cfg, table.n_events)
    _check_spread(transform, splits.take(table.x, "train"), table.names,
                  f"the train split of {table.source}")
    info: dict[str, Any] = {**_file_record(table), "features": table.names,
                            "splits": splits.summary()}
    if table.weights is not None:
        info["weights"] = {"column": table.weight_name,
                           "hash": hash_events(table.weights[:, None]),
                           **_check_weights(table.weights, splits, table.source)}
    save_events(run, table)
    if cfg.data.test_path is not None:
        # The test file may be unweighted data: its weight column is read when it has one.
        test = _read(cfg, "test_path", table.names, n_features=table.n_features,
                     min_events=cfg.splits.min_events, weight=cfg.data.weight,
                     weight_required=False)
        _say_selection(log, test, "test")
        transform.check(test.x, name="test events")
        _check_spread(transform, test.x, test.names, test.source)
        save_test_events(run, test)
        info["test"] = _file_record(test)
        if test.weights is not None:
            info["test"]["weights"] = _weight_summary(test.weights)
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
