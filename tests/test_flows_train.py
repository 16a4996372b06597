"""Training the flow ensemble: improvement, best checkpoint, independence of members."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genval.errors import InputError
from genval.flows import PAPER_TRAINING, FlowEnsemble, TrainSettings, load, train
from genval.flows.train import _clip_per_member, bootstrap_replicas

MU, SIGMA = np.array([-0.5, 0.6]), np.array([0.25, 0.4])  # the paper's toy (Sec. 3)
SMALL = dict(layers=2, hidden=12, blocks=1, bins=6)


def gaussian(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(MU, SIGMA, size=(n, 2))


def test_training_improves_and_keeps_best_checkpoint(tmp_path) -> None:
    x = gaussian(2000, 0)
    ens = FlowEnsemble(2, 3, **SMALL, seed=1)
    hist = train(ens, x, max_epochs=6, patience=2, lr=5e-3, batch_size=128, progress=False,
                 seed=2)
    x_val = x[hist.val_indices]
    assert len(x_val) == 400 and hist.settings["n_train"] == 1600
    assert np.intersect1d(hist.val_indices, hist.train_indices).size == 0
    # The initial flow (same seeds, same standardisation) is much worse on validation.
    init = FlowEnsemble(2, 3, **SMALL, seed=1)
    init.loc, init.scale = ens.loc, ens.scale
    nll0 = -init.log_prob(x_val).mean(axis=1)
    nll = -ens.log_prob(x_val).mean(axis=1)
    assert np.all(nll < nll0 - 0.1), (nll0, nll)
    # The kept parameters are the best-validation ones, for every member.
    np.testing.assert_allclose(nll, hist.best_val_loss, rtol=1e-5)
    best_rows = hist.val_loss[hist.best_epoch, np.arange(3)]
    np.testing.assert_array_equal(best_rows, hist.best_val_loss)
    assert np.all(hist.best_val_loss <= np.nanmin(hist.val_loss, axis=0))
    # Close to the truth's entropy (about 0.52 nats): the flows learn the Gaussian.
    true_nll = -np.mean(np.sum(-0.5 * ((x_val - MU) / SIGMA) ** 2 - np.log(SIGMA)
                               - 0.5 * np.log(2 * np.pi), axis=1))
    assert np.all(nll < true_nll + 0.15)
    # History and summary: shapes, JSON, stored with the ensemble and saved.
    assert hist.train_loss.shape == hist.val_loss.shape == (len(hist.epoch_seconds), 3)
    json.dumps(hist.summary(), allow_nan=False)
    assert "TrainingHistory(members=3" in repr(hist)
    ens.save(tmp_path / "e.safetensors")
    assert load(tmp_path / "e.safetensors").training_summary == ens.training_summary


def test_validation_split_precedes_bootstrap() -> None:
    x = gaussian(500, 3)
    ens = FlowEnsemble(2, 4, **SMALL, seed=5)
    hist = train(ens, x, max_epochs=1, progress=False, seed=9, val_fraction=0.3)
    replicas = bootstrap_replicas(len(hist.train_indices), ens.member_seeds, 9)
    used = np.unique(hist.train_indices[replicas])
    assert np.intersect1d(used, hist.val_indices).size == 0
    # Each member has its own replica, with duplicates (a bootstrap), of the training size.
    assert replicas.shape == (4, 350)
    assert len({tuple(r) for r in replicas}) == 4
    assert all(len(np.unique(r)) < 350 for r in replicas)


def test_member_trains_as_if_alone() -> None:
    """The vectorised trainer is M independent trainings: a member's result does not depend on
    the others (per-member replica, order, Adam state, clipping norm, early stopping)."""
    x = gaussian(600, 4)
    joint = FlowEnsemble(2, 3, **SMALL, seed=6).double()
    h_joint = train(joint, x, max_epochs=4, patience=1, lr=2e-2, batch_size=100,
                    clip_grad=0.5, progress=False, seed=8)
    alone = FlowEnsemble(2, 1, **SMALL, member_seeds=[joint.member_seeds[1]]).double()
    h_alone = train(alone, x, max_epochs=4, patience=1, lr=2e-2, batch_size=100,
                    clip_grad=0.5, progress=False, seed=8)
    assert h_alone.best_epoch[0] == h_joint.best_epoch[1]
    np.testing.assert_allclose(h_alone.val_loss[:, 0], h_joint.val_loss[:len(h_alone.val_loss), 1],
                               rtol=1e-9)
    for p_joint, p_alone in zip(joint.parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p_joint[1:2], p_alone, rtol=1e-8, atol=1e-10)


def test_micro_batches_give_the_same_update() -> None:
    x = gaussian(400, 5)
    results = []
    for micro in (None, 37):
        ens = FlowEnsemble(2, 2, **SMALL, seed=3).double()
        train(ens, x, max_epochs=2, lr=1e-2, batch_size=128, micro_batch=micro,
              progress=False, seed=1)
        results.append(ens.log_prob(x[:50]))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10)


def test_clip_per_member_uses_each_members_norm() -> None:
    p = torch.nn.Parameter(torch.zeros(3, 2, 2))
    q = torch.nn.Parameter(torch.zeros(3, 1, 5))
    p.grad = torch.stack([torch.full((2, 2), 10.0), torch.full((2, 2), 0.01), torch.zeros(2, 2)])
    q.grad = torch.stack([torch.full((1, 5), 10.0), torch.full((1, 5), 0.01), torch.zeros(1, 5)])
    small_p, small_q = p.grad[1].clone(), q.grad[1].clone()
    _clip_per_member([p, q], 1.0)
    norm0 = torch.sqrt(p.grad[0].square().sum() + q.grad[0].square().sum())
    assert abs(norm0.item() - 1.0) < 1e-5
    assert torch.equal(p.grad[1], small_p) and torch.equal(q.grad[1], small_q)
    assert torch.all(p.grad[2] == 0)


def test_early_stopping_and_explicit_validation(capsys: pytest.CaptureFixture[str]) -> None:
    x, x_val = gaussian(400, 6), gaussian(200, 7)
    ens = FlowEnsemble(2, 3, **SMALL, seed=2)
    hist = train(ens, x, x_val=x_val, max_epochs=40, patience=1, lr=5e-2, batch_size=64,
                 progress=True, seed=0)
    err = capsys.readouterr()
    assert "flow ensemble" in err.err and err.out == ""
    assert hist.val_indices.size == 0 and hist.settings["n_val"] == 200
    assert hist.stopped_early.all() and np.all(hist.n_epochs < 40)
    # After stopping, a member's curve is NaN: it is no longer trained or evaluated.
    for m in range(3):
        assert np.isnan(hist.val_loss[hist.n_epochs[m]:, m]).all()
        assert hist.n_epochs[m] == hist.best_epoch[m] + 2  # patience 1
    np.testing.assert_allclose(-ens.log_prob(x_val).mean(1), hist.best_val_loss, rtol=1e-5)


def test_bfloat16_autocast_training() -> None:
    x = gaussian(1000, 8)
    ens = FlowEnsemble(2, 2, **SMALL, seed=4)
    hist = train(ens, x, max_epochs=3, lr=5e-3, batch_size=128, precision="bfloat16",
                 progress=False, seed=0)
    assert ens.precision == "float32"  # evaluation after training is in full precision
    assert hist.settings["precision"] == "bfloat16"
    assert np.all(np.diff(hist.val_loss[:, 0])[:1] < 0)
    assert np.isfinite(ens.log_prob(x[:10])).all()


def test_training_input_errors() -> None:
    ens = FlowEnsemble(2, 2, **SMALL)
    x = gaussian(100, 0)
    with pytest.raises(InputError, match=r"val_fraction must be in \(0, 1\), got 1.0"):
        train(ens, x, val_fraction=1.0, progress=False)
    with pytest.raises(InputError, match="precision must be one of .*'bfloat16'.*'float8'"):
        train(ens, x, precision="float8", progress=False)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        train(ens, x, batch_size=0, progress=False)
    with pytest.raises(InputError, match="lr must be positive"):
        train(ens, x, lr=float("inf"), progress=False)
    with pytest.raises(InputError, match="micro_batch must be a positive integer or None, got -4"):
        train(ens, x, micro_batch=-4, progress=False)
    with pytest.raises(InputError,
                       match=r"training events contain 1 rows with NaN/inf \(first at row 100\)"):
        train(ens, np.vstack([x, [[np.nan, 0.0]]]), progress=False)
    with pytest.raises(InputError, match="training events have 1 features, expected 2"):
        train(ens, x[:, :1], progress=False)
    with pytest.raises(InputError, match="leave nothing to train on"):
        train(ens, x[:2], val_fraction=0.9, progress=False)


def _trained(settings: TrainSettings | None = None, **overrides) -> tuple[FlowEnsemble, object]:
    ens = FlowEnsemble(2, 3, **SMALL, seed=6)
    hist = train(ens, gaussian(500, 12), settings=settings, progress=False, **overrides)
    return ens, hist


def test_settings_object_and_keywords_train_identically() -> None:
    """``settings=TrainSettings(...)``, keywords, and settings + keyword overrides are one path:
    bit-identical parameters and histories (an early stop compacts the ensemble on the way)."""
    kw = dict(max_epochs=5, patience=1, lr=3e-2, batch_size=64, clip_grad=1.0, seed=4,
              precision="bfloat16", micro_batch=40)
    by_keywords = _trained(**kw)
    by_settings = _trained(TrainSettings(**kw))
    by_override = _trained(TrainSettings(**{**kw, "lr": 1.0, "seed": 0}), lr=3e-2, seed=4)
    assert by_keywords[1].stopped_early.any()
    for ens, hist in (by_settings, by_override):
        for p, q in zip(ens.parameters(), by_keywords[0].parameters(), strict=True):
            assert torch.equal(p, q)
        np.testing.assert_array_equal(hist.val_loss, by_keywords[1].val_loss)
        assert hist.settings == by_keywords[1].settings
    assert by_keywords[1].settings["lr"] == 3e-2 and by_keywords[1].settings["seed"] == 4


def test_train_settings_are_validated_frozen_and_named() -> None:
    s = TrainSettings()
    assert (s.batch_size, s.lr, s.max_epochs, s.patience, s.precision) == \
        (512, 1e-3, 200, 10, "float32")
    with pytest.raises(AttributeError):
        s.lr = 1.0  # type: ignore[misc]
    assert s.replace(lr=0.5).lr == 0.5 and s.lr == 1e-3
    paper = TrainSettings.paper(max_epochs=3)
    assert {k: getattr(paper, k) for k in PAPER_TRAINING} == PAPER_TRAINING
    assert paper.max_epochs == 3
    assert "tune_allocator" in TrainSettings.names() and "device" not in TrainSettings.names()
    with pytest.raises(InputError, match="patience must be a positive integer, got 0"):
        TrainSettings(patience=0)
    with pytest.raises(InputError, match="precision must be one of"):
        s.replace(precision="float16")
    ens = FlowEnsemble(2, 2, **SMALL)
    with pytest.raises(TypeError, match=r"train\(\) got unexpected keyword argument\(s\) "
                                        r"\['learning_rate'\]; valid settings: val_fraction, "
                                        r"batch_size, lr"):
        train(ens, gaussian(50, 0), learning_rate=1e-3, progress=False)


def test_precision_is_a_validated_public_setting() -> None:
    ens = FlowEnsemble(2, 2, **SMALL, seed=1).double()
    x = torch.as_tensor(gaussian(64, 13))
    assert ens.precision == "float32"
    with pytest.raises(InputError, match="precision must be one of"):
        ens.precision = "half"
    full = ens.log_prob_tensor(x).detach()
    with ens.compute_precision("bfloat16") as same:
        assert same is ens and ens.precision == "bfloat16"
        mixed = ens.log_prob_tensor(x).detach()
    assert ens.precision == "float32"
    assert torch.equal(ens.log_prob_tensor(x).detach(), full)
    # bf16 products change the numbers, but only at bf16's resolution.
    assert not torch.equal(mixed, full)
    torch.testing.assert_close(mixed, full, rtol=0, atol=0.05)
    ens.precision = "bfloat16"
    with pytest.raises(RuntimeError), ens.compute_precision("float32"):
        raise RuntimeError
    assert ens.precision == "bfloat16"  # restored on error too
    assert ens.subset([0]).precision == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_default_architecture_learns_the_paper_toy(precision: str) -> None:
    """Default ensemble, paper's 2D Gaussian (Sec. 3): held-out NLL close to the truth's.

    The excess NLL is each member's KL divergence from the truth (plus test-set noise common to
    both): 0.011-0.022 over 3 seeds x 4 members (16,000 bootstrap events, early stopping). The
    same bound holds for mixed-precision training: bf16 matrix products cost no accuracy that
    matters at this level. A broken flow is off by more than 0.1.
    """
    x, x_test = gaussian(20_000, 10), gaussian(20_000, 11)
    ens = FlowEnsemble(2, 4, seed=0)
    hist = train(ens, x, max_epochs=40, patience=5, lr=1e-3, progress=False, seed=0,
                 precision=precision)
    true_nll = -np.mean(np.sum(-0.5 * ((x_test - MU) / SIGMA) ** 2 - np.log(SIGMA)
                               - 0.5 * np.log(2 * np.pi), axis=1))
    nll = -ens.log_prob(x_test).mean(axis=1)
    assert np.all(np.abs(nll - true_nll) < 0.03), (nll, true_nll, hist)
    # Members differ (bootstrap + initialisation): the ensemble carries a spread.
    assert np.std(ens.log_prob(x_test[:1000]), axis=0).mean() > 1e-4
