"""Adam for stacked member parameters: a member's update never depends on the other members.

Every parameter of a :class:`~genval.flows.FlowEnsemble` is one tensor ``(M, ...)`` holding
all members. torch's fused CPU Adam walks a tensor in SIMD vectors and finishes its last
``numel mod V`` elements with scalar code, which rounds differently: those elements belong to
whichever member happens to be last, so the same member trained in a sub-ensemble (a shard on
another worker, :mod:`genval.flows.shards`) or after early stopping compacted the ensemble
would drift from its single-process twin in the last bits. :class:`MemberAdam` runs the
same fused kernel on the aligned prefix of every tensor and on its remainder copied into a
full-width buffer, so every element takes the vector path wherever its member sits.

The update is Adam (Kingma and Ba) with torch's defaults, exactly torch's fused arithmetic;
its state is stacked like the parameters, so removing stopped members is an index selection.

References:
    Badaracco et al., Step 1 (members trained independently, with Adam).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim.adam import adam as _adam_functional

__all__ = ["MemberAdam", "ALIGN"]

ALIGN = 64
"""Elements per aligned block: a multiple of every SIMD width (and unrolling) of the CPU
kernels, so an aligned block is never split into vector and scalar parts."""


class MemberAdam:
    """Adam over stacked member parameters ``(M, ...)`` with member-independent rounding.

    Args:
        params: the ensemble's parameters, each with the members on axis 0.
        lr: learning rate.
        betas, eps: Adam's moment decays and denominator floor (torch's defaults).
    """

    def __init__(self, params: Sequence[Tensor], lr: float, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                           for p in self.params]
        self.n_steps = 0
        device = self.params[0].device if self.params else torch.device("cpu")
        # torch's fused kernel exists for CPU and CUDA floating tensors; elsewhere the
        # multi-tensor kernel gives the same update (not bit for bit).
        self._fused = device.type in ("cpu", "cuda")

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward pass allocates them afresh)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        views: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] = ([], [], [], [])
        tails = []
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            flat = (p.view(-1), p.grad.reshape(-1), m.view(-1), v.view(-1))
            n = flat[0].numel()
            cut = n - n % ALIGN
            if cut:
                for out, x in zip(views, flat, strict=True):
                    out.append(x[:cut])
            if cut < n:
                # The remainder in a zero-padded full block: it takes the vector path too.
                buffers = [torch.zeros(ALIGN, dtype=x.dtype, device=x.device) for x in flat]
                for buf, x in zip(buffers, flat, strict=True):
                    buf[:n - cut] = x[cut:]
                for out, buf in zip(views, buffers, strict=True):
                    out.append(buf)
                tails.append((flat, buffers, cut, n))
        if not views[0]:
            return
        steps = [torch.full((), float(self.n_steps), dtype=torch.float32,
                            device=views[0][0].device) for _ in views[0]]
        _adam_functional(*views, [], steps, fused=self._fused, foreach=not self._fused,
                         amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
                         weight_decay=0.0, eps=self.eps, maximize=False)
        self.n_steps += 1
        for flat, buffers, cut, n in tails:
            # parameter and moments back from their buffers (the gradient is only read)
            for x, buf in zip((flat[0], flat[2], flat[3]), (buffers[0], buffers[2], buffers[3]),
                              strict=True):
                x[cut:] = buf[:n - cut]

    def subset(self, params: Sequence[Tensor], keep: Sequence[int]) -> MemberAdam:
        """The optimiser of a compacted ensemble: members ``keep`` (indices along axis 0) of
        this one, now the parameters ``params``, with their moments and step count."""
        new = MemberAdam(params, self.lr, betas=self.betas, eps=self.eps)
        device = self.params[0].device if self.params else torch.device("cpu")
        index = torch.as_tensor(list(keep), device=device)
        new.exp_avg = [m.index_select(0, index).contiguous() for m in self.exp_avg]
        new.exp_avg_sq = [v.index_select(0, index).contiguous() for v in self.exp_avg_sq]
        new.n_steps = self.n_steps
        return new
