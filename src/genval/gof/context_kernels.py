"""Kernels that follow the context: Gaussians in the residual of x given c.

For conditional members the alternative of Eq. (5) is ``f(x | c; φ) + Σ_k a_k G_k``. Kernels
fixed in x (:class:`~genval.gof.KernelBasis`) cannot describe a change of shape of ``x | c``
when the conditional mean moves with c across a context bin (a response following the
energy): a kernel sits at one x, the events of different contexts at different x, and a
width change, say, averages away. :class:`ContextKernels` place the kernels in the
standardised residual

    u = (x − m(c)) / s(c),      G_k(x | c) = N(u; u_k, σ² diag(t²)) / Π_j s_j(c),

with ``m(c)`` and ``log s(c)`` affine in c (fitted on held-out events by least squares) and
``t`` the per-feature spread of the held-out residuals (with ``standardize``). Each kernel is a
normalised density in x for every context (the Jacobian ``1 / Π s_j(c)``), so the extended
term ``N Σ a`` keeps its meaning; m and s only decide where the kernels look, never the
calibration (the toys see the same kernels).

References:
    Badaracco et al., Eq. (5) and the conclusions (the test within each context).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_context, as_events
from genval.errors import InputError
from genval.gof.kernels import KernelBasis

__all__ = ["ContextKernels"]


class ContextKernels:
    """K Gaussian kernels in ``u = (x − m(c)) / s(c)``, normalised in x at every context.

    Args:
        basis: the kernels in u (a :class:`~genval.gof.KernelBasis` without a transform).
        location: (1 + C, D) coefficients of ``m(c) = [1, c] @ location``.
        log_scale: (1 + C, D) coefficients of ``log s(c) = [1, c] @ log_scale``.

    Raises:
        InputError: coefficient shapes that do not match the basis, non-finite values, or a
            basis with a feature transform.
    """

    def __init__(self, basis: KernelBasis, location: ArrayLike, log_scale: ArrayLike) -> None:
        loc = np.asarray(location, dtype=np.float64)
        log_s = np.asarray(log_scale, dtype=np.float64)
        d = basis.n_features
        if loc.ndim != 2 or loc.shape[1] != d or log_s.shape != loc.shape or loc.shape[0] < 2:
            raise InputError(f"location and log_scale must be (1 + C, {d}), got {loc.shape} "
                             f"and {log_s.shape}")
        if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(log_s))):
            raise InputError("location and log_scale must be finite")
        if basis.transform is not None:
            raise InputError("the residual kernels are Gaussian in u: give a basis without a "
                             "transform")
        self.basis, self.location, self.log_scale = basis, loc, log_s

    @classmethod
    def from_events(cls, x_heldout: ArrayLike, context_heldout: ArrayLike, n_kernels: int = 20,
                    sigma: float = 0.5, *, standardize: bool = True,
                    seed: np.random.Generator | int | None = None) -> ContextKernels:
        """Fit ``m(c)`` and ``log s(c)`` (affine, least squares) on held-out events and draw
        the centres from their residuals.

        ``log s(c)`` is the affine fit of ``log |x − m(c)|`` (its constant offset, about
        −0.64 for Gaussian residuals, is absorbed by ``standardize``, which measures σ in
        units of the residuals' spread).

        Raises:
            InputError: fewer held-out events than ``max(n_kernels, C + 3)``.
        """
        x = as_events(x_heldout, name="held-out events")
        ctx = as_context(context_heldout, x.shape[0], np.shape(context_heldout)[1]
                         if np.ndim(context_heldout) == 2 else 1, name="held-out contexts")
        if x.shape[0] < max(n_kernels, ctx.shape[1] + 3):
            raise InputError(f"{x.shape[0]} held-out events are too few for {n_kernels} "
                             f"kernels and an affine fit in {ctx.shape[1]} context features")
        design = np.column_stack([np.ones(x.shape[0]), ctx])
        location = np.linalg.lstsq(design, x, rcond=None)[0]
        resid = x - design @ location
        log_abs = np.log(np.maximum(np.abs(resid), 1e-12 * (np.abs(resid).max(axis=0) + 1e-300)))
        log_scale = np.linalg.lstsq(design, log_abs, rcond=None)[0]
        u = resid / np.exp(design @ log_scale)
        basis = KernelBasis.from_events(u, n_kernels, sigma, standardize=standardize, seed=seed)
        return cls(basis, location, log_scale)

    @property
    def n_kernels(self) -> int:
        return self.basis.n_kernels

    @property
    def n_features(self) -> int:
        return self.basis.n_features

    @property
    def n_context(self) -> int:
        return self.location.shape[0] - 1

    def _affine(self, context: ArrayLike, n: int) -> tuple[NDArray[np.float64],
                                                          NDArray[np.float64]]:
        ctx = as_context(context, n, self.n_context, broadcast=True)
        design = np.column_stack([np.ones(n), ctx])
        return design @ self.location, design @ self.log_scale

    def log_pdf(self, x: ArrayLike, *, context: ArrayLike | None = None
                ) -> NDArray[np.float64]:
        """``log G_k(x_n | c_n)`` (N, K), densities in x (Jacobian ``−Σ log s(c)``)."""
        events = as_events(x, n_features=self.n_features, min_events=0)
        if context is None:
            raise InputError("context kernels need the events' contexts (context=)")
        m, log_s = self._affine(context, events.shape[0])
        return self.basis.log_pdf((events - m) / np.exp(log_s)) - log_s.sum(axis=1)[:, None]

    def centers_at(self, context: ArrayLike) -> NDArray[np.float64]:
        """The kernel centres in x at one context (C,): ``m(c) + s(c) u_k`` (K, D)."""
        m, log_s = self._affine(np.asarray(context, dtype=np.float64).reshape(-1),
                                self.n_kernels)
        return m + np.exp(log_s) * self.basis.centers

    def describe(self) -> dict[str, Any]:
        """:meth:`KernelBasis.describe` of the kernels in u, with the affine m(c), log s(c)."""
        return {**self.basis.describe(),
                "coordinates": ["the residual (x - m(c)) / s(c), m and log s affine in c"],
                "location": self.location.tolist(), "log_scale": self.log_scale.tolist()}

    def __repr__(self) -> str:
        return (f"ContextKernels(K={self.n_kernels}, D={self.n_features}, C={self.n_context}, "
                f"sigma={self.basis.sigma:g} in {self.basis.units} units of the residual)")
