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

**Conditional ensembles** (``FlowEnsemble(..., n_context=C)``) train on pairs ``(x_n, c_n)``:
``train(ens, x, context=c)`` minimises ``−Σ log f_m(x_n | c_n)``; the contexts travel with their
events through the validation split, the bootstrap replicas and the batches, and are
standardised with the training split's mean and standard deviation.

**Weighted events** (``event_weights``: Monte-Carlo weights ``s_n``, possibly negative). The
loss is the weighted NLL ``−Σ s_n log f(x_n) / Σ s_n``, an unbiased estimate of the
cross-entropy ``−∫ p log f`` of the density p the weighted sample represents, negative weights
included. A bootstrap replica resamples *events* uniformly with replacement, each drawn event
keeping its weight: the replica's weighted distribution then fluctuates as the weighted
sample's does (resampling in proportion to the weights would instead drop the negative ones
and change the sample's variance). Each batch's loss is divided by the replica's mean weight
times the batch size, not by the batch's own total weight: the batch loss is then an unbiased
estimate of the epoch loss, while a batch total near zero (or negative, when negative weights
dominate it) would blow up or flip the gradient. With negative weights a batch loss can still
be negative and noisy; the per-member gradient clipping bounds each step, and early stopping
uses the weighted loss on the whole validation split, whose total weight must be positive.
The weighted NLL with negative weights is unbounded below (a flow can carve a hole at a
negative-weight event); the held-out validation loss is what detects such over-fitting.

:func:`train` reads its settings from a :class:`TrainSettings` (or the same names as keywords)
and runs named steps: split off validation events, build the training tensors and replicas,
then per epoch train, validate and update the early-stopping record, and finally restore each
member's best parameters and return the :class:`TrainingHistory`.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1 and Sec. 3 (learning rate 5e-6, batch 512, patience 10, M = 60).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from tqdm.auto import tqdm

from genval._allocator import retain_freed_memory
from genval._settings import apply_overrides, setting_names
from genval._validation import MPS_UNSUPPORTED, as_context, as_event_weights, as_events
from genval.compute import SchedulerLike, open_executor
from genval.errors import InputError
from genval.flows.ensemble import PRECISIONS, FlowEnsemble
from genval.flows.optim import ALIGN, MemberAdam
from genval.members import check_context

__all__ = ["PAPER_TRAINING", "TrainSettings", "TrainingHistory", "train", "bootstrap_replicas"]

