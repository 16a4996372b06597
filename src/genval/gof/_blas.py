"""Limit the BLAS thread pool while toys run in parallel threads.

Toys are embarrassingly parallel, so the efficient layout is one toy per core with a
single-threaded BLAS each. A multi-threaded BLAS called from several threads, or on a machine
shared with other work, spins and can run 10-20x slower than single-threaded (measured with
OpenBLAS on the 2-core CI machine). threadpoolctl finds every BLAS the process has loaded
(OpenBLAS, MKL, Apple Accelerate, BLIS, FlexiBLAS) and sets its thread count through that
library's own API; the OpenMP pools (PyTorch's) are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

__all__ = ["limit_blas_threads"]


@contextlib.contextmanager
def limit_blas_threads(n: int) -> Iterator[None]:
    """Within the block, every loaded BLAS library uses at most ``n`` threads."""
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield
