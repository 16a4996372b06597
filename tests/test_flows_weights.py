"""Training flows on weighted events: the weighted NLL, weighted validation, weighted replicas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from genval.errors import InputError
from genval.flows import FlowEnsemble, train
from genval.flows.train import _replica_weights, bootstrap_replicas

MU, SIGMA = np.array([-0.5, 0.6]), np.array([0.25, 0.4])  # the paper's toy (Sec. 3)
Q_MU, Q_SIGMA = MU + np.array([0.3, -0.3]), 1.6 * SIGMA  # a shifted, wider proposal
SMALL = dict(layers=2, hidden=12, blocks=1, bins=6)


def reweighted(n: int, seed: int, negative: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Events from the proposal with weights p/q (p the paper's toy); a fraction ``negative``
    of them has its sign flipped (and every weight is divided by 1 − 2·negative, so the
    weighted distribution is still p)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(Q_MU, Q_SIGMA, size=(n, 2))
    s = np.prod(norm.pdf(x, MU, SIGMA) / norm.pdf(x, Q_MU, Q_SIGMA), axis=1)
    if negative:
        s = np.where(rng.random(n) < negative, -s, s) / (1.0 - 2.0 * negative)
    return x, s


def test_unit_weights_train_exactly_like_no_weights() -> None:
    x, _ = reweighted(400, 1)
    runs = []
    for weights in (None, np.ones(len(x))):
        ens = FlowEnsemble(2, 2, **SMALL, seed=3).double()
        hist = train(ens, x, event_weights=weights, max_epochs=2, lr=1e-2, batch_size=100,
                     progress=False, seed=4)
        runs.append((ens, hist))
    (plain, h_plain), (unit, h_unit) = runs
    np.testing.assert_array_equal(h_unit.train_loss, h_plain.train_loss)
    np.testing.assert_array_equal(h_unit.val_loss, h_plain.val_loss)
    for p, q in zip(plain.parameters(), unit.parameters(), strict=True):
        assert torch.equal(p, q)
    assert h_unit.settings["weighted"] and not h_plain.settings["weighted"]


def test_validation_loss_is_the_weighted_nll() -> None:
    """The kept parameters' validation loss is ``−Σ s log f / Σ s`` on the held-out events,
    with their own weights (not the unweighted mean, which differs by far more)."""
    x, s = reweighted(1500, 2, negative=0.1)
    ens = FlowEnsemble(2, 2, **SMALL, seed=5).double()
    hist = train(ens, x, event_weights=s, max_epochs=4, lr=1e-2, batch_size=100,
                 progress=False, seed=6)
    log_f = ens.log_prob(x[hist.val_indices])
    s_val = s[hist.val_indices]
    weighted = -(log_f @ s_val) / s_val.sum()
    np.testing.assert_allclose(hist.best_val_loss, weighted, rtol=1e-9)
    assert np.all(np.abs(-log_f.mean(axis=1) - weighted) > 1e-3)


def test_replicas_resample_events_with_their_weights() -> None:
    """A replica draws events uniformly (the unweighted bootstrap's indices) and each entry
    carries its event's weight, normalised to mean one over the replica."""
    s = np.random.default_rng(0).normal(1.0, 1.0, 300)
    replicas = bootstrap_replicas(300, [11, 12, 13], seed=7)
    w = _replica_weights(s, replicas, [11, 12, 13])
    np.testing.assert_allclose(w * (s[replicas].sum(axis=1) / 300)[:, None], s[replicas])
    np.testing.assert_allclose(w.mean(axis=1), 1.0)
    bad = np.where(np.arange(300) < 150, -1.0, 0.5)
    with pytest.raises(InputError, match=r"replica of member 0 \(seed 11\) has total weight"):
        _replica_weights(bad, replicas, [11, 12, 13])


def test_weight_errors_are_input_errors() -> None:
    x, s = reweighted(400, 3)
    ens = FlowEnsemble(2, 1, **SMALL, seed=1)
    kw = dict(max_epochs=1, progress=False, seed=0)
    with pytest.raises(InputError, match="NaN/inf"):
        train(ens, x, event_weights=np.where(np.arange(400) == 9, np.inf, s), **kw)
    with pytest.raises(InputError, match="one number per event"):
        train(ens, x, event_weights=s[:-1], **kw)
    with pytest.raises(InputError, match="total weight must be positive"):
        train(ens, x, event_weights=-s, **kw)
    # The held-out validation events (the first 80 of the permutation) weigh <= 0 in total.
    order = np.random.default_rng(0).permutation(400)
    lopsided = np.ones(400)
    lopsided[order[:80]] = -1.0
    with pytest.raises(InputError, match="weights of the validation events .* sum to -80"):
        train(ens, x, event_weights=lopsided, **kw)
    with pytest.raises(InputError, match="val_event_weights needs x_val"):
        train(ens, x, val_event_weights=s, **kw)
    with pytest.raises(InputError, match="validation events"):
        train(ens, x, x_val=x[:50], val_event_weights=-np.ones(50), **kw)


@pytest.mark.parametrize("negative", [0.2, pytest.param(0.0, marks=pytest.mark.slow)])
def test_weighted_training_learns_the_weighted_distribution(negative: float) -> None:
    """Trained on events from a proposal q shifted by (0.3, −0.3) and 1.6x wider, weighted by
    p/q (20 % of them negative), every member's mean is p's within 0.12 per feature and its
    standard deviation p's within 25 %; without the weights both would be q's (0.3 away, 60 %
    wider)."""
    x, s = reweighted(4000, 0, negative=negative)
    ens = FlowEnsemble(2, 2, **SMALL, seed=1)
    train(ens, x, event_weights=s, max_epochs=25, patience=5, lr=5e-3, batch_size=128,
          progress=False, seed=2)
    for m in range(2):
        draws = ens.sample(20_000, m, np.random.default_rng(m))
        assert np.all(np.abs(draws.mean(axis=0) - MU) < 0.12), draws.mean(axis=0)
        assert np.all(np.abs(draws.std(axis=0) / SIGMA - 1.0) < 0.25), draws.std(axis=0)
