"""Masked autoregressive network (MADE) with an ensemble dimension.

Every weight carries a leading member axis, ``(M, out, in)``, and the autoregressive masks are
shared by all members, so one batched matrix multiply (``torch.baddbmm``) evaluates the layer
for the whole ensemble. Degrees, masks, residual blocks and initialisation follow nflows'
``MADE`` with ``use_residual_blocks=True`` (the network inside
``MaskedPiecewiseRationalQuadraticAutoregressiveTransform``), so parameters copied from an
nflows flow reproduce its outputs:

* initial masked linear ``D -> H`` (no activation: residual blocks start with one),
* ``blocks`` residual blocks ``h + W2 relu(W1 relu(h))``, the second linear initialised
  ``U(-1e-3, 1e-3)`` so that every block starts close to the identity,
* final masked linear ``H -> D * multiplier`` whose outputs for feature ``i`` are contiguous
  (degrees ``1,1,..,2,2,..``) and see only features ``< i``.

With ``n_context = C > 0`` the MADE is a conditioner of ``x | c``: an unmasked linear
``C -> H`` of the (standardised) context is added to the initial layer's output, as nflows'
``MADE(context_features=C)`` does (nflows also gates each residual block by the context; here
the context enters once, at the input). Every hidden unit then sees the whole context and
outputs still see only features ``< i``, so the autoregressive property holds for every c.

References:
    M. Germain et al., "MADE: Masked autoencoder for distribution estimation", ICML 2015;
    C. Durkan et al., "Neural spline flows", NeurIPS 2019 (nflows); Badaracco et al., Step 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genval.flows.residual import residual_stack

__all__ = ["input_degrees", "hidden_degrees", "output_degrees", "EnsembleMADE"]


def input_degrees(n_features: int) -> Tensor:
    """Degrees ``1..D`` of the inputs (nflows ``_get_input_degrees``)."""
    return torch.arange(1, n_features + 1)


def hidden_degrees(n_hidden: int, n_features: int) -> Tensor:
    """Degrees of hidden units, cycling through ``1..D-1`` (nflows, ``random_mask=False``).

    For ``D = 1`` every hidden unit has degree 0 and sees no input: the single transform is
    then an unconditional spline, as in nflows.
    """
    max_ = max(1, n_features - 1)
    min_ = min(1, n_features - 1)
    return torch.arange(n_hidden) % max_ + min_


def output_degrees(n_features: int, multiplier: int) -> Tensor:
    """Degrees of the outputs: each feature's ``multiplier`` parameters are contiguous."""
    return torch.repeat_interleave(input_degrees(n_features), multiplier)


