"""Weighted events through the stages (KDE members): data.weight, the weights artifact, the
weighted fit, and the GoF stage's refusal of weighted test events."""

import numpy as np
import pytest
from scipy.stats import norm

from genval import pipeline
from genval.config import ConfigError, parse_config
from genval.errors import InputError
from genval.io import write_events
from genval.members import KDEMembers, log_density_matrix
from genval.pipeline import artifacts
from genval.wifi import fit_weights


def config(tmp_path, path, run="run", **extra):
    base = {"run_dir": str(tmp_path / run), "quiet": True,
            "data": {"path": str(path), "weight": "w"},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.3}},
            "sample": {"n_events": 300},
            "gof": {"n_kernels": 10, "n_toys": 12, "pool_size": 2000, "n_jobs": 1,
                    "variants": ["frozen"]},
            "report": {"formats": ["png"], "dpi": 40, "pool_size": 5000}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


@pytest.fixture
def weighted_file(tmp_path):
    """800 events from q = N(0, 1.5²) per feature, with weights p/q for p = N(0.5, 1)."""
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.5, (800, 2))
    w = np.prod(norm.pdf(x, 0.5, 1.0) / norm.pdf(x, 0.0, 1.5), axis=1)
    path = tmp_path / "events.csv"
    write_events(path, np.column_stack([x[:, 0], w, x[:, 1]]), ["a", "w", "b"])
    return path, x, w


def test_weights_reach_the_members_and_the_fit(tmp_path, weighted_file):
    path, x, w = weighted_file
    run = pipeline.run_pipeline(config(tmp_path, path), stages=["split", "train", "fit"])
    assert (run.root / "data" / "weights.npz").is_file()
    splits = artifacts.load_splits(run)
    for name in ("train", "weight_fit", "centres", "test"):
        events, names = pipeline.split_events(run, name)
        assert names == ["a", "b"]  # the weight column is no feature
        np.testing.assert_array_equal(events, x[splits[name]])
        np.testing.assert_array_equal(pipeline.split_weights(run, name), w[splits[name]])
    info = run.metadata()["data"]["weights"]
    assert info["column"] == "w" and info["weight_fit"]["sum"] == pytest.approx(
        w[splits["weight_fit"]].sum())
    # The KDE members are the weighted ones, and the fit is the weighted fit of Eq. (1).
    spec = artifacts.load_kde(run)
    direct = KDEMembers(x[splits["train"]], 3, bandwidth=0.3, seed=spec.seed,
                        event_weights=w[splits["train"]])
    members = pipeline.load_members(run)
    probe = x[:20]
    np.testing.assert_array_equal(members.log_prob(probe), direct.log_prob(probe))
    unweighted = KDEMembers(x[splits["train"]], 3, bandwidth=0.3, seed=spec.seed)
    assert not np.allclose(members.log_prob(probe), unweighted.log_prob(probe))
    fit = pipeline.load_fit(run)
    expected = fit_weights(log_density_matrix(direct, x[splits["weight_fit"]]), log=True,
                           event_weights=w[splits["weight_fit"]])
    np.testing.assert_allclose(fit.weights, expected.weights, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fit.cov, expected.cov, rtol=1e-10)
    assert fit.n_effective == pytest.approx(expected.n_effective)


def test_gof_stage_refuses_weighted_test_events_but_runs_on_an_unweighted_test_file(
        tmp_path, weighted_file):
    path, x, _ = weighted_file
    run = pipeline.run_pipeline(config(tmp_path, path), stages=["split", "train", "fit"])
    with pytest.raises(InputError, match=r"test events \(data.weight 'w'\) are weighted .*"
                                         r"needs unweighted events"):
        pipeline.run_pipeline(config(tmp_path, path), stages=["gof"])
    assert not (run.root / "gof").exists()
    # Unweighted test data in their own file (no weight column): the test runs.
    test_path = tmp_path / "data.csv"
    write_events(test_path, np.random.default_rng(5).normal(0.5, 1.0, (160, 2)), ["a", "b"])
    cfg = config(tmp_path, path, run="run2", data={"test_path": str(test_path)},
                 splits={"test": None, "train": 0.6, "weight_fit": 0.3, "centres": 0.1})
    run2 = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof"])
    assert pipeline.split_weights(run2, "test") is None
    assert pipeline.split_weights(run2, "train") is not None
    assert artifacts.load_gof(run2, "frozen").result.n_test == 160


def test_split_weights_must_have_a_positive_total(tmp_path, rng):
    x = rng.normal(size=(400, 2))
    w = np.ones(400)
    w[200:300] = -1.0  # rows 200-299: the weight-fit range below
    path = tmp_path / "e.npz"
    np.savez(path, a=x[:, 0], b=x[:, 1], w=w)
    ranges = {"train": [0.0, 0.5], "weight_fit": [0.5, 0.75], "centres": [0.75, 0.8],
              "test": [0.8, 1.0], "shuffle": False}
    with pytest.raises(InputError, match=r"event weights of split 'weight_fit' sum to -100 over "
                                         r"its 100 events"):
        pipeline.run_pipeline(config(tmp_path, path, splits=ranges), stages=["split"])
    np.savez(path, a=x[:, 0], b=x[:, 1], w=np.zeros(400))
    with pytest.raises(InputError, match="sum to 0: the total weight must be positive"):
        pipeline.run_pipeline(config(tmp_path, path, run="r2"), stages=["split"])


def test_kde_members_refuse_negative_weights_in_the_train_stage(tmp_path, weighted_file):
    path, x, w = weighted_file
    signed = np.where(np.arange(len(w)) % 10 == 0, -w, w)
    write_events(path, np.column_stack([x[:, 0], signed, x[:, 1]]), ["a", "w", "b"])
    with pytest.raises(InputError, match="KDE members need non-negative event weights"):
        pipeline.run_pipeline(config(tmp_path, path), stages=["split", "train"])


def test_an_unweighted_rerun_removes_the_stale_weights(tmp_path, weighted_file):
    path, _, _ = weighted_file
    run = pipeline.run_pipeline(config(tmp_path, path), stages=["split"])
    assert pipeline.split_weights(run, "train") is not None
    plain = config(tmp_path, path, data={"weight": None, "features": ["a", "b"]})
    run = pipeline.run_pipeline(plain, stages=["split"], force=True)
    assert not (run.root / "data" / "weights.npz").exists()
    assert pipeline.split_weights(run, "train") is None


def test_config_checks_the_weight_column(tmp_path):
    with pytest.raises(ConfigError, match="weight 'w' needs data.path"):
        parse_config({"data": {"weight": "w"}})
    with pytest.raises(ConfigError, match="'w' is both a feature and the weight column"):
        parse_config({"data": {"path": "e.csv", "weight": "w", "features": ["a", "w"]}})
    assert parse_config({"data": {"path": "e.csv", "weight": "w"}}).data.weight == "w"
