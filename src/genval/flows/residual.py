"""The MADE's residual blocks in mixed precision: low-precision products, float32 residual stream.

Each block is ``h <- h + W1 relu(W0 relu(h) + b0) + b1`` (nflows ``MaskedResidualBlock``). Under
bf16 the products are 4-5x faster on CPUs with AVX512-BF16, but the residual stream ``h`` must
stay in float32: a block starts with updates ~1e-3 of ``h``, below bf16's resolution (2^-8), so
a bf16 stream rounds them away. At the paper's size the gradient error against float64, as a
fraction of the minibatch noise, was 21 % with plain autocast (bf16 stream) and is 1 % here for
fresh members; 49 % and 14 % for perturbed ones (``benchmarks/bench_flows.py --check``).

Autocast with a float32 stream takes 1.2-1.3 s per 60-member paper-size step on two CPU cores,
mostly in dtype conversions and separate passes over (M, N, H) tensors; this node takes about
1.0 s (BENCHMARKS.md). :class:`_ResidualStack` is one autograd node for all blocks that

* casts the stream once per block, then applies the ReLU in place on the bf16 copy
  (``relu(cast(h))`` equals ``cast(relu(h))`` since rounding keeps signs), and adds each
  block's bf16 output into the float32 stream in place;
* saves only the two bf16 ReLU outputs per block, which also give the ReLU masks;
* computes bias gradients as float32 sums and weight gradients with float32 accumulation;
* on a CPU, runs the ensemble in chunks of members whose activations stay cache-resident
  (about 4 MB of float32 stream per chunk): the members are independent, so the result is the
  same, and the products run nearer their peak.

The float32 path does not come here: it stays the plain nflows arithmetic of
:class:`genval.flows.made.EnsembleMADE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["residual_stack", "member_chunk"]

_threshold_backward = torch.ops.aten.threshold_backward
#: Float32 residual-stream bytes per member chunk on a CPU (fits L2 + L3 of a small machine).
_CPU_CHUNK_BYTES = 4 << 20


def member_chunk(h: Tensor) -> int:
    """Members per chunk: cache-sized on a CPU, all of them on an accelerator."""
    m = h.shape[0]
    if h.device.type != "cpu":
        return m
    per_member = h[0].numel() * h.element_size()
    return max(1, min(m, _CPU_CHUNK_BYTES // max(1, per_member)))


class _ResidualStack(torch.autograd.Function):
    """All residual blocks of one MADE as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: Tensor, low: torch.dtype,
                chunk: int, *params: Tensor) -> Tensor:
        n = len(params) // 4
        weights = [w.to(low) for w in params[:2 * n]]
        biases = [b.to(low) for b in params[2 * n:]]
        out = torch.empty_like(h)
        saved: list[Tensor] = []
        for start in range(0, h.shape[0], chunk):
            c = slice(start, start + chunk)
            stream = h[c].clone()
            for j in range(n):
                r0 = stream.to(low).relu_()
                r1 = torch.baddbmm(biases[2 * j][c], r0, weights[2 * j][c].transpose(1, 2))
                r1.relu_()
                stream.add_(torch.baddbmm(biases[2 * j + 1][c], r1,
                                          weights[2 * j + 1][c].transpose(1, 2)))
                saved += [r0, r1]
            out[c] = stream
        ctx.save_for_backward(*weights, *saved)
        ctx.n_blocks, ctx.chunk = n, chunk
        ctx.param_dtype = params[0].dtype if params else h.dtype
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
                 ) -> tuple[Tensor | None, ...]:
        n, chunk, dtype = ctx.n_blocks, ctx.chunk, ctx.param_dtype
        tensors = ctx.saved_tensors
        weights, saved = tensors[:2 * n], tensors[2 * n:]
        m, h_dim = grad_out.shape[0], grad_out.shape[-1]
        grad_w = [torch.empty(w.shape, dtype=dtype, device=w.device) for w in weights]
        grad_b = [torch.empty((m, 1, h_dim), dtype=dtype, device=grad_out.device)
                  for _ in weights]
        grad_h = torch.empty_like(grad_out)
        for k, start in enumerate(range(0, m, chunk)):
            c = slice(start, start + chunk)
            acts = saved[2 * n * k:2 * n * (k + 1)]
            g = grad_out[c].clone()  # float32 gradient of the stream, accumulated in place
            for j in reversed(range(n)):
                r0, r1 = acts[2 * j], acts[2 * j + 1]
                g_low = g.to(r1.dtype)
                grad_w[2 * j + 1][c] = torch.bmm(g_low.transpose(1, 2), r1)
                torch.sum(g, dim=1, keepdim=True, out=grad_b[2 * j + 1][c])
                g1 = torch.bmm(g_low, weights[2 * j + 1][c])
                g1 = _threshold_backward(g1, r1, 0)
                grad_w[2 * j][c] = torch.bmm(g1.transpose(1, 2), r0)
                grad_b[2 * j][c] = g1.sum(dim=1, keepdim=True, dtype=dtype)
                g0 = _threshold_backward(torch.bmm(g1, weights[2 * j][c]), r0, 0)
                g.add_(g0)
            grad_h[c] = g
        return (grad_h, None, None, *grad_w, *grad_b)


def residual_stack(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                   low: torch.dtype, chunk: int | None = None) -> Tensor:
    """Apply the residual blocks with ``low``-precision products and a float32 stream.

    Args:
        h: the stream ``(M, N, H)`` in the parameters' dtype.
        weights: ``2 * blocks`` weights ``(M, H, H)`` (masked already), in block order.
        biases: ``2 * blocks`` biases ``(M, 1, H)``.
        low: dtype of the products and saved activations (``torch.bfloat16``).
        chunk: members per chunk (default :func:`member_chunk`).

    Returns:
        The stream after the last block, ``(M, N, H)``, in ``h``'s dtype.
    """
    if len(weights) != len(biases) or len(weights) % 2:
        raise ValueError("residual_stack needs two weights and two biases per block")
    size = member_chunk(h) if chunk is None else max(1, int(chunk))
    return _ResidualStack.apply(h, low, size, *weights, *biases)
