import numpy as np
import pytest

from genval.errors import ArtifactError, InputError
from genval.splits import (
    Splits,
    check_disjoint,
    check_split_specs,
    hash_events,
    make_splits,
)

SPECS = {"train": 0.6, "weight_fit": 0.2, "centres": 0.05, "test": 0.15}


def test_fraction_splits_are_disjoint_sized_and_reproducible():
    s = make_splits(1000, SPECS, seed=4)
    assert s.sizes() == {"train": 600, "weight_fit": 200, "centres": 50, "test": 150}
    every = np.concatenate(list(s.indices.values()))
    assert np.unique(every).size == every.size == 1000
    again = make_splits(1000, SPECS, seed=4)
    assert again.hash == s.hash
    assert make_splits(1000, SPECS, seed=5).hash != s.hash


def test_unshuffled_ranges_follow_file_order():
    specs = {"train": (0.0, 0.5), "test": (0.8, 1.0), "weight_fit": (0.5, 0.8)}
    s = make_splits(10, specs, shuffle=False)
    np.testing.assert_array_equal(s["train"], np.arange(5))
    np.testing.assert_array_equal(s["weight_fit"], [5, 6, 7])
    np.testing.assert_array_equal(s["test"], [8, 9])
    assert s.seed is None


def test_overlapping_or_excessive_specs_are_refused():
    with pytest.raises(InputError, match=r"splits overlap: fractions sum to 1.05 > 1"):
        check_split_specs({**SPECS, "train": 0.65})
    with pytest.raises(InputError, match=r"splits 'weight_fit' \[0.4, 0.7\] and 'test' "
                                         r"\[0.6, 1.0\] overlap"):
        make_splits(100, {"train": (0.0, 0.4), "weight_fit": (0.4, 0.7), "test": (0.6, 1.0)})
    with pytest.raises(InputError, match=r"fraction 0.0 must be in \(0, 1\]"):
        check_split_specs({"train": 0.0})
    with pytest.raises(InputError, match="0 <= start < stop <= 1"):
        check_split_specs({"train": (0.5, 0.2)})
    # 0.6 + 0.2 + 0.2 is 1.0000000000000002 in floats and must still be accepted.
    check_split_specs({"train": 0.6, "weight_fit": 0.2, "test": 0.2})


def test_too_small_split_names_the_reason():
    with pytest.raises(InputError, match=r"split 'centres' would hold 5 of 100 events, fewer "
                                         r"than the 50 required \(gof.n_kernels\)"):
        make_splits(100, SPECS, min_sizes={"centres": (50, "gof.n_kernels")})
    with pytest.raises(InputError, match=r"split 'centres' would hold 5 .*splits.min_events"):
        make_splits(100, SPECS, min_events=10)


def test_check_disjoint_and_constructor_refuse_shared_events():
    with pytest.raises(InputError, match=r"splits 'train' and 'test' overlap in 2 events"):
        check_disjoint({"train": np.array([0, 1, 2]), "test": np.array([2, 1, 7])})
    with pytest.raises(InputError, match="more than once"):
        Splits(10, {"train": np.array([1, 1])})
    with pytest.raises(InputError, match="outside"):
        Splits(3, {"train": np.array([0, 5])})


def test_save_load_round_trip_and_tamper_detection(tmp_path):
    s = make_splits(200, SPECS, seed=1)
    path = s.save(tmp_path / "splits.npz")
    back = Splits.load(path)
    assert back.hash == s.hash and back.seed == 1
    for name in s.indices:
        np.testing.assert_array_equal(back[name], s[name])
    tampered = dict(np.load(path))
    tampered["idx_test"] = tampered["idx_test"][:-1]
    np.savez(tmp_path / "bad.npz", **tampered)
    with pytest.raises(ArtifactError, match="do not match their recorded hash"):
        Splits.load(tmp_path / "bad.npz")
    with pytest.raises(ArtifactError, match="cannot read splits"):
        Splits.load(tmp_path / "missing.npz")


def test_take_checks_the_table_and_hash_events(rng):
    x = rng.normal(size=(50, 2))
    s = make_splits(50, {"train": 0.5, "test": 0.5}, seed=0)
    assert s.take(x, "test").shape == (25, 2)
    with pytest.raises(InputError, match="event table has 49 rows"):
        s.take(x[:-1], "train")
    assert hash_events(x) == hash_events(x.copy()) != hash_events(x[:, ::-1])
    assert s.summary()["sizes"] == {"train": 25, "test": 25}
