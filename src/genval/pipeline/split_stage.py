"""The split stage (paper Step 1): events in, disjoint train / weight-fit / centres / test out."""

from __future__ import annotations

from typing import Any

import numpy as np

from genval.config import Config
from genval.errors import InputError
from genval.io import EventTable, read_events
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


def stage_split(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Read (or generate) the events, cut the disjoint splits and record both in the run."""
    cfg = run.config()
    table = _generate(cfg) if cfg.data.path is None else read_events(cfg.data.path,
                                                                     cfg.data.features)
    splits = _cut(cfg, table)
    save_events(run, table)
    info: dict[str, Any] = {"source": table.source, "features": table.names,
                            "n_events": table.n_events, "hash": hash_events(table.x),
                            "splits": splits.summary()}
    if cfg.data.test_path is not None:
        test = read_events(cfg.data.test_path, table.names, n_features=table.n_features,
                           min_events=cfg.splits.min_events)
        save_test_events(run, test)
        info["test"] = {"source": test.source, "n_events": test.n_events,
                        "hash": hash_events(test.x)}
    save_splits(run, splits)
    run.update_metadata(data=info, seeds={"data": stage_seed(cfg, "data"),
                                          "split": stage_seed(cfg, "split")})
    return {"sizes": splits.sizes(), "hash": splits.hash}
