import json

import click
import matplotlib
import pytest
import yaml
from click.testing import CliRunner

matplotlib.use("Agg")

from genval.cli import register  # noqa: E402

TINY = {"quiet": True, "data": {"generate": {"n_events": 800}},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "sample": {"n_events": 300},
        "coverage": {"n_datasets": 2, "n_events": 100, "n_generated": 200},
        "gof": {"n_kernels": 10}, "report": {"formats": ["png"], "dpi": 30}}


@pytest.fixture
def cli():
    group = click.Group("genval")
    return register(group)


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_commands_are_registered(cli):
    assert {"run", "demo", "config", "train", "fit", "sample", "coverage", "gof",
            "report"} <= set(cli.commands)
    result = invoke(cli, "train", "--help")
    assert result.exit_code == 0 and "RUN_DIR" in result.output and "--force" in result.output


def test_config_command_prints_a_loadable_config(cli):
    result = invoke(cli, "config", "--preset", "quick")
    assert result.exit_code == 0
    from genval.presets import PRESETS

    assert yaml.safe_load(result.output)["members"]["n_members"] == (
        PRESETS["quick"]["members"]["n_members"])


def test_stage_commands_run_in_order_and_resume(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    result = invoke(cli, "fit", run, "-c", cfg)
    assert result.exit_code == 1 and "needs ['train']" in result.output
    assert invoke(cli, "train", run, "-c", cfg).exit_code == 0
    assert invoke(cli, "fit", run).exit_code == 0
    assert invoke(cli, "sample", run, "--device", "cpu").exit_code == 0
    assert (run / "samples" / "samples.npy").is_file()
    result = CliRunner().invoke(cli, ["fit", str(run), "--quiet"])
    assert result.exit_code == 0
    forced = CliRunner().invoke(cli, ["fit", str(run)], catch_exceptions=False)
    assert forced.exit_code == 0
    marker = json.loads((run / ".stages" / "fit.json").read_text())
    assert marker["stage"] == "fit"


def test_errors_are_one_line_messages(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gof:\n  n_toy: 3\n")
    result = invoke(cli, "run", bad)
    assert result.exit_code == 1
    assert "unknown key 'gof.n_toy' (did you mean 'gof.n_toys'?)" in result.output
    assert "Traceback" not in result.output
    result = invoke(cli, "report", tmp_path / "nowhere")
    assert result.exit_code == 1 and "not a genval run directory" in result.output
    result = invoke(cli, "run", tmp_path / "missing.yaml")
    assert result.exit_code == 1 and "config file not found" in result.output


def test_run_refuses_another_config_in_the_same_dir_without_force(cli, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(TINY))
    b.write_text(yaml.safe_dump({**TINY, "seed": 9}))
    run = tmp_path / "run"
    assert invoke(cli, "train", run, "-c", a).exit_code == 0
    result = invoke(cli, "train", run, "-c", b)
    assert result.exit_code == 1 and "different configuration; use --force" in result.output


def test_run_end_to_end_without_gof(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "gof": {"enabled": False, "n_kernels": 10}}))
    result = CliRunner().invoke(cli, ["run", str(cfg), "--run-dir", str(tmp_path / "r"),
                                      "--seed", "5"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "r"
    assert result.output.strip().endswith("report.html")
    assert yaml.safe_load((root / "config.yaml").read_text())["seed"] == 5
    assert "gof skipped: gof.enabled is false" in (root / "report.html").read_text()
    again = CliRunner().invoke(cli, ["run", str(cfg), "--run-dir", str(root), "--seed", "5"])
    assert again.exit_code == 0
