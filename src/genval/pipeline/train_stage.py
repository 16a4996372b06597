"""The train stage (paper Step 1): the M members, trained on the train split only."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval import plots
from genval.compute import Executor
from genval.config import Config
from genval.pipeline.artifacts import (
    KdeSpec,
    LearningCurves,
    PythonSpec,
    save_ensemble,
    save_history,
    save_kde,
    save_python_members,
    save_transform,
    split_events,
    split_weights,
)
from genval.pipeline.context import ContextLayout
from genval.pipeline.device import resolve_device
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir
from genval.transforms import FeatureTransform

__all__ = ["stage_train"]


def stage_train(run: RunDir, *, log: Log = quiet, executor: Executor | None = None
                ) -> dict[str, Any]:
    """Train (or build) the M members on the train split and save them under ``models/``.

    With ``data.transforms`` the members learn ``y = T(x)``; the transform is saved beside
    them (``models/transform.json``) and applied by every later stage. With an ``executor``
    (``compute.scheduler``), flow members train as sub-ensembles on its workers
    (:mod:`genval.flows.shards`), the same members as in this process.
    """
    cfg = run.config()
    x_train, names = split_events(run, "train")
    w_train = split_weights(run, "train")
    # The members learn the transformed features; every later stage reads the transform
    # back from models/transform.json and sees the members in physical units.
    transform = FeatureTransform.from_spec(cfg.data.transforms, names)
    # A conditional run (context:) learns x | c: the context columns are the members'
    # context input (transformed as configured), the others their events.
    layout = ContextLayout.of(cfg, names)
    c_train = None
    conditional: dict[str, Any] = {}
    if layout is not None:
        x_part, c_part = layout.split(x_train)
        t_x, t_c = layout.transforms(transform)
        x_train = t_x.forward(x_part, name="train events")
        c_train = t_c.forward(c_part, name="train contexts")
        conditional = {"features": layout.x_names, "context": layout.c_names}
    else:
        x_train = transform.forward(x_train, name="train events")
    save_transform(run, transform)
    coordinates = {} if transform.is_identity else {"coordinates": transform.describe()}
    coordinates.update(conditional)
    seed = stage_seed(cfg, "train")
    run.update_metadata(seeds={"train": seed})
    if cfg.members.kind == "kde":
        spec = KdeSpec(cfg.members.n_members, cfg.members.kde.bandwidth, seed)
        # KDE members are rebuilt deterministically from the train split and the seed; build
        # them once here so that a bad bandwidth fails this stage, not a later one.
        spec.build(x_train, w_train, context=c_train)
        save_kde(run, spec)
        return {"kind": "kde", "n_members": cfg.members.n_members, **coordinates}
    device = resolve_device(cfg.device)
    run.update_metadata(device={"resolved": device})
    if cfg.members.kind == "python":
        return {**_build_python_members(run, cfg, x_train, w_train, seed, device, log),
                **coordinates}
    where = "" if executor is None else f" on {executor.n_workers} Dask worker(s)"
    given = "" if c_train is None else f" (x | c, {c_train.shape[1]} context feature(s))"
    log(f"[train] {cfg.members.n_members} flows on {len(x_train)} events{given}, device "
        f"{device}{where}")
    ensemble, history = _train_flows(cfg, x_train, w_train, seed, device, executor, c_train)
    save_ensemble(run, ensemble)
    curves = LearningCurves.from_history(history)
    save_history(run, curves)
    _training_figure(run, curves)
    return {"kind": "flow", "n_members": cfg.members.n_members, "device": device,
            "epochs": int(curves.train_loss.shape[0]),
            "diverged": int(np.sum(history.diverged)), **coordinates}


def _build_python_members(run: RunDir, cfg: Config, x_train: NDArray[np.float64],
                          w_train: NDArray[np.float64] | None, seed: int, device: str, log: Log
                          ) -> dict[str, Any]:
    """``members.kind: python``: call the factory on the (transformed, weighted) train split,
    record it with the members' fingerprint."""
    from genval.adapters import build_members

    factory = str(cfg.members.factory)
    log(f"[train] members from {factory} on {len(x_train)} events, device {device}")
    members = build_members(factory, x_train, n_members=cfg.members.n_members, seed=seed,
                            device=device, event_weights=w_train)
    save_python_members(run, PythonSpec(factory, cfg.members.n_members, seed,
                                        PythonSpec.fingerprint_of(members, x_train)))
    return {"kind": "python", "factory": factory, "n_members": members.n_members,
            "adapter": type(members).__name__, "device": device}


def _train_flows(cfg: Config, x_train: NDArray[np.float64], w_train: NDArray[np.float64] | None,
                 seed: int, device: str, executor: Executor | None = None,
                 c_train: NDArray[np.float64] | None = None) -> tuple[Any, Any]:
    """The flow ensemble of ``members.flow`` trained on ``x_train`` (weighted by ``w_train``
    when the events are; conditional on ``c_train`` when given), and its history."""
    from genval import flows  # torch loads only for flow members

    fc = cfg.members.flow
    ens = flows.FlowEnsemble(x_train.shape[1], cfg.members.n_members, layers=fc.layers,
                             hidden=fc.hidden, blocks=fc.blocks, bins=fc.bins, seed=seed,
                             n_context=0 if c_train is None else c_train.shape[1])
    history = flows.train(ens, x_train, val_fraction=fc.validation_fraction,
                          batch_size=fc.batch_size, lr=fc.learning_rate,
                          max_epochs=fc.max_epochs, patience=fc.patience, seed=seed,
                          device=device, progress=not cfg.quiet, bootstrap=fc.bootstrap,
                          precision=fc.precision, event_weights=w_train,
                          scheduler=executor, context=c_train)
    return ens, history


def _training_figure(run: RunDir, curves: LearningCurves) -> None:
    # History arrays are (epochs, M) with NaN after a member stopped: one curve per member.
    train = [c[np.isfinite(c)] for c in curves.train_loss.T]
    val = [c[np.isfinite(c)] for c in curves.val_loss.T]
    draw(run, "training", plots.plot_training, train_loss=train, val_loss=val,
         best_epoch=[int(b) + 1 for b in curves.best_epoch])
