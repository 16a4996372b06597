"""genval._allocator: keeping freed CPU memory for reuse (glibc's mallopt)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

from genval._allocator import retain_freed_memory


def test_retain_freed_memory_is_idempotent_and_harmless() -> None:
    first = retain_freed_memory()
    assert retain_freed_memory() is first
    # The process still allocates and frees large blocks normally afterwards.
    for _ in range(3):
        a = np.ones(8 << 20)
        assert a.sum() == 8 << 20
        del a


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applied_on_glibc() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert retain_freed_memory() is True
