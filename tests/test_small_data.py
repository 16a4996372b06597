"""Defaults that fit the data and errors that name the cause (issue 13)."""

import json

import matplotlib
import numpy as np
import pytest
import yaml

matplotlib.use("Agg")

from genval import pipeline  # noqa: E402
from genval._validation import check_feature_spread  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.io import write_events  # noqa: E402
from genval.pipeline.adapt import plan_splits  # noqa: E402
from genval.splits import make_splits  # noqa: E402


@pytest.mark.parametrize("n_events, kernels, centres, train", [
    (100_000, 10, 0.01, 0.6),    # the paper's share: nothing changes
    (2_000, 10, 0.01, 0.6),      # 20 events: splits.min_events exactly
    (1_500, 10, 0.0134, 0.5966),  # 1 % would be 15 < splits.min_events
    (1_000, 10, 0.02, 0.59),
    (10_000, 100, 0.01, 0.6),    # the paper's basis: 1 % holds exactly 100
    (5_000, 100, 0.02, 0.59),
    (3_000, 100, 0.0334, 0.5766),  # the issue's case: 30 centre events at 1 %
    (3_000, 300, 0.1, 0.51),
])
def test_auto_centres_adapt_to_the_events(n_events, kernels, centres, train):
    cfg = parse_config({"gof": {"n_kernels": kernels}})
    plan = plan_splits(cfg, n_events)
    assert plan.specs["centres"] == pytest.approx(centres)
    assert plan.specs["train"] == pytest.approx(train)
    assert plan.specs["weight_fit"] == 0.2 and plan.specs["test"] == 0.19
    splits = make_splits(n_events, plan.specs, min_events=20,
                         min_sizes={"centres": (kernels, "gof.n_kernels")})
    n_centres = splits.sizes()["centres"]
    assert max(kernels, 20) <= n_centres == plan.choices["splits.centres"]["events"]
    assert ("splits.train" in plan.choices) == (train != 0.6)
    assert sum(splits.sizes().values()) <= n_events
    # Explicit centres are used as given.
    explicit = parse_config({"splits": {"centres": 0.005}, "gof": {"n_kernels": kernels}})
    assert plan_splits(explicit, n_events).specs["centres"] == 0.005


def csv(tmp_path, n, rng, name="e.csv", d=2):
    return str(write_events(tmp_path / name, rng.normal(size=(n, d)), ["a", "b", "c"][:d]))


def split_only(tmp_path, run_name, **sections):
    cfg = parse_config({"quiet": True, "run_dir": str(tmp_path / run_name), **sections})
    return pipeline.run_pipeline(cfg, stages=["split"])


def test_explicit_settings_that_cannot_work_name_the_key_and_a_value_that_does(tmp_path, rng):
    data = {"path": csv(tmp_path, 3_000, rng)}
    with pytest.raises(InputError, match=r"split 'centres' would hold 30 of 3000 events, fewer "
                                         r"than the 100 required \(gof.n_kernels = 100; or set "
                                         r"gof.n_kernels to at most 30\); set "
                                         r"splits.centres to at least 0.0334") as err:
        split_only(tmp_path, "r1", data=data, splits={"centres": 0.01},
                   gof={"n_kernels": 100})
    assert "taking the share from another split" in str(err.value)
    # Both suggestions work.
    split_only(tmp_path, "r2", data=data, splits={"centres": 0.0334, "train": 0.5766},
               gof={"n_kernels": 100})
    split_only(tmp_path, "r3", data=data, splits={"centres": 0.01}, gof={"n_kernels": 30})
    with pytest.raises(InputError, match=r"more events than members.n_members = 60; or set "
                                         r"members.n_members to at most 39\); set "
                                         r"splits.weight_fit to at least 0.305"):
        split_only(tmp_path, "r4", data={"path": csv(tmp_path, 200, rng, "s.csv")},
                   splits={"centres": 0.05, "train": 0.5, "weight_fit": 0.2, "test": 0.2},
                   gof={"n_kernels": 10})
    # auto centres with the paper's K on the issue's 3,000 events: no error, 100 centres.
    run = split_only(tmp_path, "r5", data=data, gof={"n_kernels": 100})
    sizes = json.loads(run.metadata_path.read_text())["data"]["splits"]["sizes"]
    assert sizes["centres"] == 100 and sizes["train"] == 1729


def test_feature_spread_errors_name_the_feature_with_its_statistics(tmp_path, rng):
    x = rng.normal(size=(300, 3))
    names = ["a", "b", "c"]
    cases = [
        (lambda v: v.__setitem__((slice(None), 1), 5.0),
         r"feature 'b' in src is constant \(mean 5, std 0, min 5, max 5 over 300 events\)"),
        (lambda v: v.__setitem__((slice(None), 2), 1e300 * (1 + v[:, 2])),
         r"feature 'c' in src overflows float64 arithmetic \(mean .*e\+\d+, std inf, min "),
        (lambda v: v.__setitem__((slice(None), 0), 1.7e308 * np.sign(v[:, 0])),
         r"feature 'a' in src overflows float64 .*std inf, min -1.7e\+308, max 1.7e\+308"),
        (lambda v: v.__setitem__((slice(None), 0), 1e-170 * v[:, 0]),
         r"feature 'a' in src is not finite after standardisation"),
    ]
    for change, message in cases:
        bad = x.copy()
        change(bad)
        with pytest.raises(InputError, match=message):
            check_feature_spread(bad, names, source="src")
    check_feature_spread(x * 1e150, names)  # large but representable: fine
    # Through the pipeline: the CSV probe of the issue.
    x[:, 1] = 5.0
    write_events(tmp_path / "const.csv", x, names)
    with pytest.raises(InputError, match=r"feature 'b' in .*const.csv is constant"):
        split_only(tmp_path, "r", data={"path": str(tmp_path / "const.csv")})