def _uniform(shape: Sequence[int], bound: float, generator: torch.Generator) -> Tensor:
    # Drawn in float64 on the CPU so that a member's initial weights depend only on its seed,
    # not on the device, dtype or the number of members.
    return (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * bound


class EnsembleMADE(nn.Module):
    """M residual MADEs evaluated together.

    Args:
        n_members: ensemble size M.
        n_features: D, the number of autoregressive inputs.
        hidden: hidden features H (nflows ``hidden_features``).
        blocks: residual blocks (nflows ``num_blocks``).
        multiplier: outputs per feature (``3 * bins - 1`` for linear-tail splines).
        n_context: context features C (0: unconditional, no context weights).
    """

    def __init__(self, n_members: int, n_features: int, hidden: int, blocks: int,
                 multiplier: int, n_context: int = 0) -> None:
        super().__init__()
        m, d, h = n_members, n_features, hidden
        self.n_members, self.n_features, self.hidden = m, d, h
        self.blocks, self.multiplier = blocks, multiplier
        deg_in, deg_h = input_degrees(d), hidden_degrees(h, d)
        deg_out = output_degrees(d, multiplier)
        self.register_buffer("mask_in", (deg_h[:, None] >= deg_in[None, :]).float(),
                             persistent=False)
        self.register_buffer("mask_out", (deg_out[:, None] > deg_h[None, :]).float(),
                             persistent=False)
        mask_hh = (deg_h[:, None] >= deg_h[None, :]).float()
        # For D <= 2 every hidden unit has the same degree and the mask is all ones: skipping
        # the multiply saves one pass over each (M, H, H) weight per step.
        self._hidden_dense = bool(mask_hh.all())
        self.register_buffer("mask_hidden", mask_hh, persistent=False)
        self.w_in = nn.Parameter(torch.empty(m, h, d))
        self.b_in = nn.Parameter(torch.empty(m, 1, h))
        self.w_blocks = nn.ParameterList(
            [nn.Parameter(torch.empty(m, h, h)) for _ in range(2 * blocks)])
        self.b_blocks = nn.ParameterList(
            [nn.Parameter(torch.empty(m, 1, h)) for _ in range(2 * blocks)])
        self.w_out = nn.Parameter(torch.empty(m, d * multiplier, h))
        self.b_out = nn.Parameter(torch.empty(m, 1, d * multiplier))
        # Registered last, and only when conditional: an unconditional MADE keeps exactly its
        # parameters (names, order, initial values) of before.
        self.n_context = int(n_context)
        self.w_context: nn.Parameter | None = (
            nn.Parameter(torch.empty(m, h, self.n_context)) if self.n_context else None)

    @torch.no_grad()
    def reset_member(self, member: int, generator: torch.Generator) -> None:
        """Initialise member ``member`` like nflows (``nn.Linear`` defaults, near-identity blocks).

        ``nn.Linear``'s default is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias.
        """
        d, h = self.n_features, self.hidden
        self.w_in[member].copy_(_uniform((h, d), 1 / math.sqrt(d), generator))
        self.b_in[member].copy_(_uniform((1, h), 1 / math.sqrt(d), generator))
        for j in range(self.blocks):
            w0, b0 = self.w_blocks[2 * j], self.b_blocks[2 * j]
            w1, b1 = self.w_blocks[2 * j + 1], self.b_blocks[2 * j + 1]
            w0[member].copy_(_uniform((h, h), 1 / math.sqrt(h), generator))
            b0[member].copy_(_uniform((1, h), 1 / math.sqrt(h), generator))
            # nflows first draws the default init, then overwrites the last linear of the block.
            w1[member].copy_(_uniform((h, h), 1e-3, generator))
            b1[member].copy_(_uniform((1, h), 1e-3, generator))
        self.w_out[member].copy_(_uniform(self.w_out.shape[1:], 1 / math.sqrt(h), generator))
        self.b_out[member].copy_(_uniform(self.b_out.shape[1:], 1 / math.sqrt(h), generator))

    @torch.no_grad()
    def reset_context_member(self, member: int, generator: torch.Generator) -> None:
        """Initialise member ``member``'s context weights like ``nn.Linear(C, H)``.

        Called after :meth:`reset_member` of every layer, so a conditional ensemble's other
        parameters equal those of the unconditional ensemble with the same seeds.
        """
        if self.w_context is not None:
            self.w_context[member].copy_(
                _uniform((self.hidden, self.n_context), 1 / math.sqrt(self.n_context),
                         generator))

    def forward(self, x: Tensor, members: slice | None = None, context: Tensor | None = None
                ) -> Tensor:
        """Autoregressive parameters for every member.

        Args:
            x: inputs ``(M', N, D)`` (one event set per member) or ``(N, D)`` (shared).
            members: evaluate only these members (a slice, so weights stay views).
            context: the conditioning ``(N, C)`` or ``(M', N, C)``; required exactly when the
                MADE was built with ``n_context > 0``.

        Returns:
            ``(M', N, D * multiplier)``; output ``[..., i * multiplier + k]`` depends only on
            inputs ``< i``.
        """
        def take(p: Tensor) -> Tensor:
            # No slice when every member is evaluated: a slice of a parameter costs a
            # zero-filled full-size gradient plus a copy in the backward pass.
            return p if members is None else p[members]

        # Under autocast only the products inside the residual blocks (99.7 % of the flops) run
        # in low precision (genval.flows.residual). In bf16 the input layer would round the
        # data themselves to 3 digits: it and the output layer stay in the module's dtype.
        device = x.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            w_in = take(self.w_in) * self.mask_in
            if x.dim() == 2:  # shared events: broadcasted matmul, no (M, N, D) copy
                h = torch.matmul(x, w_in.transpose(1, 2)) + take(self.b_in)
            else:
                h = torch.baddbmm(take(self.b_in), x, w_in.transpose(1, 2))
            if self.w_context is not None:
                if context is None:
                    raise ValueError("this MADE is conditional: pass the context")
                h = h + torch.matmul(context, take(self.w_context).transpose(1, 2))
            elif context is not None:
                raise ValueError("this MADE is unconditional: it takes no context")
        weights = [take(w) for w in self.w_blocks]
        if not self._hidden_dense:
            weights = [w * self.mask_hidden for w in weights]
        biases = [take(b) for b in self.b_blocks]
        if low is not None and self.blocks:
            # bf16 products with a float32 residual stream, as one fused autograd node.
            h = residual_stack(h, weights, biases, low)
        else:
            for j in range(self.blocks):
                t = torch.relu(h)
                t = torch.baddbmm(biases[2 * j], t, weights[2 * j].transpose(1, 2))
                t = torch.relu(t)
                h = h + torch.baddbmm(biases[2 * j + 1], t, weights[2 * j + 1].transpose(1, 2))
        with torch.autocast(device, enabled=False):
            w_out = take(self.w_out) * self.mask_out
            return torch.baddbmm(take(self.b_out), h, w_out.transpose(1, 2))
