"""Limit the BLAS thread pool while toys run in parallel threads.

Toys are embarrassingly parallel, so the efficient layout is one toy per core with a
single-threaded BLAS each. A multi-threaded OpenBLAS called from several threads, or on a
machine shared with other work, spins and can run 10-20x slower than single-threaded
(measured on the 2-core CI machine). threadpoolctl is not a dependency, so the OpenBLAS
libraries already loaded by numpy and scipy are found in the process map and called directly;
where that fails (another BLAS, another OS) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

__all__ = ["limit_blas_threads"]

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


def _openblas_libraries() -> list[ctypes.CDLL]:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return []
    libs = []
    for path in sorted(paths):
        if not path.startswith("/"):
            continue
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _first(lib: ctypes.CDLL, names: tuple[str, ...]):  # noqa: ANN202 -- a ctypes function
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


@contextlib.contextmanager
def limit_blas_threads(n: int) -> Iterator[None]:
    """Within the block, loaded OpenBLAS libraries use at most ``n`` threads."""
    saved = []
    for lib in _openblas_libraries():
        setter, getter = _first(lib, _SETTERS), _first(lib, _GETTERS)
        if setter is None or getter is None:
            continue
        getter.restype = ctypes.c_int
        try:
            before = int(getter())
            setter(ctypes.c_int(int(n)))
        except Exception:  # noqa: BLE001 -- never fail a computation over a thread setting
            continue
        saved.append((setter, before))
    try:
        yield
    finally:
        for setter, before in saved:
            setter(ctypes.c_int(before))
