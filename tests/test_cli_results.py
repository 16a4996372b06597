"""`genval results`, `genval status` and `genval config --schema`."""

import json

import click
import matplotlib
import pytest
import yaml
from click.testing import CliRunner

matplotlib.use("Agg")

from genval import pipeline  # noqa: E402
from genval.cli import register  # noqa: E402
from genval.config import Config, dump_config, parse_config  # noqa: E402
from genval.display import format_interval  # noqa: E402
from genval.presets import preset  # noqa: E402
from genval.runs import load_run  # noqa: E402

TINY = {"quiet": True, "data": {"generate": {"n_events": 800}},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "sample": {"n_events": 300},
        "coverage": {"n_datasets": 3, "n_events": 100, "n_generated": 200},
        "gof": {"n_kernels": 10, "n_toys": 6, "pool_size": 2000, "n_pools": 2,
                "variants": ["frozen", "ensemble"]},
        "report": {"formats": ["png"], "dpi": 30, "pool_size": 2000}}


@pytest.fixture
def cli():
    return register(click.Group("genval"))


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / "run"
    pipeline.run_pipeline(parse_config(TINY), run_dir=root,
                          stages=["split", "train", "fit", "coverage", "gof"])
    return root


def test_results_text_and_json(cli, finished):
    run = load_run(finished)
    text = invoke(cli, "results", finished)
    assert text.exit_code == 0
    for variant, label in (("frozen", "ensemble, weights frozen"),
                           ("ensemble", "ensemble with uncertainty")):
        res = run.gof[variant]
        line = next(line for line in text.output.splitlines() if "t_obs" in line and
                    line.strip().startswith(label))
        assert f"p = {format_interval(res.p_value, *res.p_interval)}" in line
        assert f"{res.n_toys} toys" in line
    assert "coverage (Eq. 4) over 3 data sets" in text.output
    assert "x0 (O* = -0.5)" in text.output
    assert "sample not run" in text.output and "fit done" in text.output
    as_json = json.loads(invoke(cli, "results", finished, "--json").output)
    assert as_json == json.loads(json.dumps(run.summary()))
    assert as_json["gof"]["ensemble"]["z"] == pytest.approx(run.gof["ensemble"].z)
    assert set(as_json["coverage"]["features"]) == {"x0", "x1"}


def test_status(cli, finished, tmp_path):
    out = invoke(cli, "status", finished)
    assert out.exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.output.splitlines()[2:]}
    assert rows == {"split": "done", "train": "done", "fit": "done", "sample": "not",
                    "coverage": "done", "gof": "done", "report": "not"}
    data = json.loads(invoke(cli, "status", finished, "--json").output)
    assert data["stages"]["sample"]["state"] == "not run" and data["lock"] is None
    assert data["stages"]["fit"]["seconds"] >= 0
    # A marker of another configuration is stale (the stage will run again).
    other = tmp_path / "run"
    pipeline.run_pipeline(parse_config(TINY), run_dir=other, stages=["split"])
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["seed"] = 99
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    data = json.loads(invoke(cli, "status", other, "--json").output)
    assert data["stages"]["split"]["state"] == "stale"
    missing = CliRunner().invoke(cli, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "not a genval run directory" in missing.output


def test_config_schema_validates_what_the_loader_accepts(cli):
    jsonschema = pytest.importorskip("jsonschema")
    result = invoke(cli, "config", "--schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for cfg in (Config(), preset("quick"), preset("paper"),
                parse_config({"members": {"kind": "python", "factory": "pkg.mod:make"}})):
        document = yaml.safe_load(dump_config(cfg))
        assert not list(validator.iter_errors(document))
    for bad in ({"gof": {"n_toy": 3}}, {"device": "mps"}, {"members": {"kind": "nn"}},
                {"gof": {"n_toys": 0}}, {"members": {"factory": "no colon"}}):
        assert list(validator.iter_errors(bad)), bad
