"""`genval run` end to end with flow members and the GoF test."""

import json

import click
import matplotlib
import yaml
from click.testing import CliRunner

matplotlib.use("Agg")

import genval.flows  # noqa: E402, F401  (a broken import must fail here, not skip)
import genval.gof  # noqa: E402, F401
from genval.cli import register  # noqa: E402

TINY_FLOW = {
    "quiet": True,
    "data": {"generate": {"n_events": 2000}},
    # A large weight-fit split keeps ŵ tame, so f(x; ŵ) > 0 on the test events.
    "splits": {"train": 0.45, "weight_fit": 0.4, "centres": 0.05, "test": 0.1},
    "members": {"kind": "flow", "n_members": 3,
                "flow": {"layers": 1, "hidden": 8, "blocks": 1, "bins": 4,
                         "learning_rate": 3e-3, "max_epochs": 8, "patience": 3,
                         "precision": "bfloat16"}},
    "sample": {"n_events": 400, "output": "samples.csv"},
    "coverage": {"n_datasets": 2, "n_events": 100, "n_generated": 200},
    "gof": {"n_kernels": 10, "n_toys": 4, "pool_size": 1000},
    "report": {"dpi": 30, "pool_size": 5000},
}

ARTIFACTS = [
    "config.yaml", "metadata.json", "data/events.npz", "data/splits.npz",
    "models/ensemble.safetensors", "models/history.npz", "fit/fit.npz", "fit/fit.json",
    "samples/samples.csv", "samples/density.npz", "coverage/coverage.json",
    "coverage/coverage.npz", "gof/single.json", "gof/frozen.json", "gof/ensemble.json",
    "gof/deviations.json", "report.html",
] + [f"figures/{stem}.{ext}" for stem in ("marginals", "pairs", "null_single", "null_frozen",
                                           "null_ensemble", "coverage", "weights", "training")
     for ext in ("png", "pdf")]


def test_genval_run_end_to_end_with_flows_and_gof(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_FLOW))
    cli = register(click.Group("genval"))
    root = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(cfg), "--run-dir", str(root)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    missing = [rel for rel in ARTIFACTS if not (root / rel).is_file()]
    assert not missing
    assert not list(root.rglob("*.tmp"))
    meta = json.loads((root / "metadata.json").read_text())
    assert set(meta["stages"]) >= {"split", "train", "fit", "sample", "coverage", "gof"}
    assert meta["device"]["resolved"] == "cpu" and meta["packages"]["torch"]
    from genval.flows import FlowEnsemble

    trained = FlowEnsemble.load(root / "models" / "ensemble.safetensors")
    assert trained.training_summary["settings"]["precision"] == "bfloat16"
    for variant in ("single", "frozen", "ensemble"):
        rec = json.loads((root / "gof" / f"{variant}.json").read_text())
        assert rec["n_toys"] == 4 and len(rec["t_null"]) == 4 and rec["variant"] == variant
    report = (root / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 8  # with the 2D view of the pair
    assert "20.29" in report and "61.3 %" in report