#: The paper's training settings (Sec. 3): 80k training / 20k validation events.
PAPER_TRAINING: dict[str, Any] = {"lr": 5e-6, "batch_size": 512, "patience": 10,
                                  "val_fraction": 0.2}


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train` fits the ensemble (paper Step 1); validated on construction.

    Attributes:
        val_fraction: fraction of ``x`` held out for validation when no ``x_val`` is given
            (checked only then).
        batch_size: events per member per optimiser step (paper: 512).
        lr: Adam learning rate (paper: 5e-6 with its large architecture; 1e-3 suits the small
            default architecture).
        max_epochs: upper limit on epochs.
        patience: a member stops after this many epochs without validation improvement.
        seed: seeds the split; with each member's seed it also seeds that member's bootstrap
            replica and batch order (so a member trains as it would alone).
        clip_grad: clip each member's gradient to this norm (its own norm over all its
            parameters); None disables.
        bootstrap: train each member on a bootstrap replica (paper); False: on the full split.
        standardise: set the feature standardisation from the training split first.
        precision: ``"float32"``, or ``"bfloat16"`` to run the products inside the MADEs'
            residual blocks in bf16 while training (:attr:`FlowEnsemble.precision`; the
            residual stream, the input and output layers, the spline, the loss, validation and
            every later evaluation stay in the ensemble's dtype): about 2.8x faster than
            float32 on a 2-core AVX512-BF16 CPU (BENCHMARKS), with a gradient error of 1-14 % of
            the minibatch noise (docs/method.md).
        micro_batch: split each step's batch into pieces of this many events to bound memory
            (gradients are accumulated, so the update is unchanged).
        tune_allocator: on a CPU with glibc, let the process keep freed memory for reuse
            (:func:`genval._allocator.retain_freed_memory`, process-wide, at most 1 GiB kept):
            without it every step page-faults its activations back in, 25 % slower on two
            cores (BENCHMARKS).

    Raises:
        InputError: a non-positive ``batch_size``, ``max_epochs``, ``patience`` or ``lr``, or
            an unknown ``precision``.
    """

    val_fraction: float = 0.2
    batch_size: int = 512
    lr: float = 1e-3
    max_epochs: int = 200
    patience: int = 10
    seed: int = 0
    clip_grad: float | None = 5.0
    bootstrap: bool = True
    standardise: bool = True
    precision: str = "float32"
    micro_batch: int | None = None
    tune_allocator: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {sorted(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be positive, got {self.lr}")
        # A non-positive micro-batch would make every step's inner loop empty: no update at all.
        if self.micro_batch is not None and (int(self.micro_batch) != self.micro_batch
                                             or self.micro_batch < 1):
            raise InputError(f"micro_batch must be a positive integer or None, "
                             f"got {self.micro_batch!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> TrainSettings:
        """The paper's settings (:data:`PAPER_TRAINING`, Sec. 3), with ``overrides``."""
        return cls().replace(**{**PAPER_TRAINING, **overrides})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(setting_names(cls()))

    def replace(self, **overrides: Any) -> TrainSettings:
        """A copy with some settings changed (validated).

        Raises:
            TypeError: a name that is not a setting; the message lists the valid ones.
        """
        return apply_overrides(self, overrides, "train")


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
    training split only: validation events are removed before resampling. Events are drawn
    uniformly whether or not they carry weights; a weighted event brings its weight along.
    """
    return np.stack([np.random.default_rng(_stream_seed(seed, s, 0)).integers(0, n_train, n_train)
                     for s in member_seeds])


def _adam(params: list[torch.Tensor], lr: float) -> MemberAdam:
    """Adam with torch's fused kernel, rounded alike for a member wherever it sits in the stack.

    The fused update reads and writes each parameter, gradient and moment once: a third of the
    time of the default multi-tensor update for 60 paper-size members on a CPU (BENCHMARKS).
    :class:`~genval.flows.optim.MemberAdam` keeps a member's numbers independent of the other
    members (a shard of the ensemble trains its members exactly as the whole ensemble would).
    """
    return MemberAdam(params, lr)


def _compact(work: FlowEnsemble, opt: MemberAdam, keep: list[int], lr: float
             ) -> tuple[FlowEnsemble, MemberAdam]:
    """Drop stopped members from the working ensemble, carrying over their Adam state."""
    new = work.subset(keep)
    new.precision = work.precision
    return new, opt.subset(list(new.parameters()), keep)


def _clip_per_member(params: list[torch.Tensor], max_norm: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    m = grads[0].shape[0]
    norm = torch.sqrt(sum(g.reshape(m, -1).square().sum(dim=1) for g in grads))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor.view((m,) + (1,) * (g.dim() - 1)))


def _aligned(y: torch.Tensor, axis: int) -> tuple[torch.Tensor, int]:
    """``y`` with its event axis padded to a multiple of ``ALIGN`` events, and the real count.

    The padding repeats the first event and is cut off before any loss: it makes each member's
    slice of every activation a whole number of SIMD blocks, so the vectorised kernels round a
    member's numbers alike whatever the other members (no scalar remainder falls on it).
    """
    n = y.shape[axis]
    extra = -n % ALIGN
    if extra == 0:
        return y, n
    first = y.narrow(axis, 0, 1)
    return torch.cat([y, first.expand(*[extra if d == axis else -1
                                         for d in range(y.dim())])], dim=axis), n


def _validation_chunk(ensemble: FlowEnsemble) -> int:
    """Validation events per pass: set by the architecture, never by the number of members.

    A member's validation loss is a sum over these passes, so the passes must be the same in a
    sub-ensemble (:mod:`genval.flows.shards`) as in the whole one; about 512 KiB of one
    activation per member on a CPU (32 MB for 60 paper members), 16 MiB on a GPU.
    """
    budget = (1 << 24) if ensemble.device.type == "cuda" else (1 << 19)
    cfg = ensemble.config
    width = max(cfg["hidden"], ensemble.n_features * (3 * cfg["bins"] - 1))
    itemsize = torch.finfo(ensemble.dtype).bits // 8
    return max(ALIGN, budget // (width * itemsize) // ALIGN * ALIGN)


@torch.no_grad()
def _nll(work: FlowEnsemble, y: torch.Tensor, chunk: int, weights: torch.Tensor | None = None,
         context: torch.Tensor | None = None) -> torch.Tensor:
    """Each member's mean NLL on ``y`` (given standardised ``context``); weighted by
    ``weights`` (float64, mean one) if given."""
    total = torch.zeros(work.n_members, dtype=torch.float64, device=y.device)
    for start in range(0, len(y), chunk):
        block, n = _aligned(y[start:start + chunk], axis=0)
        cb = None if context is None else _aligned(context[start:start + chunk], axis=0)[0]
        log_p = work.log_prob_standardised(block, None, cb)[:, :n].double()
        if weights is not None:
            log_p = log_p * weights[start:start + chunk]
        total -= log_p.sum(dim=1)
    return total / len(y)


# -- step 1: validation split ------------------------------------------------------------------
@dataclass(frozen=True)
class _Split:
    x_train: NDArray[np.float64]
    x_val: NDArray[np.float64]
    train_indices: NDArray[np.int64]
    val_indices: NDArray[np.int64]
    held_out: bool  # validation events taken from x (False: given as x_val)
    w_train: NDArray[np.float64] | None = None  # event weights (None: unweighted)
    w_val: NDArray[np.float64] | None = None
    c_train: NDArray[np.float64] | None = None  # contexts (None: unconditional)
    c_val: NDArray[np.float64] | None = None


def _split_contexts(split: _Split, context: NDArray[np.float64] | None,
                    context_val: NDArray[np.float64] | None) -> _Split:
    """The contexts of the split's training and validation events (same rows as the events)."""
    if context is None:
        return split
    c_val = context_val if not split.held_out else context[split.val_indices]
    return replace(split, c_train=context[split.train_indices], c_val=c_val)


def _split_validation(events: NDArray[np.float64], x_val: ArrayLike | None,
                      settings: TrainSettings, n_features: int,
                      weights: NDArray[np.float64] | None = None,
                      val_weights: ArrayLike | None = None) -> _Split:
    """Hold out validation events *before* any bootstrap, so no replica contains one.

    Raises:
        InputError: bad ``val_fraction``; validation weights without validation events, or
            validation events whose weights do not sum to a positive total.
    """
    if x_val is not None:
        val = as_events(x_val, n_features=n_features, name="validation events")
        w_val = None if val_weights is None else as_event_weights(
            val_weights, len(val), name="weights of the validation events")
        return _Split(events, val, np.arange(len(events)), np.empty(0, dtype=np.int64),
                      held_out=False, w_train=weights, w_val=w_val)
    if val_weights is not None:
        raise InputError("val_event_weights needs x_val (the held-out validation events take "
                         "their weights from event_weights)")
    fraction = settings.val_fraction
    if not 0 < fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1), got {fraction}")
    n_val = max(1, int(round(fraction * len(events))))
    if n_val >= len(events):
        raise InputError(f"{len(events)} events leave nothing to train on")
    order = np.random.default_rng(settings.seed).permutation(len(events))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if weights is None:
        return _Split(events[train_idx], events[val_idx], train_idx, val_idx, held_out=True)
    w_train, w_val = weights[train_idx], weights[val_idx]
    for name, w in (("training", w_train), ("validation", w_val)):
        if not w.sum() > 0:
            raise InputError(f"the weights of the {name} events (val_fraction={fraction} of "
                             f"the training split) sum to {w.sum():.6g}: the weighted NLL "
                             "needs a positive total weight")
    return _Split(events[train_idx], events[val_idx], train_idx, val_idx, held_out=True,
                  w_train=w_train, w_val=w_val)


# -- step 2: tensors and replicas --------------------------------------------------------------
@dataclass(frozen=True)
class _TrainingData:
    y_train: torch.Tensor  # standardised training split (n_train, D), ensemble dtype/device
    y_val: torch.Tensor  # standardised validation events
    replicas: torch.Tensor  # (M, n_train) indices into y_train, one replica per member
    shufflers: list[torch.Generator]  # one batch-order stream per member
    const: float  # NLL in data units = NLL of standardised features - const
    val_chunk: int
    # Weighted events: (M, n_train) weight of each replica entry, normalised to mean one per
    # replica, in the ensemble's dtype; the validation weights (float64, mean one). None when
    # the events are unweighted.
    weights: torch.Tensor | None = None
    val_weights: torch.Tensor | None = None
    # Standardised contexts of the training split and the validation events (None:
    # unconditional), in the ensemble's dtype.
    c_train: torch.Tensor | None = None
    c_val: torch.Tensor | None = None


def _replica_weights(w_train: NDArray[np.float64], replicas: NDArray[np.int64],
                     member_seeds: list[int]) -> NDArray[np.float64]:
    """Each replica entry's event weight, divided by the replica's mean weight.

    Raises:
        InputError: a replica whose weights sum to zero or less (no weighted NLL defined).
    """
    weights = w_train[replicas]
    totals = weights.sum(axis=1)
    bad = np.flatnonzero(~(totals > 0))
    if bad.size:
        raise InputError(f"the bootstrap replica of member {int(bad[0])} (seed "
                         f"{member_seeds[int(bad[0])]}) has total weight {totals[bad[0]]:.4g} "
                         f"<= 0 ({bad.size} replica(s) so): too many negative weights for the "
                         "number of training events")
    return weights / (totals / weights.shape[1])[:, None]

def _training_data(ensemble: FlowEnsemble, split: _Split, settings: TrainSettings
                   ) -> _TrainingData:
    dev, dtype, n_tr = ensemble.device, ensemble.dtype, len(split.x_train)
    replicas = (bootstrap_replicas(n_tr, ensemble.member_seeds, settings.seed)
                if settings.bootstrap else np.tile(np.arange(n_tr), (ensemble.n_members, 1)))
    # One shuffling stream per member, keyed by (seed, member seed) like its replica: a member
    # trains exactly as it would alone, whatever the other members do.
    shufflers = [torch.Generator(device=dev).manual_seed(_stream_seed(settings.seed, s, 1))
                 for s in ensemble.member_seeds]
    weights = val_weights = None
    if split.w_train is not None:
        weights = torch.as_tensor(_replica_weights(split.w_train, replicas,
                                                   ensemble.member_seeds),
                                  dtype=dtype, device=dev)
    if split.w_val is not None:
        val_weights = torch.as_tensor(split.w_val / split.w_val.mean(), dtype=torch.float64,
                                      device=dev)
    c_train = c_val = None
    if split.c_train is not None and split.c_val is not None:
        loc, scale = ensemble.context_loc, ensemble.context_scale
        c_train = torch.as_tensor((split.c_train - loc) / scale, dtype=dtype, device=dev)
        c_val = torch.as_tensor((split.c_val - loc) / scale, dtype=dtype, device=dev)
    return _TrainingData(
        y_train=torch.as_tensor((split.x_train - ensemble.loc) / ensemble.scale, dtype=dtype,
                                device=dev),
        y_val=torch.as_tensor((split.x_val - ensemble.loc) / ensemble.scale, dtype=dtype,
                              device=dev),
        replicas=torch.as_tensor(replicas, device=dev), shufflers=shufflers,
        const=ensemble.log_det_standardisation, val_chunk=_validation_chunk(ensemble),
        weights=weights, val_weights=val_weights, c_train=c_train, c_val=c_val)


# -- step 3: one epoch -------------------------------------------------------------------------
def _train_epoch(work: FlowEnsemble, opt: MemberAdam, data: _TrainingData,
                 active: list[int], settings: TrainSettings) -> NDArray[np.float64]:
    """One pass of every active member over its replica, in its own order.

    With event weights each event's NLL counts ``s_n / mean(s over the replica)``, so a batch
    of b events contributes ``−Σ s̃ log f / b``: an unbiased estimate of the weighted NLL whose
    normalisation does not depend on the batch (see the module notes).

    Returns:
        Each active member's mean training NLL during the epoch, in data units.
    """
    n_tr, dev = len(data.y_train), data.y_train.device
    orders = [torch.randperm(n_tr, generator=data.shufflers[g], device=dev) for g in active]
    rows = torch.stack([data.replicas[g][o] for g, o in zip(active, orders, strict=True)])
    weights = (None if data.weights is None else
               torch.stack([data.weights[g][o] for g, o in zip(active, orders, strict=True)]))
    sums = torch.zeros(len(active), dtype=torch.float64, device=dev)
    params = list(work.parameters())
    batch, micro = int(settings.batch_size), int(settings.micro_batch or settings.batch_size)
    with work.compute_precision(settings.precision):
        for start in range(0, n_tr, batch):
            xb = data.y_train[rows[:, start:start + batch]]  # (M', b, D)
            cb = None if data.c_train is None else data.c_train[rows[:, start:start + batch]]
            wb = None if weights is None else weights[:, start:start + batch]  # (M', b)
            opt.zero_grad()
            for ms in range(0, xb.shape[1], micro):
                # Sum of the members' mean NLLs: member m's gradient is its own alone.
                piece, n = _aligned(xb[:, ms:ms + micro], axis=1)
                cpiece = None if cb is None else _aligned(cb[:, ms:ms + micro], axis=1)[0]
                log_p = work.log_prob_standardised(piece, None, cpiece)[:, :n]
                if wb is not None:
                    log_p = log_p * wb[:, ms:ms + micro]
                nll = -log_p.sum(dim=1)
                (nll.sum() / xb.shape[1]).backward()
                sums += nll.detach().double()
            if settings.clip_grad is not None:
                _clip_per_member(params, settings.clip_grad)
            opt.step()
    return (sums / n_tr).cpu().numpy() - data.const


def _validation_loss(work: FlowEnsemble, data: _TrainingData) -> NDArray[np.float64]:
    """Each active member's mean NLL (weighted, with event weights) on the validation events."""
    with work.compute_precision("float32"):
        return (_nll(work, data.y_val, data.val_chunk, data.val_weights,
                     data.c_val).cpu().numpy() - data.const)


# -- step 4: early-stopping bookkeeping --------------------------------------------------------
@dataclass
class _EarlyStopping:
    """Per-member best checkpoint, patience counter and learning curves (global indices)."""

    best: list[torch.Tensor]  # best parameters of every member, stacked like the ensemble's
    best_val: NDArray[np.float64]
    best_epoch: NDArray[np.int64]
    since_best: NDArray[np.int64]
    stopped_early: NDArray[np.bool_]
    diverged: NDArray[np.bool_]
    train_curve: list[NDArray[np.float64]] = field(default_factory=list)
    val_curve: list[NDArray[np.float64]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, ensemble: FlowEnsemble) -> _EarlyStopping:
        m = ensemble.n_members
        return cls(best=[p.detach().clone() for p in ensemble.parameters()],
                   best_val=np.full(m, np.inf), best_epoch=np.full(m, -1, dtype=np.int64),
                   since_best=np.zeros(m, dtype=np.int64), stopped_early=np.zeros(m, dtype=bool),
                   diverged=np.zeros(m, dtype=bool))

    def record(self, epoch: int, active: list[int], work: FlowEnsemble,
               tr: NDArray[np.float64], va: NDArray[np.float64], patience: int
               ) -> NDArray[np.bool_]:
        """Log an epoch's losses, checkpoint improved members (``work`` holds ``active``).

        Returns:
            For each active member, whether it stops now (diverged or out of patience).
        """
        idx = np.asarray(active)
        for curve, vals in ((self.train_curve, tr), (self.val_curve, va)):
            row = np.full(len(self.best_val), np.nan)
            row[idx] = vals
            curve.append(row)
        bad = ~(np.isfinite(tr) & np.isfinite(va))
        improved = ~bad & (va < self.best_val[idx])
        if improved.any():
            dev = work.device
            local = torch.as_tensor(np.flatnonzero(improved), device=dev)
            glob = torch.as_tensor(idx[improved], device=dev)
            with torch.no_grad():
                for b, p in zip(self.best, work.parameters(), strict=True):
                    b.index_copy_(0, glob, p.index_select(0, local))
            self.best_val[idx[improved]] = va[improved]
            self.best_epoch[idx[improved]] = epoch
        self.since_best[idx] = np.where(improved, 0, self.since_best[idx] + 1)
        self.diverged[idx[bad]] = True
        out = bad | (self.since_best[idx] >= patience)
        self.stopped_early[idx[out & ~bad]] = True
        return out

    def mean_best(self) -> str:
        finite = np.isfinite(self.best_val)
        return f"{np.mean(self.best_val[finite]):.4f}" if finite.any() else "n/a"

    # -- step 5: restore the best parameters ---------------------------------------------------
    def restore_best(self, ensemble: FlowEnsemble) -> None:
        with torch.no_grad():
            for b, p in zip(self.best, ensemble.parameters(), strict=True):
                p.copy_(b)


def _run_epochs(ensemble: FlowEnsemble, data: _TrainingData, record: _EarlyStopping,
                settings: TrainSettings, progress: bool) -> None:
    """Train, validate and check every active member each epoch until all have stopped."""
    work, active = ensemble, list(range(ensemble.n_members))
    opt = _adam(list(work.parameters()), settings.lr)
    bar = tqdm(total=int(settings.max_epochs), desc="flow ensemble", unit="epoch",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(int(settings.max_epochs)):
            start_time = time.perf_counter()
            tr = _train_epoch(work, opt, data, active, settings)
            va = _validation_loss(work, data)
            out = record.record(epoch, active, work, tr, va, settings.patience)
            record.seconds.append(time.perf_counter() - start_time)
            bar.update(1)
            bar.set_postfix(active=int((~out).sum()), val=record.mean_best())
            if out.all():
                break
            if out.any():
                keep = np.flatnonzero(~out).tolist()
                work, opt = _compact(work, opt, keep, settings.lr)
                active = [active[k] for k in keep]
    finally:
        bar.close()


# -- step 6: history ---------------------------------------------------------------------------
def _history(record: _EarlyStopping, split: _Split, settings: TrainSettings,
             device: torch.device) -> TrainingHistory:
    m_total = len(record.best_val)
    return TrainingHistory(
        train_loss=np.array(record.train_curve).reshape(-1, m_total),
        val_loss=np.array(record.val_curve).reshape(-1, m_total),
        best_epoch=record.best_epoch, best_val_loss=record.best_val,
        stopped_early=record.stopped_early, diverged=record.diverged,
        epoch_seconds=np.asarray(record.seconds), val_indices=split.val_indices,
        train_indices=split.train_indices,
        settings={"n_train": len(split.x_train), "n_val": len(split.x_val),
                  "val_fraction": float(settings.val_fraction) if split.held_out else None,
                  "batch_size": int(settings.batch_size), "lr": float(settings.lr),
                  "max_epochs": int(settings.max_epochs), "patience": int(settings.patience),
                  "seed": int(settings.seed), "clip_grad": settings.clip_grad,
                  "bootstrap": bool(settings.bootstrap), "precision": settings.precision,
                  "device": str(device), "weighted": split.w_train is not None})


def _contexts(ensemble: FlowEnsemble, n_events: int, context: ArrayLike | None,
              x_val: ArrayLike | None, context_val: ArrayLike | None, split: _Split
              ) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Checked contexts of ``x`` and of ``x_val`` for the ensemble's ``n_context``.

    Raises:
        InputError: a context for an unconditional ensemble, none for a conditional one, a
            ``context_val`` without ``x_val`` (or missing with it), or malformed contexts.
    """
    ctx = check_context(ensemble.n_context, context, n_events, name="training contexts")
    if ctx is None:
        if context_val is not None:
            raise InputError("context_val given for an unconditional ensemble")
        return None, None
    if x_val is None:
        if context_val is not None:
            raise InputError("context_val needs x_val (held-out validation events take their "
                             "contexts from context)")
        return ctx, None
    if context_val is None:
        raise InputError("a conditional ensemble with x_val needs context_val")
    return ctx, as_context(context_val, len(split.x_val), ensemble.n_context,
                           name="validation contexts")


def train(ensemble: FlowEnsemble, x: ArrayLike, *, x_val: ArrayLike | None = None,
          settings: TrainSettings | None = None, device: str | torch.device | None = None,
          progress: bool = True, event_weights: ArrayLike | None = None,
          val_event_weights: ArrayLike | None = None, scheduler: SchedulerLike = None,
          context: ArrayLike | None = None, context_val: ArrayLike | None = None,
          **overrides: Any) -> TrainingHistory:
    """Train every member of ``ensemble`` in place (paper Step 1).

    Args:
        ensemble: the ensemble; its parameters are replaced by each member's best checkpoint.
        x: training events (N, D).
        x_val: explicit validation events; by default a random ``settings.val_fraction`` of
            ``x`` is held out *before* bootstrapping.
        settings: the :class:`TrainSettings` (default: ``TrainSettings()``).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the ensemble is); the ensemble stays
            there afterwards.
        progress: show a progress bar on stderr.
        event_weights: optional (N,) per-event weights of ``x`` (Monte-Carlo weights, finite,
            possibly negative, positive total): the loss becomes the weighted NLL, the held-out
            validation events keep their weights, and the bootstrap replicas resample events
            with their weights (module notes). None: unweighted.
        val_event_weights: weights of ``x_val`` (only with ``x_val``; None: unweighted).
        scheduler: where to train (:mod:`genval.compute`): None or ``"local"`` (this
            process), or a Dask scheduler (``"processes"``, ``"tcp://HOST:PORT"``,
            ``"slurm"``, an open :class:`~genval.compute.Executor`): the ensemble is split
            into sub-ensembles trained on the workers (:mod:`genval.flows.shards`; on a CPU
            the members equal those of a single-process run bit for bit), and ``device`` is
            where each shard trains on its worker.
        context: (N, C) contexts of ``x``, required exactly when the ensemble is conditional
            (``n_context = C > 0``): member m learns ``f_m(x | c)``.
        context_val: (N_val, C) contexts of ``x_val`` (conditional ensembles with ``x_val``).
        **overrides: :class:`TrainSettings` fields given by name (``lr=1e-3, patience=5``),
            applied on top of ``settings``.

    Returns:
        :class:`TrainingHistory`; its :meth:`~TrainingHistory.summary` is also stored on the
        ensemble as ``training_summary``.

    Raises:
        TypeError: a keyword that is not a :class:`TrainSettings` field.
        InputError: invalid settings, events, contexts or weights (NaN/inf, wrong length, a
            training, validation or replica total weight ≤ 0; a context for an unconditional
            ensemble or none for a conditional one).
    """
    settings = (settings if settings is not None else TrainSettings()).replace(**overrides)
    if scheduler is not None:
        with open_executor(scheduler) as executor:
            if executor is not None:
                from genval.flows.shards import train_sharded

                return train_sharded(ensemble, x, executor=executor, x_val=x_val,
                                     settings=settings, device=device, progress=progress,
                                     event_weights=event_weights,
                                     val_event_weights=val_event_weights, context=context,
                                     context_val=context_val)
    events = as_events(x, n_features=ensemble.n_features, min_events=2, name="training events")
    weights = None if event_weights is None else as_event_weights(
        event_weights, len(events), name="training event weights")
    split = _split_validation(events, x_val, settings, ensemble.n_features, weights,
                              val_event_weights)
    ctx, ctx_val = _contexts(ensemble, len(events), context, x_val, context_val, split)
    split = _split_contexts(split, ctx, ctx_val)
    if settings.standardise:
        ensemble.set_standardisation(split.x_train)
        if split.c_train is not None:
            ensemble.set_context_standardisation(split.c_train)
    dev = torch.device(device) if device is not None else ensemble.device
    if dev.type == "mps":
        raise InputError(MPS_UNSUPPORTED)
    if settings.tune_allocator and dev.type == "cpu":
        retain_freed_memory()
    ensemble.to(dev)
    data = _training_data(ensemble, split, settings)
    record = _EarlyStopping.start(ensemble)
    _run_epochs(ensemble, data, record, settings, progress)
    record.restore_best(ensemble)
    history = _history(record, split, settings, dev)
    ensemble.training_summary = history.summary()
    return history
