"""Branch-free monotonic rational-quadratic spline with linear tails.

Same parameterisation as nflows' ``unconstrained_rational_quadratic_spline`` with
``tails="linear"`` (Durkan et al. 2019): on ``[-B, B]`` a monotonic rational-quadratic spline
with ``K`` bins whose widths and heights are ``min + (1 - min K) softmax(u)`` and whose interior
knot derivatives are ``min_derivative + softplus(u)``; the two boundary derivatives are pinned
to 1 (``min_derivative + softplus(log(exp(1 - min_derivative) - 1))``) so that the identity
outside ``[-B, B]`` joins smoothly.

nflows selects the inside points with boolean indexing, which synchronises a GPU, changes shapes
from step to step and cannot be batched over members. Here every point goes through the same
arithmetic: points outside the tail bound are first replaced by 0 (a harmless value inside the
interval) and the result is chosen afterwards with ``torch.where``, so neither the value nor the
gradient of an outside point ever sees the rational-quadratic maths. The inverse clamps its
discriminant at 0, which rounding can push slightly negative. Nothing here produces NaN or inf
for finite inputs, however far out.

References:
    C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, "Neural spline flows", NeurIPS 2019,
    Eqs. (4)-(6) and App. A; Badaracco et al., Step 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_MIN_BIN_WIDTH", "DEFAULT_MIN_BIN_HEIGHT", "DEFAULT_MIN_DERIVATIVE",
           "rational_quadratic_spline"]

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _softmax(u: Tensor) -> Tensor:
    # torch.softmax over a last axis of ~15 bins is poorly vectorised on CPUs (5x slower than
    # these three elementwise ops); the shift by the (constant) maximum changes nothing.
    e = torch.exp(u - u.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _knots(unnormalized: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions (..., K+1) from -bound to bound, and bin sizes (..., K)."""
    k = unnormalized.shape[-1]
    sizes = min_size + (1 - min_size * k) * _softmax(unnormalized)
    cum = torch.cumsum(sizes, dim=-1)
    # nflows pins both ends exactly (cumsum rounding would leave the last knot at 1 +- eps);
    # build the pinned vector with cat instead of in-place writes so autograd stays simple.
    lo = torch.full_like(cum[..., :1], -bound)
    hi = torch.full_like(cum[..., :1], bound)
    knots = torch.cat([lo, 2 * bound * cum[..., :-1] - bound, hi], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _pick(table: Tensor, index: Tensor) -> Tensor:
    return torch.gather(table, -1, index).squeeze(-1)


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 5.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Elementwise spline transform and its log-derivative.

    Args:
        inputs: any shape ``S``.
        unnormalized_widths: ``S + (K,)``.
        unnormalized_heights: ``S + (K,)``.
        unnormalized_derivatives: ``S + (K - 1,)``, the interior knots (linear tails).
        inverse: evaluate the inverse map instead.
        tail_bound: B; the map is the identity outside ``[-B, B]``.
        min_bin_width, min_bin_height, min_derivative: as in nflows (default 1e-3).

    Returns:
        ``(outputs, logabsdet)``, both of shape ``S``; ``logabsdet`` is ``log |dy/dx|`` of the
        map evaluated (so for ``inverse=True`` it is minus the forward log-derivative).
    """
    k = unnormalized_widths.shape[-1]
    if min_bin_width * k > 1.0 or min_bin_height * k > 1.0:
        raise ValueError("minimal bin width/height too large for the number of bins")
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    x = torch.where(inside, inputs, torch.zeros_like(inputs))  # sanitised: always in range

    cumwidths, widths = _knots(unnormalized_widths, tail_bound, min_bin_width)
    cumheights, heights = _knots(unnormalized_heights, tail_bound, min_bin_height)
    # Boundary derivatives computed exactly as nflows does (they equal 1 up to rounding).
    edge = min_derivative + F.softplus(unnormalized_derivatives.new_tensor(
        math.log(math.expm1(1 - min_derivative))))
    edge = edge.expand(unnormalized_derivatives.shape[:-1] + (1,))
    # softplus on a strided slice of the network output is ~15x slower than on a contiguous
    # copy on CPUs.
    derivatives = torch.cat(
        [edge, min_derivative + F.softplus(unnormalized_derivatives.contiguous()), edge],
        dim=-1)

    # Bin index = number of interior knots at or below x: always in [0, K-1], no clamping of
    # out-of-range indices needed because x is sanitised.
    knots = cumheights if inverse else cumwidths
    idx = (x[..., None] >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)

    in_cumwidths = _pick(cumwidths, idx)
    in_widths = _pick(widths, idx)
    in_cumheights = _pick(cumheights, idx)
    in_heights = _pick(heights, idx)
    in_delta = in_heights / in_widths
    in_d0 = _pick(derivatives, idx)
    in_d1 = _pick(derivatives[..., 1:], idx)
    slope_sum = in_d0 + in_d1 - 2 * in_delta

    if inverse:
        dy = x - in_cumheights
        a = dy * slope_sum + in_heights * (in_delta - in_d0)
        b = in_heights * in_d0 - dy * slope_sum
        c = -in_delta * dy
        discriminant = torch.clamp(b.square() - 4 * a * c, min=0.0)
        # The numerically stable root 2c / (-b - sqrt(disc)) (Durkan et al., App. A).
        theta = (2 * c) / (-b - torch.sqrt(discriminant))
        out = theta * in_widths + in_cumwidths
        tomt = theta * (1 - theta)
    else:
        theta = (x - in_cumwidths) / in_widths
        tomt = theta * (1 - theta)
        numerator = in_heights * (in_delta * theta.square() + in_d0 * tomt)
        out = in_cumheights + numerator / (in_delta + slope_sum * tomt)
    denominator = in_delta + slope_sum * tomt
    derivative_numerator = in_delta.square() * (
        in_d1 * theta.square() + 2 * in_delta * tomt + in_d0 * (1 - theta).square())
    logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    outputs = torch.where(inside, out, inputs)
    return outputs, torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
