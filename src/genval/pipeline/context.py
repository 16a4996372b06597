"""Conditional runs (``context:`` in the config): the columns of x and of the context c.

The split stage keeps every feature in one table; a conditional run (``config.context`` set)
reads its context features as c and the others as x. :class:`ContextLayout` is the one place
that says which columns are which, builds the context bins of the test (edges in the
features' physical units) and splits the feature transform of ``data.transforms`` into the
transform of x (with its Jacobian) and that of c (the members' context input).

References:
    Badaracco et al., conclusions (conditional generative models, the test per context).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from genval.conditional import ContextBins
from genval.config import Config
from genval.errors import InputError
from genval.transforms import FeatureTransform

__all__ = ["ContextLayout"]


@dataclass(frozen=True)
class ContextLayout:
    """Which feature columns are x and which are the context c, and the context bins.

    Attributes:
        names: every feature, in the order of the run's event table.
        x_columns: the columns of x, in table order.
        c_columns: the columns of c, in the order of ``context.features``.
        bins: the context bins (:class:`~genval.conditional.ContextBins`, physical units).
        per_bin: one weight vector per bin (``context.weights: per_bin``).
        follow: kernels following the conditional mean (``context.kernels: follow``).
    """

    names: tuple[str, ...]
    x_columns: tuple[int, ...]
    c_columns: tuple[int, ...]
    bins: ContextBins
    per_bin: bool
    follow: bool

    @classmethod
    def of(cls, config: Config, names: Sequence[str]) -> ContextLayout | None:
        """The layout of ``config.context`` over the table's ``names`` (None: unconditional).

        Raises:
            InputError: a context feature that is not a feature, or no feature left for x.
        """
        ctx = config.context
        if ctx is None:
            return None
        names = [str(n) for n in names]
        missing = [f for f in ctx.features if f not in names]
        if missing:
            raise InputError(f"context.features names {missing}, not features of the events "
                             f"({', '.join(names)})")
        c_columns = tuple(names.index(f) for f in ctx.features)
        x_columns = tuple(j for j in range(len(names)) if j not in c_columns)
        if not x_columns:
            raise InputError("context.features takes every feature: x needs at least one")
        return cls(tuple(names), x_columns, c_columns, ctx.context_bins(),
                   ctx.weights == "per_bin", ctx.kernels == "follow")

    @property
    def x_names(self) -> list[str]:
        return [self.names[j] for j in self.x_columns]

    @property
    def c_names(self) -> list[str]:
        return [self.names[j] for j in self.c_columns]

    def split(self, events: NDArray[np.float64]) -> tuple[NDArray[np.float64],
                                                          NDArray[np.float64]]:
        """``(x, c)`` of a table's events (N, D_x) and (N, C)."""
        if events.ndim != 2 or events.shape[1] != len(self.names):
            raise InputError(f"events have shape {events.shape}, the layout "
                             f"{len(self.names)} features")
        return (np.ascontiguousarray(events[:, list(self.x_columns)]),
                np.ascontiguousarray(events[:, list(self.c_columns)]))

    def join(self, x: NDArray[np.float64], c: NDArray[np.float64]) -> NDArray[np.float64]:
        """Events in table order from x and c (the inverse of :meth:`split`)."""
        out = np.empty((x.shape[0], len(self.names)))
        out[:, list(self.x_columns)] = x
        out[:, list(self.c_columns)] = c
        return out

    def transforms(self, transform: FeatureTransform
                   ) -> tuple[FeatureTransform, FeatureTransform]:
        """The table's transform split into that of x and that of c."""
        if list(transform.names) != list(self.names):
            raise InputError(f"the transform is for features {list(transform.names)}, the "
                             f"events have {list(self.names)}")

        def part(columns: tuple[int, ...]) -> FeatureTransform:
            return FeatureTransform([transform.maps[j] for j in columns],
                                    [self.names[j] for j in columns])

        return part(self.x_columns), part(self.c_columns)
