"""Factories for ``members.kind: python`` in the tests (``members.factory: byo_support:NAME``)."""

from __future__ import annotations

import numpy as np


def gaussian_mixtures(x_train, n_members, seed):
    """scikit-learn GaussianMixture members on bootstrap replicas: deterministic in ``seed``."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    models = []
    for m in range(n_members):
        replica = x_train[rng.integers(0, len(x_train), len(x_train))]
        models.append(GaussianMixture(1, random_state=seed + m).fit(replica))
    return models


CALLS = {"n": 0}


def changes_every_call(x_train, n_members, seed):
    """A factory that (wrongly) returns other members on every call."""
    CALLS["n"] += 1
    return gaussian_mixtures(x_train, n_members, seed + CALLS["n"])


def wrong_size(x_train, n_members, seed):
    return gaussian_mixtures(x_train, n_members + 1, seed)


def with_device(x_train, *, n_members, seed, device, **_):
    """Records the device it was given (the pipeline passes its resolved device)."""
    CALLS["device"] = device
    return gaussian_mixtures(x_train, n_members, seed)


def weighted(x_train, n_members, seed, event_weights):
    """Takes the train split's event weights (here it records them)."""
    CALLS["weights"] = event_weights
    return gaussian_mixtures(x_train, n_members, seed)
