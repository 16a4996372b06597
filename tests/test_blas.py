"""The BLAS thread limit of the toys (threadpoolctl: OpenBLAS, MKL, Accelerate, BLIS alike)."""

import numpy as np
import scipy.linalg  # noqa: F401 -- load scipy's BLAS too, so both libraries are limited
from threadpoolctl import threadpool_info

from genval.gof._blas import limit_blas_threads


def _blas_threads() -> list[int]:
    return [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]


def test_limit_applies_to_every_loaded_blas_and_is_restored():
    np.ones((4, 4)) @ np.ones((4, 4))
    before = _blas_threads()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    with limit_blas_threads(1):
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
