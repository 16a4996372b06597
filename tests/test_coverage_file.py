"""The coverage study on file data (Eq. 4 with a truth from an independent sample): observables
of a feature (its mean, the fraction above a threshold), disjoint held-out data sets, the
truth's own error in the pulls."""

import numpy as np
import pytest
from scipy.stats import norm

from genval import pipeline
from genval.config import ConfigError, parse_config
from genval.coverage import run_coverage
from genval.errors import InputError
from genval.io import write_events
from genval.members import GaussianMembers
from genval.pipeline import artifacts
from genval.pipeline.coverage_stage import file_datasets
from genval.sampling import sample_mixture

MEAN, STD = np.array([1.0, -0.5]), np.array([0.8, 1.2])
OBSERVABLES = {"mean_a": {"feature": "a"}, "frac_b": {"feature": "b", "above": 0.0}}
TRUTH = {"mean_a": float(MEAN[0]), "frac_b": float(norm.sf(0.0, MEAN[1], STD[1]))}


def config(tmp_path, path, **coverage):
    return parse_config({
        "run_dir": str(tmp_path / "run"), "quiet": True, "data": {"path": str(path)},
        "splits": {"train": 0.5, "weight_fit": 0.2, "centres": 0.05, "test": 0.25},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.3}},
        "coverage": {"n_datasets": 5, "n_generated": 400, "observables": OBSERVABLES,
                     "truth": TRUTH, **coverage},
        "gof": {"enabled": False}, "report": {"formats": ["png"], "dpi": 40}})


@pytest.fixture
def gaussian_file(tmp_path):
    x = np.random.default_rng(8).normal(MEAN, STD, (2000, 2))
    path = tmp_path / "events.parquet"
    write_events(path, x, ["a", "b"])
    return path, x


def test_file_coverage_runs_on_disjoint_held_out_data_sets(tmp_path, gaussian_file):
    path, x = gaussian_file
    cfg = config(tmp_path, path, truth_std={"mean_a": 0.01})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "coverage"])
    record = artifacts.load_coverage(run)
    assert record is not None and record.features == ["mean_a", "frac_b"]
    result = record.result
    assert result.n_datasets == 5 and result.n_events == 1000 // 5  # held out: 50 % of 2000
    np.testing.assert_allclose(result.truth, [TRUTH["mean_a"], TRUTH["frac_b"]])
    np.testing.assert_allclose(result.truth_stds, [0.01, 0.0])
    np.testing.assert_allclose(result.pulls, (result.estimates - result.truth)
                               / np.hypot(result.stds, [0.01, 0.0]))
    # A fraction lies in [0, 1]; the estimates are near the truth (KDE members of N events).
    assert np.all((result.estimates[:, 1] > 0) & (result.estimates[:, 1] < 1))
    assert np.all(np.abs(result.estimates - result.truth) < 0.2)

    # The data sets are disjoint subsets of the weight-fit, centre and test splits.
    sets = file_datasets(run, 5, None, seed=3)
    held = np.concatenate([pipeline.split_events(run, s)[0]
                           for s in ("weight_fit", "centres", "test")])
    stacked = np.concatenate(sets)
    assert len({tuple(r) for r in stacked}) == len(stacked) == len(held)
    train = {tuple(r) for r in pipeline.split_events(run, "train")[0]}
    assert not train & {tuple(r) for r in stacked}
    with pytest.raises(ConfigError, match="lower coverage.n_datasets or coverage.n_events"):
        file_datasets(run, 5, 300, seed=3)


def test_file_data_without_observables_is_skipped_with_the_keys_to_set(tmp_path, gaussian_file):
    path, _ = gaussian_file
    cfg = parse_config({**config(tmp_path, path).model_dump(mode="json"),
                        "coverage": {"n_datasets": 5}})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "coverage"])
    assert artifacts.load_coverage(run) is None
    assert "set coverage.observables and coverage.truth" in run.stage_info("coverage")["skipped"]


@pytest.mark.parametrize("coverage, message", [
    ({"observables": OBSERVABLES, "truth": [1.0, 0.5]}, "as a mapping"),
    ({"observables": OBSERVABLES, "truth": {"mean_a": 1.0}}, r"no value for \['frac_b'\]"),
    ({"observables": OBSERVABLES, "truth": {**TRUTH, "other": 1.0}}, "not observables"),
    ({"observables": OBSERVABLES, "truth": TRUTH, "truth_std": {"mean_a": -1.0}},
     "non-negative"),
    ({"truth": {"mean_a": 1.0}}, "need coverage.observables"),
])
def test_observable_config_is_checked(coverage, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"coverage": coverage})


def test_unknown_observable_feature_is_named(tmp_path, gaussian_file):
    path, _ = gaussian_file
    cfg = config(tmp_path, path, observables={"m": {"feature": "c"}}, truth={"m": 0.0})
    with pytest.raises(ConfigError, match="feature 'c' is not one of the features"):
        pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "coverage"])


def test_given_data_sets_equal_the_sampled_ones():
    """run_coverage(datasets=...) fits exactly the data sets it is given: the same fits as
    drawing them itself (the common samples of f(x; ŵ) then come from other streams)."""
    members = GaussianMembers(np.array([[0.0], [0.5]]), np.array([[1.0], [0.8]]))
    weights = np.array([0.6, 0.4])

    def sample(n, rng):
        return sample_mixture(members, weights, n, rng).x

    drawn = run_coverage(members, sample, [0.2], n_datasets=4, n_events=300, seed=2,
                         progress=False)
    sets = [sample(300, np.random.default_rng([2, r])) for r in range(4)]
    given = run_coverage(members, None, [0.2], n_datasets=4, n_events=300, seed=2,
                         progress=False, datasets=sets)
    np.testing.assert_array_equal(given.weights, drawn.weights)
    np.testing.assert_array_equal(given.covs, drawn.covs)
    assert np.all(np.abs(given.estimates - drawn.estimates) < 5 * given.stds)
    with pytest.raises(InputError, match="exactly one of"):
        run_coverage(members, sample, [0.2], n_datasets=4, n_events=300, datasets=sets)
    with pytest.raises(InputError, match="n_datasets=3 but 4"):
        run_coverage(members, None, [0.2], n_datasets=3, n_events=300, datasets=sets)
