"""Vectorised normalizing-flow ensembles: Step 1 of the paper, all M members in one module.

:class:`FlowEnsemble` holds M masked autoregressive rational-quadratic spline flows (nflows'
parameterisation) with stacked weights; :func:`train` fits every member on its own bootstrap
replica with its own initialisation, early stopping and best checkpoint, in one optimiser step
per batch, as set by a :class:`TrainSettings`; :func:`save` / :func:`load` write and read one
safetensors file (format: :mod:`genval.flows.io`).

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1.
"""

from __future__ import annotations

from genval.flows.ensemble import PAPER_ARCHITECTURE, PRECISIONS, FlowEnsemble, load, save
from genval.flows.io import FORMAT, FORMAT_VERSION, read_metadata
from genval.flows.spline import rational_quadratic_spline
from genval.flows.train import (
    PAPER_TRAINING,
    TrainingHistory,
    TrainSettings,
    bootstrap_replicas,
    train,
)

__all__ = [
    "FlowEnsemble",
    "PAPER_ARCHITECTURE",
    "PAPER_TRAINING",
    "PRECISIONS",
    "TrainSettings",
    "TrainingHistory",
    "train",
    "bootstrap_replicas",
    "save",
    "load",
    "read_metadata",
    "FORMAT",
    "FORMAT_VERSION",
    "rational_quadratic_spline",
]
