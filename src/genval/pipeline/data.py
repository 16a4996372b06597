"""The split and train stages (paper Step 1): events in, disjoint splits, members out."""

from __future__ import annotations

from typing import Any

import numpy as np

from genval._atomic import atomic_write_json
from genval.config import Config
from genval.errors import InputError
from genval.io import EventTable, read_events, write_events
from genval.members import KDEMembers
from genval.pipeline._common import (
    Log,
    draw,
    module,
    quiet,
    resolve_device,
    save_npz,
    split_events,
    stage_seed,
)
from genval.rundir import RunDir
from genval.splits import hash_events, make_splits

__all__ = ["stage_split", "stage_train"]


def _generate(config: Config) -> EventTable:
    gen = config.data.generate
    rng = np.random.default_rng(stage_seed(config, "data"))
    x = rng.normal(gen.mean, gen.std, size=(gen.n_events, len(gen.mean)))
    names = config.data.features or [f"x{i}" for i in range(len(gen.mean))]
    if len(names) != x.shape[1]:
        raise InputError(f"data.features names {len(names)} features but data.generate has "
                         f"{x.shape[1]}")
    return EventTable(x=x, names=list(names), source="generated")


def stage_split(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Read (or generate) the events, cut the disjoint splits and record both in the run."""
    cfg = run.config()
    table = _generate(cfg) if cfg.data.path is None else read_events(cfg.data.path,
                                                                     cfg.data.features)
    specs = {"train": cfg.splits.train, "weight_fit": cfg.splits.weight_fit,
             "centres": cfg.splits.centres, "test": cfg.splits.test}
    minima = {"centres": (cfg.gof.n_kernels, "gof.n_kernels"),
              "weight_fit": (max(cfg.members.n_members + 1, cfg.splits.min_events),
                             "more events than members.n_members")}
    splits = make_splits(table.n_events, specs, seed=stage_seed(cfg, "split"),
                         shuffle=cfg.splits.shuffle, min_events=cfg.splits.min_events,
                         min_sizes=minima)
    data_dir = run.dir("data")
    write_events(data_dir / "events.npz", table.x, table.names)
    info: dict[str, Any] = {"source": table.source, "features": table.names,
                            "n_events": table.n_events, "hash": hash_events(table.x),
                            "splits": splits.summary()}
    if cfg.data.test_path is not None:
        test = read_events(cfg.data.test_path, table.names, n_features=table.n_features,
                           min_events=cfg.splits.min_events)
        write_events(data_dir / "test_events.npz", test.x, test.names)
        info["test"] = {"source": test.source, "n_events": test.n_events,
                        "hash": hash_events(test.x)}
    splits.save(run.splits_path)
    run.update_metadata(data=info, seeds={"data": stage_seed(cfg, "data"),
                                          "split": stage_seed(cfg, "split")})
    return {"sizes": splits.sizes(), "hash": splits.hash}


def stage_train(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Train (or build) the M members on the train split and save them under ``models/``."""
    cfg = run.config()
    x_train, _ = split_events(run, "train")
    seed = stage_seed(cfg, "train")
    models = run.dir("models")
    run.update_metadata(seeds={"train": seed})
    if cfg.members.kind == "kde":
        # KDE members are rebuilt deterministically from the train split and the seed.
        KDEMembers(x_train, cfg.members.n_members, bandwidth=cfg.members.kde.bandwidth,
                   seed=seed)
        atomic_write_json(models / "kde.json", {"kind": "kde", "n_members": cfg.members.n_members,
                                                "bandwidth": cfg.members.kde.bandwidth,
                                                "seed": seed})
        return {"kind": "kde", "n_members": cfg.members.n_members}
    flows = module("genval.flows", "members.kind: flow")
    device = resolve_device(cfg.device)
    run.update_metadata(device={"resolved": device})
    log(f"[train] {cfg.members.n_members} flows on {len(x_train)} events, device {device}")
    fc = cfg.members.flow
    ens = flows.FlowEnsemble(x_train.shape[1], cfg.members.n_members, layers=fc.layers,
                             hidden=fc.hidden, blocks=fc.blocks, bins=fc.bins, seed=seed)
    history = flows.train(ens, x_train, val_fraction=fc.validation_fraction,
                          batch_size=fc.batch_size, lr=fc.learning_rate,
                          max_epochs=fc.max_epochs, patience=fc.patience, seed=seed,
                          device=device, progress=not cfg.quiet, bootstrap=fc.bootstrap,
                          precision=fc.precision)
    ens.save(models / "ensemble.safetensors")
    save_npz(models / "history.npz", train_loss=history.train_loss,
             val_loss=history.val_loss, best_epoch=history.best_epoch)
    _training_figure(run, history)
    return {"kind": "flow", "n_members": cfg.members.n_members, "device": device,
            "epochs": int(history.train_loss.shape[0]),
            "diverged": int(np.sum(history.diverged))}


def _training_figure(run: RunDir, history: Any) -> None:
    from genval import plots

    # History arrays are (epochs, M) with NaN after a member stopped: one curve per member.
    train = [c[np.isfinite(c)] for c in np.asarray(history.train_loss).T]
    val = [c[np.isfinite(c)] for c in np.asarray(history.val_loss).T]
    draw(run, "training", plots.plot_training, train_loss=train, val_loss=val,
         best_epoch=[int(b) + 1 for b in history.best_epoch])
