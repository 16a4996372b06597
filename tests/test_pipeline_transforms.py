"""A run with feature transforms (log pT, bounded eta) on KDE members: physical units end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from genval import pipeline  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.errors import ArtifactError, InputError  # noqa: E402
from genval.io import read_events, write_events  # noqa: E402
from genval.members import KDEMembers, log_density_matrix  # noqa: E402
from genval.pipeline import artifacts  # noqa: E402
from genval.transforms import Bounded, FeatureTransform, Identity, Log, TransformedMembers  # noqa: E402

TRANSFORMS = {"pt": "log", "eta": {"bounded": [-2.5, 2.5]}}


def _collider_like(path, n=1000, seed=0):
    """A steeply falling positive pT, an eta inside |eta| < 2.5 and a plain third feature."""
    rng = np.random.default_rng(seed)
    pt = np.exp(rng.normal(4.0, 0.5, n))
    eta = 2.5 * np.tanh(rng.normal(0.0, 0.8, n))
    dr = rng.normal(1.0, 0.3, n) + 0.2 * np.log(pt)
    return write_events(path, np.column_stack([pt, eta, dr]), ["pt", "eta", "dr"])


def _config(tmp_path, path, **extra):
    base = {"run_dir": str(tmp_path / "run"), "quiet": True,
            "data": {"path": str(path), "transforms": TRANSFORMS},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "kde", "n_members": 3},
            "sample": {"n_events": 600, "output": "samples.csv"},
            "gof": {"n_toys": 12, "pool_size": 2000, "n_jobs": 1, "variants": ["ensemble"]},
            "report": {"formats": ["png"], "dpi": 30, "pool_size": 5000}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


def test_log_and_bounded_features_run_end_to_end_in_physical_units(tmp_path):
    data = _collider_like(tmp_path / "events.csv")
    run = pipeline.run_pipeline(_config(tmp_path, data))
    root = run.root
    expected = FeatureTransform([Log(), Bounded(-2.5, 2.5), Identity()], ["pt", "eta", "dr"])
    assert artifacts.load_transform(run) == expected
    saved = json.loads((root / "models" / "transform.json").read_text())
    assert saved["features"][0] == {"name": "pt", "map": "log"}
    assert run.stage_info("train")["coordinates"] == [
        "log(pt)", "logit(eta in (-2.5, 2.5))", "dr"]

    # The members are seen in physical units: log f_x = log f_y(T(x)) + log |J|.
    members = artifacts.load_members(run)
    assert isinstance(members, TransformedMembers) and isinstance(members.base, KDEMembers)
    # Samples are physical events inside every domain, with f̂ in physical units (Eq. 3).
    table, density, density_std = artifacts.load_samples(run)
    x = table.x
    assert x.shape == (600, 3) and np.all(x[:, 0] > 0) and np.all(np.abs(x[:, 1]) < 2.5)
    fit = artifacts.load_fit(run)
    f_phys = fit.density(np.exp(log_density_matrix(members, x)))
    np.testing.assert_allclose(density, f_phys, rtol=1e-9)
    f_y = fit.density(np.exp(log_density_matrix(members.base, expected.forward(x))))
    np.testing.assert_allclose(density, f_y * np.exp(expected.log_abs_det(x)), rtol=1e-9)
    assert np.all(density_std > 0)
    # and they follow the data: median pT within 10 %, the same spread of log pT
    events = read_events(data, ["pt", "eta", "dr"]).x
    assert np.median(x[:, 0]) == pytest.approx(np.median(events[:, 0]), rel=0.1)
    assert np.std(np.log(x[:, 0])) == pytest.approx(np.std(np.log(events[:, 0])), rel=0.15)

    # The GoF ran with kernels standardised in the transformed coordinates, and says so.
    res = artifacts.load_gof(run, "ensemble").result
    assert res.kernel_basis["units"] == "standardised" and res.kernel_basis["sigma"] == 1.0
    assert res.kernel_basis["coordinates"] == ["log(pt)", "logit(eta in (-2.5, 2.5))", "dr"]
    assert np.isfinite(res.t_obs) and res.n_toys == 12
    report = (root / "report.html").read_text()
    assert "kernel basis" in report
    assert "σ = 1 in standardised units of log(pt), logit(eta in (-2.5, 2.5)), dr" in report
    assert (root / "figures" / "marginals.png").is_file()
    assert "the truth is unknown" in run.stage_info("coverage")["skipped"]

    # The kernel scan of docs/choosing-kernels.md runs on the same run (no test events read):
    # a shift of log pT by one standard deviation is seen by a smooth basis.
    rows = _kernel_scan().scan(run, [(5, 1.0), (10, 0.5)], n_sets=2, shift=1.0, feature="pt")
    assert [(r["K"], r["sigma"]) for r in rows] == [(5, 1.0), (10, 0.5)]
    for row in rows:
        assert len(row["t_null"]) == len(row["t_deformed"]) == 2
        assert 0 < row["effective_min"] <= row["effective_median"] <= 200  # N_test = 200
    assert min(rows[0]["t_deformed"]) > max(rows[0]["t_null"]) + 10


def _kernel_scan():
    path = Path(__file__).parents[1] / "studies" / "kernel_scan.py"
    spec = importlib.util.spec_from_file_location("kernel_scan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identity_transforms_leave_the_members_unwrapped(tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "quiet": True,
                        "data": {"generate": {"n_events": 400}},
                        "members": {"kind": "kde", "n_members": 2},
                        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05,
                                   "test": 0.2}})
    run = pipeline.run_pipeline(cfg, stages=["split", "train"])
    assert artifacts.load_transform(run).is_identity
    assert isinstance(artifacts.load_members(run), KDEMembers)
    (run.root / "models" / "transform.json").unlink()
    with pytest.raises(ArtifactError, match="transform.json is missing"):
        artifacts.load_members(run)
    (run.root / "models" / "transform.json").write_text('{"format": "other"}')
    with pytest.raises(ArtifactError, match="not a genval feature transform"):
        artifacts.load_members(run)


def test_events_outside_a_domain_fail_at_the_split_naming_the_feature(tmp_path):
    data = tmp_path / "events.csv"
    x = np.column_stack([np.linspace(-1.0, 50.0, 300), np.zeros(300), np.ones(300)])
    write_events(data, x, ["pt", "eta", "dr"])
    with pytest.raises(InputError, match=r"feature 'pt': 6 of 300 values outside \(0, inf\)"):
        pipeline.run_pipeline(_config(tmp_path, data), stages=["split"])
    with pytest.raises(InputError, match=r"'ptt' \(did you mean 'pt'\?\)"):
        pipeline.run_pipeline(_config(tmp_path, data, data={"transforms": {"ptt": "log"}}),
                              stages=["split"], force=True)
