"""Figures of a genval run (matplotlib; the mplhep CMS style when mplhep is installed).

Every function takes arrays only (no genval result objects), keyword-only options, returns the
:class:`~matplotlib.figure.Figure`, and writes PNG and PDF when given ``save=`` (atomically).
Values that cannot be drawn (NaN, ±inf, empty inputs) are left out or explained in the figure;
only arrays whose shapes do not fit raise (:class:`~genval.errors.InputError`).

=============================  ===================================================
:func:`plot_marginals`         REF / DATA / LRT RECO per feature on a grid (Fig. 1)
:func:`plot_pairs`             DATA, REF and pulls in 2D for pairs of features
:func:`plot_null`              the null distribution with t_obs (Fig. 2)
:func:`plot_coverage`          pulls and coverage per feature (Fig. 3)
:func:`plot_weights`           ŵ with ±1σ from Cov(ŵ)
:func:`plot_training`          the members' loss curves
=============================  ===================================================

References:
    Badaracco et al.: Fig. 1 (:func:`plot_marginals`), Fig. 2 (:func:`plot_null`), Fig. 3
    (:func:`plot_coverage`).
"""

from __future__ import annotations

from genval.plots._base import axis_label, save_figure
from genval.plots.coverage import plot_coverage
from genval.plots.marginals import (
    MarginalHistogram,
    data_errors,
    nice_edges,
    plot_marginals,
    prefers_log_y,
)
from genval.plots.null import plot_null
from genval.plots.pairs import PairHistogram, plot_pairs
from genval.plots.training import plot_training, plot_weights

__all__ = ["MarginalHistogram", "PairHistogram", "plot_marginals", "plot_pairs", "plot_null",
           "plot_coverage", "plot_weights", "plot_training", "save_figure", "axis_label",
           "prefers_log_y", "nice_edges", "data_errors"]
