"""Keep subnormal numbers out of matrix products (they are 10-100x slower on some CPUs).

A floating-point number below the normal range (``0 < |x| < np.finfo(dtype).tiny``: 1.18e-38
in float32 and bfloat16, 2.2e-308 in float64) is *subnormal*. Intel cores handle a subnormal
operand or result of a vector instruction with a microcode assist; a float32 GEMM with 30 %
subnormal entries took 1.05 s against 0.010 s without on a Xeon with OpenBLAS's SkylakeX
kernels, while AMD Zen pays almost nothing. Such values arise in genval wherever a density far
in a tail is exponentiated: Gaussian kernels of width σ = 0.05 at a few units from an event,
members' densities divided by the row maximum (``exp(log F − max log F)``), and their float32
copies (every float64 value in (1.4e-45, 1.18e-38) becomes a float32 subnormal).

The cure is to set such entries to exactly zero where that cannot change a result beyond its
tolerance, which is argued at each place this module is used (the short form: a row-scaled
density below 1.2e-38 times the row maximum changes the mixture density, its gradients and
Hessians by less than 1e-38 relative, 22 orders below float64 rounding). Flushing is an O(size)
pass, done before the O(N p²) products it protects.

References:
    Badaracco et al., Step 4 and Eq. (5) (the kernel basis and the profiled fits whose products
    these are); IEEE 754-2019, Sec. 3.4 (subnormal numbers).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["TINY32", "flush_subnormal", "count_subnormal", "exp_flushed"]

#: Smallest normal float32 (and bfloat16), 2^-126 ≈ 1.18e-38.
TINY32 = float(np.finfo(np.float32).tiny)
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_BLOCK = 1 << 15  # elements per pass: block, mask and scratch stay in the L1/L2 cache


def flush_subnormal(array: NDArray[np.floating], out: NDArray[np.floating] | None = None, *,
                    tiny: float | None = None) -> NDArray[np.floating]:
    """Set entries with ``|x| < tiny`` to zero (default ``tiny``: the dtype's smallest normal).

    Works on the bit patterns with integer operations only (the magnitude bits of IEEE floats
    order like the numbers), so it never does floating-point arithmetic on a subnormal, and it
    is branch-free: a masked assignment costs ~10x more when the mask is irregular.

    Args:
        array: a float16, float32 or float64 array.
        out: where to write the result; ``out=array`` (or a writeable ``array`` with
            ``out=None``) works in place. Must have ``array``'s shape and dtype.
        tiny: threshold; pass :data:`TINY32` to flush a float64 array that will be cast to
            float32 (its casts then hold no subnormals either).

    Returns:
        ``out`` (``array`` itself when flushed in place). NaN and ±inf are left as they are;
        flushed negative entries become +0.
    """
    arr = np.asanyarray(array)  # subclasses kept (tests trace products through them)
    if out is None:
        out = arr if arr.flags.writeable else arr.copy()
    elif out is not arr:
        np.copyto(out, arr)
    if out.size == 0:
        return out
    uint = _UINT[out.dtype.itemsize]
    magnitude = uint(np.iinfo(uint).max >> 1)  # all bits but the sign
    limit = np.array(_tiny(out.dtype, tiny), dtype=out.dtype).view(uint)
    grid = out.view(np.ndarray)  # views throughout: the writes land in ``out``
    grid = grid.reshape(1, 1) if grid.ndim == 0 else grid[:, None] if grid.ndim == 1 else grid
    bits = grid.view(uint)
    rows = max(1, _BLOCK // max(1, int(np.prod(bits.shape[1:]))))
    scratch = np.empty((rows, *bits.shape[1:]), dtype=uint)
    keep = np.empty(scratch.shape, dtype=bool)
    for start in range(0, bits.shape[0], rows):
        block = bits[start:start + rows]
        n = block.shape[0]
        np.bitwise_and(block, magnitude, out=scratch[:n])
        np.greater_equal(scratch[:n], limit, out=keep[:n])
        np.multiply(block, keep[:n], out=block)
    return out


def _tiny(dtype: np.dtype, tiny: float | None) -> float:
    return float(np.finfo(dtype).tiny) if tiny is None else float(tiny)


def count_subnormal(array: NDArray[np.floating] | object, *, tiny: float | None = None) -> int:
    """Number of entries with ``0 < |x| < tiny`` (default: the dtype's smallest normal).

    Accepts numpy arrays and torch tensors (counted in their own dtype, bfloat16 included).
    """
    if type(array).__module__.startswith("torch"):  # bfloat16 has no numpy dtype
        import torch

        t = array.detach()
        if not t.is_floating_point():
            return 0
        limit = torch.finfo(t.dtype).tiny if tiny is None else float(tiny)
        mag = t.abs()
        return int(((mag > 0) & (mag < limit)).sum())
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.floating):
        return 0
    mag = np.abs(arr)
    return int(np.count_nonzero((mag > 0) & (mag < _tiny(arr.dtype, tiny))))


def exp_flushed(z: NDArray[np.float64], out: NDArray[np.float64] | None = None, *,
                tiny: float = TINY32) -> NDArray[np.float64]:
    """``exp(z)`` with every result below ``1.01 tiny`` (default tiny: :data:`TINY32`) exactly 0.

    Exponents are first raised to ``log(tiny) + 0.01`` (so exp only ever sees arguments whose
    result is normal: numpy's vectorised exp drops to a ~10x slower path on underflow, and some
    CPUs are slow on subnormal results), then results at or below ``1.01 tiny`` are zeroed. A
    float32 copy of the result holds no subnormal with the default ``tiny``. NaN stays NaN.

    Args:
        z: exponents (float64), typically ``log F − max_k log F`` (≤ 0).
        out: output array of ``z``'s shape (may be ``z`` itself, to work in place).
        tiny: results below ~this are 0; ``np.finfo(np.float64).tiny`` removes only float64
            subnormals (for absolute densities, whose scale is not known here).
    """
    cut = float(np.log(tiny)) + 0.01
    out = np.maximum(z, cut, out=out)
    np.exp(out, out=out)
    # exp(cut) is ~1 ulp from 1.01 tiny: the margin sends every clamped entry to 0
    return flush_subnormal(out, tiny=float(np.exp(cut)) * (1.0 + 1e-9))
