"""Training a flow ensemble: every member on its own bootstrap replica, in one optimiser step.

Step 1 of the paper trains M flows on bootstrap replicas with independent initialisations,
with Adam, batch 512 and early stopping after 10 epochs without validation improvement. Here:

* the validation events are split off *before* bootstrapping, so a replica never contains a
  validation event (the reference code bootstrapped first and leaked duplicates into its
  validation set, which biases early stopping);
* member m sees its own replica (its own seed) in its own random order, one batch of
  ``batch_size`` events per member per step; the loss is the sum of the members' mean NLLs,
  so each member's gradient, its Adam update (elementwise) and its clipping (its own gradient
  norm) are exactly those of a flow trained alone;
* each member keeps its best-validation parameters; a member that has not improved for
  ``patience`` epochs stops and is removed from the computation (the working ensemble is
  compacted together with its Adam state), so stopped members cost nothing.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1 and Sec. 3 (learning rate 5e-6, batch 512, patience 10, M = 60).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from tqdm import tqdm

from genval._allocator import retain_freed_memory
from genval._validation import as_events
from genval.errors import InputError
from genval.flows.ensemble import FlowEnsemble

__all__ = ["PAPER_TRAINING", "TrainingHistory", "train", "bootstrap_replicas"]

#: The paper's training settings (Sec. 3): 80k training / 20k validation events.
PAPER_TRAINING: dict[str, Any] = {"lr": 5e-6, "batch_size": 512, "patience": 10,
                                  "val_fraction": 0.2}

_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainingHistory:
    """Per-member learning curves and early-stopping outcome of :func:`train`.

    Losses are mean negative log-likelihoods per event in data units (the standardisation
    Jacobian included), NaN for epochs after a member stopped.

    Attributes:
        train_loss: ``(epochs, M)`` mean NLL on each member's bootstrap replica during the epoch.
        val_loss: ``(epochs, M)`` mean NLL on the common validation events after the epoch.
        best_epoch: ``(M,)`` 0-based epoch of the kept parameters (-1: initial parameters).
        best_val_loss: ``(M,)`` validation NLL of the kept parameters.
        stopped_early: ``(M,)`` True where patience ran out before ``max_epochs``.
        diverged: ``(M,)`` True where the loss became non-finite (the best parameters are kept).
        epoch_seconds: ``(epochs,)`` wall time per epoch, validation included.
        val_indices: indices of ``x`` used for validation (empty when ``x_val`` was given).
        train_indices: indices of ``x`` forming the training split; the bootstrap replicas
            (:func:`bootstrap_replicas`) index into it.
        settings: the arguments of the run.
    """

    train_loss: NDArray[np.float64]
    val_loss: NDArray[np.float64]
    best_epoch: NDArray[np.int64]
    best_val_loss: NDArray[np.float64]
    stopped_early: NDArray[np.bool_]
    diverged: NDArray[np.bool_]
    epoch_seconds: NDArray[np.float64]
    val_indices: NDArray[np.int64]
    train_indices: NDArray[np.int64]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_epochs(self) -> NDArray[np.int64]:
        """Epochs trained by each member."""
        return np.isfinite(self.train_loss).sum(axis=0)

    @property
    def total_seconds(self) -> float:
        return float(self.epoch_seconds.sum())

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (stored with the ensemble by :func:`genval.flows.save`)."""
        def clean(a: NDArray[Any]) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v
                    for v in a.tolist()]
        return {"settings": self.settings, "best_epoch": self.best_epoch.tolist(),
                "best_val_loss": clean(self.best_val_loss), "n_epochs": self.n_epochs.tolist(),
                "stopped_early": self.stopped_early.tolist(), "diverged": self.diverged.tolist(),
                "total_seconds": self.total_seconds}

    def __repr__(self) -> str:
        best = self.best_val_loss[np.isfinite(self.best_val_loss)]
        span = f"{best.min():.4f}..{best.max():.4f}" if best.size else "n/a"
        return (f"TrainingHistory(members={self.best_epoch.size}, epochs={len(self.epoch_seconds)}"
                f", best val NLL {span}, stopped early {int(self.stopped_early.sum())}, "
                f"diverged {int(self.diverged.sum())}, {self.total_seconds:.1f} s)")


def _stream_seed(seed: int, member_seed: int, purpose: int) -> int:
    state = np.random.SeedSequence([int(seed), int(member_seed), purpose]).generate_state(1)
    return int(state[0])


