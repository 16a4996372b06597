"""The shipped multijet example (examples/multijet): its data files agree, carry their
provenance, fit the size budget, and its config runs on them (reduced, KDE members)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from genval import pipeline
from genval.config import FlowConfig, load_config, parse_config
from genval.io import read_events, write_events
from genval.pipeline import artifacts
from genval.transforms import FeatureTransform

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multijet"
DATA = EXAMPLE / "data" / "multijet"


def test_shipped_files_agree_and_fit_the_budget():
    parquet = read_events(f"{DATA}.parquet")
    pytest.importorskip("uproot")
    root = read_events(f"{DATA}.root:events", features=parquet.names)  # ROOT sorts branches
    np.testing.assert_array_equal(parquet.x, root.x)
    assert len(parquet.x) >= 100_000 and np.all(np.isfinite(parquet.x))
    size = sum(Path(f"{DATA}{ext}").stat().st_size for ext in (".parquet", ".root"))
    assert size <= 10 * 2**20
    provenance = json.loads(Path(f"{DATA}.json").read_text())
    assert provenance["n_events"] == len(parquet.x)
    assert set(provenance["columns"]) == set(parquet.names)
    assert {"pythia8mc", "fastjet"} <= set(provenance["versions"])
    assert all("seed" in chunk for chunk in provenance["chunks"])


def test_config_transforms_hold_on_every_shipped_event():
    cfg = load_config(EXAMPLE / "config.yaml")
    events = read_events(f"{DATA}.parquet", features=cfg.data.features)
    transform = FeatureTransform.from_spec(cfg.data.transforms, cfg.data.features)
    y = transform.forward(events.x)  # raises InputError naming a feature out of its domain
    assert np.all(np.isfinite(y))
    assert set(cfg.data.labels) == set(cfg.data.features)


def test_example_config_runs_reduced(tmp_path):
    """The example's config on 6,000 of its events with KDE members and few toys: every stage
    runs, the file-data coverage study uses the example's observables, and the report carries
    the units and none of the paper's numbers."""
    raw = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    features = raw["data"]["features"]
    events = read_events(f"{DATA}.parquet", features=features)
    write_events(tmp_path / "small.parquet", events.x[:6000], features)
    raw["data"]["path"] = str(tmp_path / "small.parquet")
    raw.update(run_dir=str(tmp_path / "run"), quiet=True)
    raw["members"] = {"kind": "kde", "n_members": 3}
    raw["sample"] = {"n_events": 2000, "output": "samples.parquet"}
    raw["coverage"].update(n_datasets=3, n_generated=2000)
    raw["gof"] = {"n_toys": 10, "pool_size": 12_000, "n_jobs": 1, "variants": ["frozen"]}
    raw["report"] = {"formats": ["png"], "dpi": 30}
    run = pipeline.run_pipeline(parse_config(raw))
    record = artifacts.load_coverage(run)
    assert record is not None and record.features == list(raw["coverage"]["observables"])
    assert record.result.truth_stds is not None
    report = (run.root / "report.html").read_text(encoding="utf-8")
    assert "GeV" in report and "paper Z" not in report


def test_gpu_config_is_the_study_with_the_papers_ensemble():
    """config-gpu.yaml, the README's larger variant for a GPU, is config.yaml with M = 60 flows
    of the paper architecture (the flow defaults) on CUDA: every other setting is the same, so
    the two runs compare the ensembles alone."""
    base = load_config(EXAMPLE / "config.yaml").model_dump(mode="json")
    gpu = load_config(EXAMPLE / "config-gpu.yaml").model_dump(mode="json")
    assert gpu["device"] == "cuda" and gpu["members"]["n_members"] == 60
    assert gpu["members"]["flow"] == FlowConfig().model_dump(mode="json")
    assert base["members"]["n_members"] < 60 and base["device"] == "cpu"
    for tree in (base, gpu):
        del tree["members"], tree["device"], tree["run_dir"]
    assert gpu == base


def test_conditional_config_bins_at_the_quartiles_and_runs_reduced(tmp_path):
    """The conditional example (x | jet1_pt): its bin edges are the quartiles of jet1_pt in
    the shipped sample, as its comment says, and on 6,000 events with KDE members every stage
    runs and the test reports each of the four jet1_pt bins."""
    raw = yaml.safe_load((EXAMPLE / "config-conditional.yaml").read_text())
    cfg = parse_config(raw)
    events = read_events(f"{DATA}.parquet", features=cfg.data.features)
    pt = events.x[:, cfg.data.features.index("jet1_pt")]
    edges = cfg.context.edges("jet1_pt")
    assert edges[0] == -np.inf and edges[-1] == np.inf
    np.testing.assert_allclose(edges[1:-1], np.quantile(pt, [0.25, 0.5, 0.75]), rtol=2e-3)
    write_events(tmp_path / "small.parquet", events.x[:6000], cfg.data.features)
    raw["data"]["path"] = str(tmp_path / "small.parquet")
    raw.update(run_dir=str(tmp_path / "run"), quiet=True)
    raw["members"] = {"kind": "kde", "n_members": 3}
    raw["sample"] = {"n_events": 500, "output": "samples.parquet"}
    raw["gof"].update(n_toys=10, pool_size=1500, variants=["frozen"])
    raw["report"] = {"formats": ["png"], "dpi": 30}
    run = pipeline.run_pipeline(parse_config(raw))
    result = artifacts.load_conditional_gof(run, "frozen")
    assert result.bins.n_bins == 4 and result.bins.names == ("jet1_pt",)
    assert all(r.n_test > 0 for r in result.per_bin)
    assert "jet1_pt in [" in (run.root / "report.html").read_text(encoding="utf-8")
