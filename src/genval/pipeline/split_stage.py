"""The split stage (paper Step 1): events in, disjoint train / weight-fit / centres / test out."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval.config import Config
from genval.errors import InputError
from genval.io import EventTable, read_events
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


def _cut(config: Config, table: EventTable) -> Splits:
    """The disjoint splits, each at least as large as what uses it needs."""
    sp = config.splits
    specs = {"train": sp.train, "weight_fit": sp.weight_fit, "centres": sp.centres,
             "test": sp.test}
    minima = {"centres": (config.gof.n_kernels, "gof.n_kernels"),
              "weight_fit": (max(config.members.n_members + 1, sp.min_events),
                             "more events than members.n_members")}
    return make_splits(table.n_events, specs, seed=stage_seed(config, "split"),
                       shuffle=sp.shuffle, min_events=sp.min_events, min_sizes=minima)


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
    table = _generate(cfg) if cfg.data.path is None else read_events(
        cfg.data.path, cfg.data.features, weight=cfg.data.weight)
    # A feature outside its transform's domain (pT <= 0 under log) fails here, before any
    # training, naming the feature; the test events are checked below.
    transform = FeatureTransform.from_spec(cfg.data.transforms, table.names)
    transform.check(table.x)
    splits = _cut(cfg, table)
    info: dict[str, Any] = {"source": table.source, "features": table.names,
                            "n_events": table.n_events, "hash": hash_events(table.x),
                            "splits": splits.summary()}
    if table.weights is not None:
        info["weights"] = {"column": table.weight_name,
                           "hash": hash_events(table.weights[:, None]),
                           **_check_weights(table.weights, splits, table.source)}
    save_events(run, table)
    if cfg.data.test_path is not None:
        # The test file may be unweighted data: its weight column is read when it has one.
        test = read_events(cfg.data.test_path, table.names, n_features=table.n_features,
                           min_events=cfg.splits.min_events, weight=cfg.data.weight,
                           weight_required=False)
        transform.check(test.x, name="test events")
        save_test_events(run, test)
        info["test"] = {"source": test.source, "n_events": test.n_events,
                        "hash": hash_events(test.x)}
        if test.weights is not None:
            info["test"]["weights"] = _weight_summary(test.weights)
    save_splits(run, splits)
    run.update_metadata(data=info, seeds={"data": stage_seed(cfg, "data"),
                                          "split": stage_seed(cfg, "split")})
    return {"sizes": splits.sizes(), "hash": splits.hash}
