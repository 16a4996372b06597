"""An ensemble of M masked autoregressive rational-quadratic spline flows in one module.

Step 1 of the paper trains M normalizing flows, each on its own bootstrap replica with its own
initialisation. nflows can only hold one flow per module, so the reference code trained them
one after the other. :class:`FlowEnsemble` stacks the members along a leading axis of every
weight (see :mod:`genval.flows.made`), so a forward pass, a backward pass and an optimiser step
serve all members at once, while each member's numbers stay exactly those of an independent
flow: members share no parameter, only the autoregressive masks and the permutations.

One member is the nflows flow ::

    Flow(CompositeTransform([ReversePermutation(D),
                             MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                                 D, hidden, num_bins=bins, num_blocks=blocks, tails="linear",
                                 tail_bound=tail_bound)] * layers), StandardNormal([D]))

preceded by a fixed affine standardisation of the features (training mean and standard
deviation), whose Jacobian is part of the density.

**Conditional flows** (``n_context = C > 0``): every MADE takes the standardised context as an
extra, unmasked input (:mod:`genval.flows.made`), so member m is a density ``f_m(x | c)`` in x
for every context c: ``log_prob(x, context=c)`` evaluates N pairs ``(x_n, c_n)`` and
``sample(n, member, rng, context=c)`` draws ``x | c``. The context is standardised with its
training mean and standard deviation, which is no change of variables of x (no Jacobian).
With ``n_context = 0`` (the default) nothing differs from an unconditional ensemble.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1 (ensemble of flows with bootstrap and independent initialisations) and Sec. 3
    (4 layers, 16 blocks, 128 hidden features, 15 bins); Durkan et al., "Neural spline flows".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from genval._validation import MPS_UNSUPPORTED, as_context, as_events, as_rng
from genval.errors import ArtifactError, InputError
from genval.flows import io as flow_io
from genval.flows.made import EnsembleMADE
from genval.flows.spline import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    rational_quadratic_spline,
)
from genval.members import check_context

__all__ = ["FlowEnsemble", "PAPER_ARCHITECTURE", "PRECISIONS", "save", "load"]

#: The paper's flow (Sec. 3): nflows ``num_layers=4, num_blocks=16, hidden_features=128,
#: num_bins=15``.
PAPER_ARCHITECTURE: dict[str, int] = {"layers": 4, "blocks": 16, "hidden": 128, "bins": 15}

#: Arithmetic of the products inside the MADEs' residual blocks (:attr:`FlowEnsemble.precision`).
PRECISIONS: tuple[str, ...] = ("bfloat16", "float32")
# "float32" runs everything in the ensemble's own dtype (no autocast); "bfloat16" autocasts the
# residual blocks' products (genval.flows.residual), where mixed-precision training gains.
_AUTOCAST: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
_LOG_2PI = math.log(2 * math.pi)
_PERMUTATIONS = ("reverse", "random", "none")


def _member_seeds(seed: int, n_members: int) -> list[int]:
    # Independent streams per member (SeedSequence spawning), stored so that a member can be
    # re-created alone: its initial weights depend only on its own seed.
    children = np.random.SeedSequence(seed).spawn(n_members)
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


class FlowEnsemble(nn.Module):
    """M rational-quadratic spline masked autoregressive flows, evaluated and trained together.

    Implements the :class:`genval.members.Members` protocol.

    Args:
        n_features: D.
        n_members: M.
        layers: autoregressive transforms, each preceded by a permutation.
        hidden: hidden features of each MADE (nflows ``hidden_features``).
        blocks: residual blocks of each MADE (nflows ``num_blocks``).
        bins: spline bins (nflows ``num_bins``).
        tail_bound: the spline acts on ``[-B, B]`` of the standardised features and is the
            identity outside (nflows ``tails="linear"``).
        permutation: ``"reverse"`` (nflows ``ReversePermutation``), ``"random"`` (one fixed
            random permutation per layer, shared by the members) or ``"none"``.
        seed: derives one seed per member (initial weights) and the random permutations.
        member_seeds: explicit per-member seeds instead of deriving them from ``seed``.
        min_bin_width, min_bin_height, min_derivative: spline floors (nflows, 1e-3).
        n_context: context features C of conditional members ``f_m(x | c)`` (0: unconditional).

    The defaults (3 layers, 32 hidden, 2 blocks, 8 bins) train in minutes on a laptop CPU;
    :meth:`paper` builds the paper's configuration.
    """

    def __init__(self, n_features: int, n_members: int = 10, layers: int = 3, hidden: int = 32,
                 blocks: int = 2, bins: int = 8, *, tail_bound: float = 5.0,
                 permutation: str = "reverse", seed: int = 0,
                 member_seeds: Sequence[int] | None = None,
                 min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
                 min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
                 min_derivative: float = DEFAULT_MIN_DERIVATIVE, n_context: int = 0) -> None:
        super().__init__()
        if int(n_context) != n_context or n_context < 0:
            raise InputError(f"n_context must be an integer >= 0, got {n_context!r}")
        for name, value, low in [("n_features", n_features, 1), ("n_members", n_members, 1),
                                 ("layers", layers, 1), ("hidden", hidden, 1),
                                 ("blocks", blocks, 0), ("bins", bins, 1)]:
            if int(value) != value or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (math.isfinite(tail_bound) and tail_bound > 0):
            raise InputError(f"tail_bound must be positive, got {tail_bound}")
        if permutation not in _PERMUTATIONS:
            raise InputError(f"permutation must be one of {_PERMUTATIONS}, got {permutation!r}")
        if max(min_bin_width, min_bin_height) * bins >= 1 or min(
                min_bin_width, min_bin_height, min_derivative) <= 0:
            raise InputError("spline minima must be positive and min_bin_* x bins < 1")
        self.config: dict[str, Any] = {
            "n_features": int(n_features), "n_members": int(n_members), "layers": int(layers),
            "hidden": int(hidden), "blocks": int(blocks), "bins": int(bins),
            "tail_bound": float(tail_bound), "permutation": permutation, "seed": int(seed),
            "min_bin_width": float(min_bin_width), "min_bin_height": float(min_bin_height),
            "min_derivative": float(min_derivative),
        }
        if n_context:  # recorded only when conditional: unconditional files are unchanged
            self.config["n_context"] = int(n_context)
        seeds = _member_seeds(seed, n_members) if member_seeds is None else list(member_seeds)
        if len(seeds) != n_members:
            raise InputError(f"{len(seeds)} member_seeds for {n_members} members")
        self.member_seeds: list[int] = [int(s) for s in seeds]
        d = int(n_features)
        self.mades = nn.ModuleList(
            [EnsembleMADE(n_members, d, hidden, blocks, 3 * bins - 1, int(n_context))
             for _ in range(layers)])
        perm_rng = np.random.default_rng(seed)
        perms = []
        for _ in range(layers):
            if permutation == "reverse":
                perms.append(np.arange(d)[::-1])
            elif permutation == "random":
                perms.append(perm_rng.permutation(d))
            else:
                perms.append(np.arange(d))
        self.register_buffer("permutations", torch.as_tensor(np.stack(perms).copy()))
        # Standardisation y = (x - loc) / scale, kept in float64 outside the module's dtype.
        self.loc: NDArray[np.float64] = np.zeros(d)
        self.scale: NDArray[np.float64] = np.ones(d)
        # Context standardisation c' = (c - context_loc) / context_scale (conditional only).
        self.context_loc: NDArray[np.float64] = np.zeros(int(n_context))
        self.context_scale: NDArray[np.float64] = np.ones(int(n_context))
        self.training_summary: dict[str, Any] | None = None
        self._precision = "float32"  # see the precision property
        for m, s in enumerate(self.member_seeds):
            gen = torch.Generator().manual_seed(s)
            for made in self.mades:
                made.reset_member(m, gen)
            for made in self.mades:  # after every other weight: see reset_context_member
                made.reset_context_member(m, gen)

    @classmethod
    def paper(cls, n_features: int, n_members: int = 60, **kwargs: Any) -> FlowEnsemble:
        """The paper's architecture: 4 layers, 16 residual blocks, 128 hidden, 15 bins."""
        return cls(n_features, n_members, **{**PAPER_ARCHITECTURE, **kwargs})

    # -- protocol ------------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        return int(self.config["n_members"])

    @property
    def n_features(self) -> int:
        return int(self.config["n_features"])

    @property
    def n_context(self) -> int:
        """Context features C of conditional members (0: unconditional)."""
        return int(self.config.get("n_context", 0))

    @property
    def device(self) -> torch.device:
        return self.mades[0].w_in.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mades[0].w_in.dtype

    @property
    def precision(self) -> str:
        """Arithmetic of the products inside the MADEs' residual blocks, for every pass.

        ``"float32"`` (the default): everything runs in the ensemble's own dtype (float32, or
        float64 after ``.double()``). ``"bfloat16"``: the residual blocks' matrix products run
        under bf16 autocast (:mod:`genval.flows.residual`) while the residual stream, the input
        and output layers, the spline and the log-density stay in the ensemble's dtype -- the
        mixed-precision mode of :func:`genval.flows.train` (Badaracco et al., Step 1 trains M
        flows; this only makes each step cheaper). Not saved with the ensemble: a loaded or
        subset ensemble computes in ``"float32"``. For a scoped change use
        :meth:`compute_precision`.

        Raises:
            InputError: (on assignment) a value not in :data:`PRECISIONS`.
        """
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in _AUTOCAST:
            raise InputError(f"precision must be one of {sorted(_AUTOCAST)}, got {value!r}")
        self._precision = value

    @contextmanager
    def compute_precision(self, precision: str) -> Iterator[FlowEnsemble]:
        """Set :attr:`precision` inside a ``with`` block, restoring the previous one on exit.

        ::

            with ens.compute_precision("bfloat16"):
                loss = -ens.log_prob_standardised(y).mean()
        """
        previous = self.precision
        self.precision = precision
        try:
            yield self
        finally:
            self.precision = previous

    def extra_repr(self) -> str:
        c = self.config
        return (f"n_features={c['n_features']}, n_members={c['n_members']}, "
                f"layers={c['layers']}, hidden={c['hidden']}, blocks={c['blocks']}, "
                f"bins={c['bins']}, tail_bound={c['tail_bound']}, "
                f"permutation={c['permutation']!r}"
                + (f", n_context={c['n_context']}" if c.get("n_context") else ""))

    def __repr__(self) -> str:
        # nn.Module's default repr lists every stacked parameter; one line says more.
        per_member = sum(p[0].numel() for p in self.parameters())
        trained = "trained" if self.training_summary is not None else "untrained"
        return (f"FlowEnsemble({self.extra_repr()}, parameters/member={per_member}, "
                f"{self.dtype}, {self.device}, {trained})")

    # -- standardisation -----------------------------------------------------------------
    def set_standardisation(self, x: ArrayLike) -> None:
        """Standardise features with the mean and standard deviation of ``x`` (training data).

        Raises:
            InputError: if a feature is constant.
        """
        events = as_events(x, n_features=self.n_features, min_events=2, name="training events")
        scale = events.std(axis=0)
        if not np.all(scale > 0):
            raise InputError(f"features {np.flatnonzero(scale <= 0).tolist()} are constant")
        self.loc, self.scale = events.mean(axis=0), scale

    def set_context_standardisation(self, context: ArrayLike) -> None:
        """Standardise contexts with the mean and standard deviation of ``context`` (training).

        Raises:
            InputError: unconditional ensemble, or a constant context feature.
        """
        if not self.n_context:
            raise InputError("this ensemble is unconditional (n_context = 0)")
        ctx = as_context(context, np.shape(context)[0], self.n_context,
                         name="training contexts")
        scale = ctx.std(axis=0)
        if not np.all(scale > 0):
            raise InputError(f"context features {np.flatnonzero(scale <= 0).tolist()} are "
                             "constant")
        self.context_loc, self.context_scale = ctx.mean(axis=0), scale

    def _context_array(self, context: ArrayLike | None, n: int, *, broadcast: bool = False
                       ) -> NDArray[np.float64] | None:
        """Standardised float64 contexts (n, C), or None for an unconditional ensemble."""
        ctx = check_context(self.n_context, context, n, broadcast=broadcast)
        return None if ctx is None else (ctx - self.context_loc) / self.context_scale

    def _context_tensor(self, context: Tensor | None, like: Tensor) -> Tensor | None:
        """Data-space context tensor -> standardised, in ``like``'s dtype and device."""
        if context is None:
            return None
        loc = torch.as_tensor(self.context_loc, dtype=like.dtype, device=like.device)
        scale = torch.as_tensor(self.context_scale, dtype=like.dtype, device=like.device)
        return (context.to(dtype=like.dtype, device=like.device) - loc) / scale

    @property
    def log_det_standardisation(self) -> float:
        """``log |dy/dx| = -Σ log scale`` of the standardisation, part of every density."""
        return float(-np.log(self.scale).sum())

    # -- transforms on standardised features ---------------------------------------------
    def _spline_params(self, layer: int, y: Tensor, members: slice | None,
                       context: Tensor | None = None) -> Tensor:
        made = self.mades[layer]
        autocast = _AUTOCAST[self._precision]
        if autocast is not None:
            with torch.autocast(device_type=y.device.type, dtype=autocast):
                out = made(y, members, context)
            out = out.to(y.dtype)
        else:
            out = made(y, members, context)
        return out.unflatten(-1, (self.n_features, made.multiplier))

    def _spline(self, y: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k, c = self.config["bins"], self.config
        y = y.expand(params.shape[:-1])
        return rational_quadratic_spline(
            y, params[..., :k], params[..., k:2 * k], params[..., 2 * k:], inverse=inverse,
            tail_bound=c["tail_bound"], min_bin_width=c["min_bin_width"],
            min_bin_height=c["min_bin_height"], min_derivative=c["min_derivative"])

    def forward_standardised(self, y: Tensor, members: slice | None = None,
                             context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Standardised features -> base space.

        Args:
            y: ``(N, D)`` shared by all members, or ``(M', N, D)`` one set per member.
            members: restrict to these members (a slice: the weights stay views).
            context: standardised contexts ``(N, C)`` or ``(M', N, C)`` (conditional only).

        Returns:
            ``z`` of shape ``(M', N, D)`` and ``log |det dz/dy|`` of shape ``(M', N)``.
        """
        logdet = y.new_zeros(())
        for layer in range(len(self.mades)):
            y = y[..., self.permutations[layer]]
            y, ld = self._spline(y, self._spline_params(layer, y, members, context),
                                 inverse=False)
            logdet = logdet + ld.sum(dim=-1)
        return y, logdet

    def inverse_standardised(self, z: Tensor, members: slice | None = None,
                             context: Tensor | None = None) -> Tensor:
        """Base space ``(M', N, D)`` -> standardised features, D MADE passes per layer
        (``context``: standardised, as in :meth:`forward_standardised`)."""
        for layer in reversed(range(len(self.mades))):
            y = torch.zeros_like(z)
            for _ in range(self.n_features):  # fills one more autoregressive feature per pass
                y, _ = self._spline(z, self._spline_params(layer, y, members, context),
                                    inverse=True)
            z = y[..., torch.argsort(self.permutations[layer])]
        return z

    def log_prob_standardised(self, y: Tensor, members: slice | None = None,
                              context: Tensor | None = None) -> Tensor:
        """``log p(y)`` (``log p(y | c)``) of standardised features, ``(M', N)`` (no
        standardisation Jacobian; ``context`` standardised)."""
        z, logdet = self.forward_standardised(y, members, context)
        return logdet - 0.5 * (z.square().sum(dim=-1) + self.n_features * _LOG_2PI)

    # -- data space (torch) ----------------------------------------------------------------
    def _loc_scale(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.as_tensor(self.loc, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.scale, dtype=like.dtype, device=like.device))

    def forward(self, x: Tensor, members: slice | None = None, context: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Data space -> base space: ``z (M', N, D)`` and ``log |det dz/dx| (M', N)``
        (``context``: data-space contexts, for conditional ensembles)."""
        loc, scale = self._loc_scale(x)
        z, logdet = self.forward_standardised((x - loc) / scale, members,
                                              self._context_tensor(context, x))
        return z, logdet + self.log_det_standardisation

    def inverse(self, z: Tensor, members: slice | None = None, context: Tensor | None = None
                ) -> Tensor:
        """Base space ``(M', N, D)`` -> data space (given data-space ``context``)."""
        loc, scale = self._loc_scale(z)
        return self.inverse_standardised(z, members, self._context_tensor(context, z)) \
            * scale + loc

    def log_prob_tensor(self, x: Tensor, members: slice | None = None,
                        context: Tensor | None = None) -> Tensor:
        """Differentiable ``log f_m(x)`` (``log f_m(x | c)`` given data-space ``context``),
        ``(M', N)``, in the module's dtype and device."""
        loc, scale = self._loc_scale(x)
        return self.log_prob_standardised((x - loc) / scale, members,
                                          self._context_tensor(context, x)) \
            + self.log_det_standardisation

    # -- members protocol (numpy, float64) -------------------------------------------------
    def _chunk(self, chunk_size: int | None, passes: int = 1) -> int:
        if chunk_size is not None:
            return max(1, int(chunk_size))
        # Bound one activation tensor (M, chunk, width). On a CPU keep it near 32 MB: larger
        # fresh allocations are page-faulted in on every use and run several times slower,
        # while smaller chunks multiply the number of (thread-synchronised) kernel calls; on a
        # GPU allow 1 GB so that a typical call is a single chunk.
        budget = (1 << 30) if self.device.type == "cuda" else (1 << 25)
        width = max(self.config["hidden"], self.n_features * (3 * self.config["bins"] - 1))
        itemsize = torch.finfo(self.dtype).bits // 8
        return max(64, budget // (self.n_members * width * itemsize * passes))

    @torch.no_grad()
    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None,
                 chunk_size: int | None = None) -> NDArray[np.float64]:
        """``log f_m(x_n)`` (``log f_m(x_n | c_n)`` with ``context`` (N, C)) for every member,
        float64 array ``(M, N)``.

        Standardisation happens in float64 before the cast to the module's dtype; events are
        processed in chunks so that memory stays bounded for any N.

        Raises:
            InputError: malformed events, or a context that does not match ``n_context``.
        """
        events = as_events(x, n_features=self.n_features, min_events=0)
        ctx = self._context_array(context, len(events))
        y = (events - self.loc) / self.scale
        out = np.empty((self.n_members, len(y)))
        step = self._chunk(chunk_size)
        for start in range(0, len(y), step):
            block = torch.as_tensor(y[start:start + step], dtype=self.dtype, device=self.device)
            cblock = None if ctx is None else torch.as_tensor(
                ctx[start:start + step], dtype=self.dtype, device=self.device)
            out[:, start:start + len(block)] = \
                self.log_prob_standardised(block, None, cblock).double().cpu().numpy()
        return out + self.log_det_standardisation

    @torch.no_grad()
    def _sample_padded(self, z: NDArray[np.float64], members: slice,
                       context: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Invert base draws ``z (M', n, D)`` for the given members, in chunks of events
        (``context``: standardised ``(M', n, C)``, conditional ensembles only)."""
        out = np.empty_like(z)
        step = self._chunk(None, passes=self.n_features)
        for start in range(0, z.shape[1], step):
            block = torch.as_tensor(z[:, start:start + step], dtype=self.dtype,
                                    device=self.device)
            cblock = None if context is None else torch.as_tensor(
                context[:, start:start + step], dtype=self.dtype, device=self.device)
            out[:, start:start + block.shape[1]] = \
                self.inverse_standardised(block, members, cblock).double().cpu().numpy()
        return out * self.scale + self.loc

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        """``n`` events ``(n, D)`` from member ``member`` (base draws from numpy's ``rng``);
        conditional ensembles draw row i given ``context[i]`` (or one context row (C,) for
        all)."""
        if not 0 <= member < self.n_members:
            raise InputError(f"member {member} out of range 0..{self.n_members - 1}")
        ctx = self._context_array(context, int(n), broadcast=True)
        z = as_rng(rng).standard_normal((1, int(n), self.n_features))
        return self._sample_padded(z, slice(member, member + 1),
                                   None if ctx is None else ctx[None])[0]

    def sample_members(self, counts: ArrayLike, rng: np.random.Generator | int | None = None,
                       *, context: ArrayLike | None = None) -> NDArray[np.float64]:
        """``counts[m]`` events from every member in one batched pass, grouped in member order.

        Conditional ensembles take ``context`` (sum(counts), C) in the same grouped order: the
        first ``counts[0]`` rows condition member 0's events, and so on.

        Returns:
            ``(sum(counts), D)``: first ``counts[0]`` events of member 0, then member 1, ...
        """
        c = np.asarray(counts)
        if c.shape != (self.n_members,) or np.any(c < 0) or not np.all(c == np.round(c)):
            raise InputError(f"counts must be {self.n_members} non-negative integers")
        c = c.astype(np.int64)
        gen = as_rng(rng)
        ctx = self._context_array(context, int(c.sum()))
        nonzero = np.flatnonzero(c)
        if nonzero.size == 0:
            return np.empty((0, self.n_features))
        lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
        # Members share one padded (M', max count, D) batch; padding rows are discarded.
        z = np.zeros((hi - lo, int(c.max()), self.n_features))
        for m in range(lo, hi):
            z[m - lo, :c[m]] = gen.standard_normal((c[m], self.n_features))
        padded = None
        if ctx is not None:
            padded = np.zeros((hi - lo, int(c.max()), self.n_context))
            offsets = np.concatenate([[0], np.cumsum(c)])
            for m in range(lo, hi):
                padded[m - lo, :c[m]] = ctx[offsets[m]:offsets[m + 1]]
        x = self._sample_padded(z, slice(lo, hi), padded)
        return np.concatenate([x[m - lo, :c[m]] for m in range(lo, hi)])

    # -- structure -------------------------------------------------------------------------
    def subset(self, members: Sequence[int]) -> FlowEnsemble:
        """A new ensemble holding copies of the given members (same device and dtype)."""
        idx = [int(m) for m in members]
        if not idx or min(idx) < 0 or max(idx) >= self.n_members:
            raise InputError(f"members must be a non-empty list in 0..{self.n_members - 1}")
        cfg = {k: v for k, v in self.config.items() if k not in ("n_features", "n_members")}
        new = FlowEnsemble(self.n_features, len(idx), **cfg,
                           member_seeds=[self.member_seeds[i] for i in idx])
        new.to(device=self.device, dtype=self.dtype)
        index = torch.as_tensor(idx, device=self.device)
        with torch.no_grad():
            for p_new, p_old in zip(new.parameters(), self.parameters(), strict=True):
                p_new.copy_(p_old.index_select(0, index))
            new.permutations.copy_(self.permutations)
        new.loc, new.scale = self.loc.copy(), self.scale.copy()
        new.context_loc, new.context_scale = self.context_loc.copy(), self.context_scale.copy()
        return new

    # -- persistence ---------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything that defines the ensemble, as CPU tensors and JSON-serialisable fields.

        Returns:
            ``(tensors, fields)``: the stacked parameters by name, ``"permutations"`` and the
            float64 ``"standardisation.loc"`` / ``"standardisation.scale"``; and the
            architecture (``config``), ``dtype``, ``member_seeds``, ``standardisation`` and
            ``training`` summary. :meth:`from_state` inverts it exactly; :func:`save` writes it.
        """
        fields: dict[str, Any] = {
            "config": self.config,
            "dtype": str(self.dtype).removeprefix("torch."),
            "member_seeds": self.member_seeds,
            "standardisation": {"loc": self.loc.tolist(), "scale": self.scale.tolist()},
            "training": self.training_summary,
        }
        if self.n_context:
            fields["context_standardisation"] = {"loc": self.context_loc.tolist(),
                                                 "scale": self.context_scale.tolist()}
        return self._state_tensors(), fields

    def _state_tensors(self) -> dict[str, Tensor]:
        out = {name: p.detach().to("cpu").contiguous() for name, p in self.named_parameters()}
        out["permutations"] = self.permutations.detach().to("cpu").contiguous()
        out["standardisation.loc"] = torch.as_tensor(self.loc, dtype=torch.float64)
        out["standardisation.scale"] = torch.as_tensor(self.scale, dtype=torch.float64)
        if self.n_context:
            out["context_standardisation.loc"] = torch.as_tensor(self.context_loc,
                                                                 dtype=torch.float64)
            out["context_standardisation.scale"] = torch.as_tensor(self.context_scale,
                                                                   dtype=torch.float64)
        return out

    @classmethod
    def from_state(cls, tensors: Mapping[str, Tensor], fields: Mapping[str, Any]
                   ) -> FlowEnsemble:
        """Rebuild an ensemble (on the CPU) from the output of :meth:`to_state`.

        Raises:
            ArtifactError: fields that do not describe an ensemble, or tensors that do not
                match the architecture they describe (names, shapes, dtypes).
        """
        try:
            cfg = dict(fields["config"])
            n_features, n_members = cfg.pop("n_features"), cfg.pop("n_members")
            ensemble = cls(n_features, n_members, **cfg, member_seeds=fields["member_seeds"])
            dtype = getattr(torch, fields["dtype"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"inconsistent genval metadata or tensors: {exc}") from exc
        ensemble.to(dtype=dtype)
        expected = ensemble._state_tensors()
        if set(expected) != set(tensors):
            missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
            raise ArtifactError(f"tensors do not match the architecture (missing "
                                f"{sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
        for name, ref in expected.items():
            if tensors[name].shape != ref.shape or tensors[name].dtype != ref.dtype:
                raise ArtifactError(
                    f"tensor {name} has shape {tuple(tensors[name].shape)} "
                    f"{tensors[name].dtype}, expected {tuple(ref.shape)} {ref.dtype}")
        with torch.no_grad():
            for name, p in ensemble.named_parameters():
                p.copy_(tensors[name])
            ensemble.permutations.copy_(tensors["permutations"])
        ensemble.loc = tensors["standardisation.loc"].numpy().copy()
        ensemble.scale = tensors["standardisation.scale"].numpy().copy()
        if ensemble.n_context:
            ensemble.context_loc = tensors["context_standardisation.loc"].numpy().copy()
            ensemble.context_scale = tensors["context_standardisation.scale"].numpy().copy()
        ensemble.training_summary = fields.get("training")
        return ensemble

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ensemble to one safetensors file (format: :mod:`genval.flows.io`)."""
        save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device | None = None
             ) -> FlowEnsemble:
        """Read an ensemble written by :meth:`save` (see :func:`load`)."""
        return load(path, device=device)


def save(ensemble: FlowEnsemble, path: str | os.PathLike[str]) -> Path:
    """Write ``ensemble`` to ``path`` atomically (safetensors + JSON metadata, checksummed).

    Returns:
        The path written.
    """
    tensors, fields = ensemble.to_state()
    return flow_io.write(path, tensors, fields)


def load(path: str | os.PathLike[str], *, device: str | torch.device | None = None
         ) -> FlowEnsemble:
    """Read an ensemble written by :func:`save`.

    Args:
        path: the file.
        device: where to put the ensemble (default CPU).

    Raises:
        ArtifactError: missing, truncated, corrupted or foreign file, unsupported version,
            or tensors that do not match the recorded architecture or checksum.
    """
    fields, tensors = flow_io.read(path)
    try:
        ensemble = FlowEnsemble.from_state(tensors, fields)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    if device is not None:
        if torch.device(device).type == "mps":
            raise InputError(MPS_UNSUPPORTED)
        ensemble.to(device)
    return ensemble
