"""Small linear-algebra helpers for the constrained weight space ``Σ w = 1``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = ["sum_to_one_basis"]


@lru_cache(maxsize=32)
def _helmert(m: int) -> NDArray[np.float64]:
    basis = np.zeros((m, m - 1))
    for j in range(1, m):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= np.sqrt(j * (j + 1.0))
    basis.setflags(write=False)
    return basis


def sum_to_one_basis(m: int) -> NDArray[np.float64]:
    """Orthonormal basis B (M, M-1) of the hyperplane ``1ᵀ v = 0`` (Helmert contrasts).

    Any weight vector with ``Σ w = 1`` is ``w = ŵ + B z``; the sandwich covariance of Eq. (2)
    is singular along ``1`` by construction, and ``C_r = Bᵀ Cov B`` is its regular part.
    The returned array is read-only and cached.
    """
    if m < 2:
        raise ValueError(f"need at least 2 members for a sum-to-one basis, got {m}")
    return _helmert(int(m))
