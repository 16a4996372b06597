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


PARTS = {**TINY, "gof": {"n_kernels": 10, "n_toys": 12, "pool_size": 2000, "n_jobs": 1,
                         "variants": ["single", "ensemble"]},
         "report": {**TINY["report"], "pool_size": 5000}}


def _gof_records(run):
    """Every saved GoF variant of a run, without its timings (the only thing that differs)."""
    out = {}
    for path in sorted((run / "gof").glob("*.json")):
        record = json.loads(path.read_text())
        record.pop("timings", None)
        out[path.name] = record
    return out


@pytest.fixture
def fitted(cli, tmp_path):
    """A run directory whose fit stage has finished (the toys' inputs)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(PARTS))
    run = tmp_path / "run"
    assert invoke(cli, "train", run, "-c", cfg).exit_code == 0
    assert invoke(cli, "fit", run).exit_code == 0
    return run


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_toy_parts_merge_bit_for_bit_into_one_run(cli, fitted, tmp_path):
    import os
    import shutil
    import socket

    full = tmp_path / "full"
    shutil.copytree(fitted, full)
    assert invoke(cli, "gof", full).exit_code == 0
    # Parts never take the run lock: they run while another process holds it, and write
    # nothing of the run but their own file.
    (fitted / ".lock").write_text(json.dumps({"pid": os.getpid(),
                                              "host": socket.gethostname(), "since": "now"}))
    before = {name: (fitted / name).read_bytes() for name in ("config.yaml", "metadata.json")}
    for toys in ("5:12", "0:5"):
        result = invoke(cli, "gof", fitted, "--toys", toys, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith(".json")
    assert before == {name: (fitted / name).read_bytes() for name in before}
    assert sorted(p.name for p in (fitted / "gof" / "parts").iterdir()) == [
        "toys-0000000-0000005.json", "toys-0000005-0000012.json"]
    assert not (fitted / ".stages" / "gof.json").exists()  # a part is not the stage
    result = invoke(cli, "merge", fitted)
    assert result.exit_code == 1 and "in use by process" in result.output  # merge locks
    (fitted / ".lock").unlink()
    result = invoke(cli, "merge", fitted, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert _gof_records(fitted) == _gof_records(full)
    assert json.loads((fitted / ".stages" / "gof.json").read_text())["stage"] == "gof"


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_merge_refuses_foreign_overlapping_and_missing_parts(cli, fitted):
    assert invoke(cli, "gof", fitted, "--toys", "0:6").exit_code == 0
    result = invoke(cli, "merge", fitted)
    assert result.exit_code == 1 and "toys missing from the parts: 6:12 of 0:12" in result.output
    assert invoke(cli, "gof", fitted, "--toys", "4:12").exit_code == 0
    result = invoke(cli, "merge", fitted)
    assert result.exit_code == 1 and "toy parts 0:6" in result.output
    assert "and 4:12" in result.output and "overlap" in result.output
    parts = fitted / "gof" / "parts"
    (parts / "toys-0000004-0000012.json").unlink()
    assert invoke(cli, "gof", fitted, "--toys", "6:12").exit_code == 0
    first = parts / "toys-0000000-0000006.json"
    record = json.loads(first.read_text())
    first.write_text(json.dumps({**record, "config_hash": "0" * 64}))
    result = invoke(cli, "merge", fitted)
    assert result.exit_code == 1 and "toys of another configuration" in result.output
    first.write_text(json.dumps(record))
    assert invoke(cli, "merge", fitted).exit_code == 0


def test_toy_ranges_are_checked(cli, fitted):
    result = invoke(cli, "gof", fitted, "--toys", "5:3")
    assert result.exit_code == 2 and "not a range A:B" in result.output
    result = invoke(cli, "gof", fitted, "--toys", "0:13")
    assert result.exit_code == 1 and "not within 0:12" in result.output
    other = fitted.parent / "other.yaml"
    other.write_text(yaml.safe_dump({**PARTS, "seed": 4}))
    result = invoke(cli, "gof", fitted, "--toys", "0:3", "-c", other)
    assert result.exit_code == 1 and "is not the configuration of" in result.output


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_a_resumed_gof_stage_reuses_finished_parts(cli, fitted, tmp_path, monkeypatch):
    import shutil

    from genval import gof

    full = tmp_path / "full"
    shutil.copytree(fitted, full)
    assert invoke(cli, "gof", full).exit_code == 0
    assert invoke(cli, "gof", fitted, "--toys", "3:7").exit_code == 0
    ranges = []
    real = gof.goodness_of_fit

    def spy(*args, **kw):
        ranges.append((kw["first_toy"], kw["first_toy"] + kw["n_toys"]))
        return real(*args, **kw)

    monkeypatch.setattr(gof, "goodness_of_fit", spy)
    assert invoke(cli, "gof", fitted).exit_code == 0
    assert set(ranges) == {(0, 3), (7, 12)}  # toys 3:7 were read back, not refitted
    assert _gof_records(fitted) == _gof_records(full)
