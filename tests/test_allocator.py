"""genval._allocator: keeping freed CPU memory for reuse (glibc's mallopt).

The allocator's effect (fewer page faults) is a matter of timing and is measured in the
benchmarks; these tests check what the module asks of the C library, once, and what it
answers where there is no glibc -- through a recording stand-in for ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

import genval._allocator as allocator
from genval._allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, retain_freed_memory

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


class FakeMallopt:
    """Records ``mallopt(param, value)`` calls and answers ``result`` (1: success)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """As if retain_freed_memory had never run in this process (restored afterwards)."""
    monkeypatch.setattr(allocator, "_applied", None)
    return monkeypatch


def test_sets_both_thresholds_once(fresh: pytest.MonkeyPatch) -> None:
    fake = FakeMallopt()
    fresh.setattr(allocator, "_load_mallopt", lambda: fake)
    assert retain_freed_memory() is True
    assert fake.calls == [(M_MMAP_THRESHOLD, 256 << 20), (M_TRIM_THRESHOLD, 1 << 30)]
    assert (MMAP_THRESHOLD, TRIM_THRESHOLD) == (256 << 20, 1 << 30)
    # Idempotent: later calls answer from the first and leave the allocator alone.
    assert retain_freed_memory() is True and retain_freed_memory() is True
    assert len(fake.calls) == 2


def test_refused_setting_reports_false_and_stops(fresh: pytest.MonkeyPatch) -> None:
    fake = FakeMallopt(result=0)
    fresh.setattr(allocator, "_load_mallopt", lambda: fake)
    assert retain_freed_memory() is False
    assert fake.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD)]  # no trim setting after a refusal
    assert retain_freed_memory() is False and len(fake.calls) == 1


def test_without_glibc_nothing_is_changed(fresh: pytest.MonkeyPatch) -> None:
    for platform in ("darwin", "win32", "cygwin"):
        assert allocator._load_mallopt(platform) is None
    loads: list[None] = []

    def no_mallopt() -> None:
        loads.append(None)
        return None

    fresh.setattr(allocator, "_load_mallopt", no_mallopt)
    assert retain_freed_memory() is False
    assert retain_freed_memory() is False and len(loads) == 1


def test_c_library_without_mallopt(fresh: pytest.MonkeyPatch) -> None:
    class NoMallopt:  # e.g. a C library that does not export mallopt
        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    fresh.setattr(allocator.ctypes, "CDLL", lambda name: NoMallopt())
    assert allocator._load_mallopt("linux") is None
    assert retain_freed_memory() is False

    def unloadable(name: str) -> object:
        raise OSError(f"cannot load {name}")

    fresh.setattr(allocator.ctypes, "CDLL", unloadable)
    assert allocator._load_mallopt("linux") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applied_on_glibc_and_harmless() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("not glibc")
    mallopt = allocator._load_mallopt()
    assert mallopt is not None and mallopt.restype is ctypes.c_int
    assert retain_freed_memory() is True
    # The process still allocates, uses and frees large blocks normally afterwards.
    for _ in range(3):
        a = np.ones(8 << 20)
        assert a.sum() == 8 << 20
        del a
