"""Training an ensemble across Dask workers: sub-ensembles (shards), one per worker or GPU.

Members never interact while training (:mod:`genval.flows.train`: each has its own seed,
bootstrap replica, batch order, Adam state, clipping norm and early stopping), so the ensemble
splits into sub-ensembles that train anywhere, each still vectorised over its members. A shard
carries its members' initial weights and seeds; the validation split and the standardisation
depend only on the training settings' seed, and a member's arithmetic does not depend on the
other members (:class:`~genval.flows.optim.MemberAdam`, SIMD-aligned event passes), so on a
CPU a sharded run yields the members of a single-process run bit for bit (same thread count
per process and the same CPU). Shards travel as safetensors bytes (:func:`genval.flows.io.
to_bytes`), never as pickles, and are gathered into the one ensemble saved as usual.

References:
    Badaracco et al., Step 1: M flows on bootstrap replicas with independent initialisations.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from tqdm.auto import tqdm

from genval._validation import as_event_weights, as_events
from genval.compute import Executor, worker_threads
from genval.errors import ArtifactError, InputError
from genval.flows import io as flow_io
from genval.flows.ensemble import FlowEnsemble
from genval.flows.train import TrainingHistory, TrainSettings, train

__all__ = ["train_sharded", "merge_histories", "shard_members"]


def shard_members(n_members: int, n_shards: int) -> list[NDArray[np.int64]]:
    """Members ``0 .. M-1`` in ``n_shards`` contiguous groups of near-equal size."""
    n = max(1, min(int(n_shards), int(n_members)))
    return [g.astype(np.int64) for g in np.array_split(np.arange(n_members), n)]


def _train_shard(state: bytes, x: NDArray[np.float64], x_val: NDArray[np.float64] | None,
                 settings: TrainSettings, device: str | None,
                 weights: NDArray[np.float64] | None = None,
                 val_weights: NDArray[np.float64] | None = None,
                 context: NDArray[np.float64] | None = None,
                 context_val: NDArray[np.float64] | None = None
                 ) -> tuple[bytes, TrainingHistory]:
    """Train one shard on a worker: the bytes of the trained shard and its history."""
    before = torch.get_num_threads()
    # A shard is the worker's only task: it uses the worker's threads (the nanny starts
    # workers single-threaded), and gives them back for the small tasks that may follow.
    torch.set_num_threads(worker_threads() or before)
    try:
        meta, tensors = flow_io.from_bytes(state, source="shard")
        shard = FlowEnsemble.from_state(tensors, meta)
        history = train(shard, x, x_val=x_val, settings=settings, device=device,
                        progress=False, event_weights=weights, val_event_weights=val_weights,
                        context=context, context_val=context_val)
    finally:
        torch.set_num_threads(before)
    return flow_io.to_bytes(*shard.cpu().to_state()), history


def merge_histories(parts: list[TrainingHistory], groups: list[NDArray[np.int64]],
                    n_members: int) -> TrainingHistory:
    """One :class:`TrainingHistory` from the shards' (members ``groups[i]`` in ``parts[i]``).

    The learning curves, best epochs and stopping flags equal those of a single-process run;
    an epoch's wall time is the longest shard's (the shards ran side by side).

    Raises:
        InputError: shards that did not share the validation split (different settings).
    """
    epochs = max(len(h.epoch_seconds) for h in parts)
    train_loss = np.full((epochs, n_members), np.nan)
    val_loss = np.full((epochs, n_members), np.nan)
    best_epoch = np.zeros(n_members, dtype=np.int64)
    best_val = np.zeros(n_members)
    stopped, diverged = np.zeros(n_members, dtype=bool), np.zeros(n_members, dtype=bool)
    seconds = np.zeros(epochs)
    first = parts[0]
    for g, h in zip(groups, parts, strict=True):
        if not (np.array_equal(h.val_indices, first.val_indices)
                and np.array_equal(h.train_indices, first.train_indices)):
            raise InputError("shards were trained on different validation splits")
        n = len(h.epoch_seconds)
        train_loss[:n, g], val_loss[:n, g] = h.train_loss, h.val_loss
        best_epoch[g], best_val[g] = h.best_epoch, h.best_val_loss
        stopped[g], diverged[g] = h.stopped_early, h.diverged
        seconds[:n] = np.maximum(seconds[:n], h.epoch_seconds)
    return TrainingHistory(train_loss=train_loss, val_loss=val_loss, best_epoch=best_epoch,
                           best_val_loss=best_val, stopped_early=stopped, diverged=diverged,
                           epoch_seconds=seconds, val_indices=first.val_indices,
                           train_indices=first.train_indices,
                           settings={**first.settings, "shards": len(parts)})


def _gpu_device(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def train_sharded(ensemble: FlowEnsemble, x: ArrayLike, *, executor: Executor,
                  x_val: ArrayLike | None = None, settings: TrainSettings | None = None,
                  device: str | torch.device | None = None, shards: int | None = None,
                  progress: bool = True, event_weights: ArrayLike | None = None,
                  val_event_weights: ArrayLike | None = None, context: ArrayLike | None = None,
                  context_val: ArrayLike | None = None) -> TrainingHistory:
    """Train ``ensemble`` in place as shards on the workers of ``executor`` (paper Step 1).

    Args:
        ensemble: the ensemble (its initial weights and member seeds go to the shards); it
            stays on its device, and receives each member's best parameters.
        x, x_val, settings, event_weights, val_event_weights, context, context_val: as for
            :func:`genval.flows.train` (events, weights and contexts sent once per worker).
        executor: an open :class:`~genval.compute.Executor`.
        device: where each shard trains on its worker; ``"cuda"`` asks every shard for a
            worker ``GPU`` resource (one GPU per shard).
        shards: sub-ensembles (default ``executor.settings.train_shards``, else one per GPU
            when ``device`` is a GPU, else one per worker).
        progress: a progress bar over the shards on stderr.

    Returns:
        The merged :class:`~genval.flows.TrainingHistory` (:func:`merge_histories`).

    Raises:
        InputError: bad events, or a GPU device on a cluster whose workers offer no ``GPU``.
    """
    settings = settings if settings is not None else TrainSettings()
    events = as_events(x, n_features=ensemble.n_features, min_events=2, name="training events")
    val = None if x_val is None else as_events(x_val, n_features=ensemble.n_features,
                                               name="validation events")
    weights = None if event_weights is None else as_event_weights(
        event_weights, len(events), name="training event weights")
    val_weights = None if val_event_weights is None else np.asarray(val_event_weights,
                                                                     dtype=np.float64)
    gpu = _gpu_device(device)
    if gpu and executor.n_gpus() == 0:
        raise InputError("device is a GPU but no worker offers a GPU resource: start the "
                         "workers with --resources GPU=1 (compute.slurm.gpus: 1)")
    n = shards or executor.settings.train_shards or (
        executor.n_gpus() if gpu else executor.n_workers)
    groups = shard_members(ensemble.n_members, n)
    shared_x = executor.share(events)
    shared_val = None if val is None else executor.share(val)
    shared_w = None if weights is None else executor.share(weights)
    # Contexts are checked by train() on the workers (shapes against the events).
    shared_c = None if context is None else executor.share(np.asarray(context,
                                                                      dtype=np.float64))
    ctx_val = None if context_val is None else np.asarray(context_val, dtype=np.float64)
    where = None if device is None else str(device)
    futures = [executor.submit(_train_shard, flow_io.to_bytes(*ensemble.subset(g).to_state()),
                               shared_x, shared_val, settings, where, shared_w, val_weights,
                               shared_c, ctx_val, resources={"GPU": 1} if gpu else None)
               for g in groups]
    with tqdm(total=ensemble.n_members, desc="flow ensemble (shards)", unit="member",
              disable=not progress, dynamic_ncols=True) as bar:
        done = executor.gather(futures, on_done=lambda i, _out: bar.update(len(groups[i])))
    histories = []
    for g, (state, history) in zip(groups, done, strict=True):
        _gather_shard(ensemble, g, state)
        histories.append(history)
    history = merge_histories(histories, groups, ensemble.n_members)
    ensemble.training_summary = history.summary()
    return history


def _gather_shard(ensemble: FlowEnsemble, members: NDArray[np.int64], state: bytes) -> None:
    """Copy a trained shard's parameters and standardisation into ``ensemble``."""
    meta, tensors = flow_io.from_bytes(state, source="trained shard")
    shard = FlowEnsemble.from_state(tensors, meta)
    if shard.member_seeds != [ensemble.member_seeds[i] for i in members]:
        raise ArtifactError("a trained shard holds other members than were sent")
    index = torch.as_tensor(members, device=ensemble.device)
    with torch.no_grad():
        for p, q in zip(ensemble.parameters(), shard.parameters(), strict=True):
            p.index_copy_(0, index, q.to(device=p.device, dtype=p.dtype))
    ensemble.loc, ensemble.scale = shard.loc.copy(), shard.scale.copy()
    ensemble.context_loc = shard.context_loc.copy()
    ensemble.context_scale = shard.context_scale.copy()