def test_selection_yield_and_files_reach_metadata_and_log(tmp_path, rng):
    x = rng.normal(size=(4_000, 2))
    for i in range(2):
        write_events(tmp_path / f"p{i}.parquet", x[i * 2000:(i + 1) * 2000], ["a", "b"])
    messages = []
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "data": {
        "path": [str(tmp_path / "p*.parquet")], "selection": "a > -1", "features": ["a", "ab"],
        "aliases": {"ab": "a * b"}}})
    run = pipeline.run_pipeline(cfg, stages=["split"], log=messages.append)
    meta = json.loads(run.metadata_path.read_text())
    kept = int((x[:, 0] > -1).sum())
    assert meta["data"]["selection"] == {"expression": "a > -1", "n_read": 4000,
                                         "n_kept": kept}
    assert [f.rsplit("/", 1)[1] for f in meta["data"]["files"]] == ["p0.parquet", "p1.parquet"]
    assert meta["data"]["features"] == ["a", "ab"]
    assert any(f"selection 'a > -1' kept {kept} of 4000 input events" in m for m in messages)
    assert meta["adapted"]["splits.centres"] == {"value": 0.01, "configured": "auto",
                                                 "events": kept // 100,
                                                 "why": "the paper's 1 %"}
    assert any("splits.centres = " in m and "(auto)" in m for m in messages)
    nothing = parse_config({"run_dir": str(tmp_path / "r2"), "data": {
        "path": str(tmp_path / "p*.parquet"), "selection": "a > 100"}})
    with pytest.raises(InputError, match="kept none of the 4000 events"):
        pipeline.run_pipeline(nothing, stages=["split"])


def test_a_test_file_matched_by_the_training_glob_is_refused(tmp_path, rng):
    for name in ("a.csv", "b.csv"):
        csv(tmp_path, 500, rng, name)
    cfg = parse_config({"quiet": True, "run_dir": str(tmp_path / "run"),
                        "data": {"path": str(tmp_path / "*.csv"),
                                 "test_path": str(tmp_path / "b.csv")},
                        "splits": {"test": None}, "gof": {"n_kernels": 10}})
    with pytest.raises(InputError, match=r"b.csv is read by both data.path and data.test_path"):
        pipeline.run_pipeline(cfg, stages=["split"])


def test_genval_run_at_defaults_on_2000_csv_events(tmp_path, rng):
    """The issue's probe, 2,000 events: the splits, the kernels and the GoF settings at their
    defaults; only the members, the toy count and the variants are the suite's small ones."""
    from click.testing import CliRunner

    from genval.cli import main

    config = {"data": {"path": csv(tmp_path, 2_000, rng)},
              "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
              "sample": {"n_events": 1_000},
              "gof": {"n_toys": 5, "n_jobs": 1, "variants": ["single", "ensemble"]},
              "report": {"formats": ["png"], "dpi": 30, "pool_size": 5_000}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "run.yaml"), "--run-dir",
                                       str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "splits.centres = 0.01 (auto): the paper's 1 %" in result.output
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["adapted"]["splits.centres"]["events"] == 20
    assert meta["data"]["splits"]["sizes"] == {"train": 1200, "weight_fit": 400,
                                               "centres": 20, "test": 380}
    for variant in ("single", "ensemble"):
        record = json.loads((tmp_path / "run" / "gof" / f"{variant}.json").read_text())
        assert record["n_kernels"] == 10 and np.isfinite(record["t_obs"])


def test_split_at_defaults_on_1500_and_5000_events(tmp_path, rng):
    for n, sizes in ((1_500, {"train": 894, "weight_fit": 300, "centres": 20, "test": 285}),
                     (5_000, {"train": 3000, "weight_fit": 1000, "centres": 50, "test": 950})):
        run = split_only(tmp_path, f"run{n}", data={"path": csv(tmp_path, n, rng, f"{n}.csv")})
        meta = json.loads(run.metadata_path.read_text())
        assert meta["data"]["splits"]["sizes"] == sizes


def test_kde_bandwidth_error_names_the_feature(rng):
    from genval.members import KDEMembers

    x = rng.normal(size=(50, 3))
    x[:, 1] = 2.0
    with pytest.raises(InputError, match=r"feature 1 of a member's bootstrap replica of 50 "
                                         r"events spans \[2, 2\]"):
        KDEMembers(x, 2)