def bootstrap_replicas(n_train: int, member_seeds: list[int], seed: int) -> NDArray[np.int64]:
    """Bootstrap indices ``(M, n_train)`` into the training split, one stream per member.

    Member m's replica depends only on ``(seed, member_seeds[m])``. The indices refer to the
    training split only: validation events are removed before resampling.
    """
    return np.stack([np.random.default_rng(_stream_seed(seed, s, 0)).integers(0, n_train, n_train)
                     for s in member_seeds])


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, as one fused kernel over all parameters where the build supports it.

    The fused update reads and writes each parameter, gradient and moment once: a third of the
    time of the default multi-tensor update for 60 paper-size members on a CPU (BENCHMARKS).
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def _compact(work: FlowEnsemble, opt: torch.optim.Adam, keep: list[int], lr: float
             ) -> tuple[FlowEnsemble, torch.optim.Adam]:
    """Drop stopped members from the working ensemble, carrying over their Adam state."""
    new = work.subset(keep)
    new._autocast = work._autocast
    new_opt = _adam(list(new.parameters()), lr)
    index = torch.as_tensor(keep, device=work.device)
    for p_old, p_new in zip(work.parameters(), new.parameters(), strict=True):
        state = opt.state.get(p_old)
        if state:
            new_opt.state[p_new] = {
                k: (v.index_select(0, index) if torch.is_tensor(v) and v.dim() > 0
                    else v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    return new, new_opt


def _clip_per_member(params: list[torch.Tensor], max_norm: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    m = grads[0].shape[0]
    norm = torch.sqrt(sum(g.reshape(m, -1).square().sum(dim=1) for g in grads))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor.view((m,) + (1,) * (g.dim() - 1)))


@torch.no_grad()
def _nll(work: FlowEnsemble, y: torch.Tensor, chunk: int) -> torch.Tensor:
    total = torch.zeros(work.n_members, dtype=torch.float64, device=y.device)
    for start in range(0, len(y), chunk):
        total -= work.log_prob_standardised(y[start:start + chunk]).double().sum(dim=1)
    return total / len(y)


def train(ensemble: FlowEnsemble, x: ArrayLike, *, x_val: ArrayLike | None = None,
          val_fraction: float = 0.2, batch_size: int = 512, lr: float = 1e-3,
          max_epochs: int = 200, patience: int = 10, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True,
          clip_grad: float | None = 5.0, bootstrap: bool = True, standardise: bool = True,
          precision: str = "float32", micro_batch: int | None = None,
          tune_allocator: bool = True) -> TrainingHistory:
    """Train every member of ``ensemble`` in place (paper Step 1).

    Args:
        ensemble: the ensemble; its parameters are replaced by each member's best checkpoint.
        x: training events (N, D).
        x_val: explicit validation events; by default a random ``val_fraction`` of ``x`` is
            held out *before* bootstrapping.
        val_fraction: fraction of ``x`` held out for validation when ``x_val`` is None.
        batch_size: events per member per optimiser step (paper: 512).
        lr: Adam learning rate (paper: 5e-6 with its large architecture; 1e-3 suits the small
            default architecture).
        max_epochs: upper limit on epochs.
        patience: a member stops after this many epochs without validation improvement.
        seed: seeds the split; with each member's seed it also seeds that member's bootstrap
            replica and batch order (so a member trains as it would alone).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the ensemble is); the ensemble stays
            there afterwards.
        progress: show a progress bar on stderr.
        clip_grad: clip each member's gradient to this norm (its own norm over all its
            parameters); None disables.
        bootstrap: train each member on a bootstrap replica (paper); False: on the full split.
        standardise: set the feature standardisation from the training split first.
        precision: ``"float32"``, or ``"bfloat16"`` to run the products inside the MADEs'
            residual blocks in bf16 (:mod:`genval.flows.residual`; the residual stream, the
            input and output layers, the spline, the loss, validation and every later
            evaluation stay in the ensemble's dtype): about 2.8x faster than float32 on a
            2-core AVX512-BF16 CPU (BENCHMARKS), with a gradient error of 1-14 % of the
            minibatch noise (docs/method.md).
        micro_batch: split each step's batch into pieces of this many events to bound memory
            (gradients are accumulated, so the update is unchanged).
        tune_allocator: on a CPU with glibc, let the process keep freed memory for reuse
            (:func:`genval._allocator.retain_freed_memory`, process-wide, at most 1 GiB kept):
            without it every step page-faults its activations back in, 25 % slower on two
            cores (BENCHMARKS).

    Returns:
        :class:`TrainingHistory`; its :meth:`~TrainingHistory.summary` is also stored on the
        ensemble as ``training_summary``.
    """
    events = as_events(x, n_features=ensemble.n_features, min_events=2, name="training events")
    for name, value in [("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience)]:
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if precision not in _PRECISIONS:
        raise InputError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"lr must be positive, got {lr}")
    if x_val is None:
        if not 0 < val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(1, int(round(val_fraction * len(events))))
        if n_val >= len(events):
            raise InputError(f"{len(events)} events leave nothing to train on")
        order = np.random.default_rng(seed).permutation(len(events))
        val_idx, train_idx = order[:n_val], order[n_val:]
        x_tr, x_va = events[train_idx], events[val_idx]
    else:
        val_idx, train_idx = np.empty(0, dtype=np.int64), np.arange(len(events))
        x_tr = events
        x_va = as_events(x_val, n_features=ensemble.n_features, name="validation events")
    if standardise:
        ensemble.set_standardisation(x_tr)
    dev = torch.device(device) if device is not None else ensemble.device
    if tune_allocator and dev.type == "cpu":
        retain_freed_memory()
    ensemble.to(dev)
    dtype, m_total, n_tr = ensemble.dtype, ensemble.n_members, len(x_tr)
    y_tr = torch.as_tensor((x_tr - ensemble.loc) / ensemble.scale, dtype=dtype, device=dev)
    y_va = torch.as_tensor((x_va - ensemble.loc) / ensemble.scale, dtype=dtype, device=dev)
    const = ensemble.log_det_standardisation  # NLL in data units = NLL_std - const
    replicas_t = torch.as_tensor(
        bootstrap_replicas(n_tr, ensemble.member_seeds, seed) if bootstrap
        else np.tile(np.arange(n_tr), (m_total, 1)), device=dev)
    # One shuffling stream per member, keyed by (seed, member seed) like its replica: a member
    # trains exactly as it would alone, whatever the other members do.
    shufflers = [torch.Generator(device=dev).manual_seed(_stream_seed(seed, s, 1))
                 for s in ensemble.member_seeds]
    batch, micro = int(batch_size), int(micro_batch or batch_size)
    val_chunk = ensemble._chunk(None)

    work, active = ensemble, list(range(m_total))
    opt = _adam(list(work.parameters()), lr)
    best = [p.detach().clone() for p in ensemble.parameters()]
    best_val = np.full(m_total, np.inf)
    best_epoch = np.full(m_total, -1, dtype=np.int64)
    since_best = np.zeros(m_total, dtype=np.int64)
    stopped_early = np.zeros(m_total, dtype=bool)
    diverged = np.zeros(m_total, dtype=bool)
    train_curve: list[NDArray[np.float64]] = []
    val_curve: list[NDArray[np.float64]] = []
    seconds: list[float] = []
    bar = tqdm(total=int(max_epochs), desc="flow ensemble", unit="epoch", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(int(max_epochs)):
            start_time = time.perf_counter()
            rows = torch.stack([replicas_t[g][torch.randperm(n_tr, generator=shufflers[g],
                                                             device=dev)] for g in active])
            sums = torch.zeros(len(active), dtype=torch.float64, device=dev)
            work._autocast = _PRECISIONS[precision]
            params = list(work.parameters())
            for s in range(0, n_tr, batch):
                xb = y_tr[rows[:, s:s + batch]]  # (M', b, D)
                opt.zero_grad(set_to_none=True)
                for ms in range(0, xb.shape[1], micro):
                    nll = -work.log_prob_standardised(xb[:, ms:ms + micro]).sum(dim=1)
                    (nll.sum() / xb.shape[1]).backward()
                    sums += nll.detach().double()
                if clip_grad is not None:
                    _clip_per_member(params, clip_grad)
                opt.step()
            work._autocast = None
            tr = (sums / n_tr).cpu().numpy() - const
            va = _nll(work, y_va, val_chunk).cpu().numpy() - const
            idx = np.asarray(active)
            for curve, vals in ((train_curve, tr), (val_curve, va)):
                row = np.full(m_total, np.nan)
                row[idx] = vals
                curve.append(row)
            bad = ~(np.isfinite(tr) & np.isfinite(va))
            improved = ~bad & (va < best_val[idx])
            if improved.any():
                local = torch.as_tensor(np.flatnonzero(improved), device=dev)
                glob = torch.as_tensor(idx[improved], device=dev)
                with torch.no_grad():
                    for b, p in zip(best, work.parameters(), strict=True):
                        b.index_copy_(0, glob, p.index_select(0, local))
                best_val[idx[improved]] = va[improved]
                best_epoch[idx[improved]] = epoch
            since_best[idx] = np.where(improved, 0, since_best[idx] + 1)
            diverged[idx[bad]] = True
            out = bad | (since_best[idx] >= patience)
            stopped_early[idx[out & ~bad]] = True
            seconds.append(time.perf_counter() - start_time)
            bar.update(1)
            bar.set_postfix(active=int((~out).sum()),
                            val=f"{np.mean(best_val[np.isfinite(best_val)]):.4f}"
                            if np.isfinite(best_val).any() else "n/a")
            if out.all():
                break
            if out.any():
                keep = np.flatnonzero(~out).tolist()
                work, opt = _compact(work, opt, keep, lr)
                active = [active[k] for k in keep]
    finally:
        bar.close()
        work._autocast = None
    with torch.no_grad():
        for b, p in zip(best, ensemble.parameters(), strict=True):
            p.copy_(b)
    history = TrainingHistory(
        train_loss=np.array(train_curve).reshape(-1, m_total),
        val_loss=np.array(val_curve).reshape(-1, m_total), best_epoch=best_epoch,
        best_val_loss=best_val, stopped_early=stopped_early, diverged=diverged,
        epoch_seconds=np.asarray(seconds), val_indices=val_idx, train_indices=train_idx,
        settings={"n_train": n_tr, "n_val": len(x_va), "val_fraction": None
                  if x_val is not None else float(val_fraction), "batch_size": batch,
                  "lr": float(lr), "max_epochs": int(max_epochs), "patience": int(patience),
                  "seed": int(seed), "clip_grad": clip_grad, "bootstrap": bool(bootstrap),
                  "precision": precision, "device": str(dev)})
    ensemble.training_summary = history.summary()
    return history
