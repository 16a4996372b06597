"""Keep freed CPU memory in the process instead of handing it back to the kernel (glibc only).

PyTorch's CPU allocator is glibc's ``malloc``. A training step allocates and frees hundreds of
activation tensors of 1-20 MB; glibc serves large blocks with ``mmap`` or trims the top of its
heap once enough is free, so every step gets fresh pages that the kernel zero-fills on first
touch. On two cores that made a 60-member flow step 25 % slower and its time erratic
(BENCHMARKS.md, issue 4). Raising the ``mmap`` and trim thresholds makes freed blocks reusable.

This is process-wide (``malloc`` has no scope), so it is done once and only where asked for:
:func:`genval.flows.train` does it on a CPU unless ``tune_allocator=False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this are taken from the heap (and reused) instead of ``mmap``-ed each time.
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _load_mallopt(platform: str = sys.platform) -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library has none (macOS, Windows, musl...)."""
    if not platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: leave the allocator alone
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory() -> bool:
    """Raise glibc's ``mmap`` (256 MiB) and trim (1 GiB) thresholds, once per process.

    Costs at most ``TRIM_THRESHOLD`` of freed memory kept in the process. Setting either
    threshold also switches off glibc's dynamic threshold adjustment, which is the point.
    Later calls return the first call's answer without touching the allocator again.

    Returns:
        True if the thresholds are in effect, False where this is not glibc (macOS, Windows,
        musl) or glibc refused a setting.
    """
    global _applied
    if _applied is None:
        mallopt = _load_mallopt()
        # mallopt returns 1 on success, 0 on error; the trim threshold is set only after the
        # mmap threshold was accepted.
        _applied = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
            and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
