"""Progress messages go through ``logging.getLogger("genval")``: silent in a library unless
configured, on stderr from the command line and ``gv.run`` unless quiet."""

import logging
import subprocess
import sys
import warnings

import click
import pytest
import yaml
from click.testing import CliRunner

import genval
from genval import _logging, pipeline
from genval.cli import register
from genval.config import parse_config
from genval.rundir import RunDir

TINY = {"quiet": True, "data": {"generate": {"n_events": 400}},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "coverage": {"enabled": False}, "gof": {"enabled": False}}


def _genval_logger_state():
    logger = logging.getLogger("genval")
    return logger.level, list(logger.handlers)


def test_package_logger_has_only_a_null_handler():
    logger = logging.getLogger("genval")
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]


@pytest.mark.parametrize(("message", "name", "level"), [
    ("[fit] converged in 7 Newton steps", "genval.pipeline.fit", logging.INFO),
    ("[gof] warning: RuntimeWarning: x", "genval.pipeline.gof", logging.WARNING),
    ("[split] running", "genval.pipeline.split", logging.INFO),
    ("no prefix at all", "genval.pipeline", logging.INFO),
    ("[not a stage prefix", "genval.pipeline", logging.INFO),
])
def test_messages_go_to_the_stage_logger(caplog, message, name, level):
    with caplog.at_level(logging.DEBUG, logger="genval"):
        _logging.to_logger(message)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (name, level, message)]


def test_stage_messages_and_recorded_warnings_reach_the_logger(tmp_path, caplog, monkeypatch):
    run = RunDir.create(tmp_path / "run", parse_config(TINY))

    def warn(run, **_):
        warnings.warn("a stage's warning", RuntimeWarning, stacklevel=1)
        return {}

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "split", warn)
    with caplog.at_level(logging.INFO, logger="genval"):
        pipeline.run_stage(run, "split")  # log=None: the logger
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0] == ("genval.pipeline.split", "INFO", "[split] running")
    assert ("genval.pipeline.split", "WARNING",
            "[split] warning: RuntimeWarning: a stage's warning") in records
    assert records[-1][2].startswith("[split] done in ")
    # An explicit callable still receives the messages instead of the logger.
    caplog.clear()
    got = []
    with caplog.at_level(logging.INFO, logger="genval"):
        pipeline.run_stage(run, "split", log=got.append)
    assert got and "already done" in got[0] and not caplog.records


def test_a_library_prints_nothing_unless_logging_is_configured(tmp_path):
    # A fresh interpreter (pytest installs logging handlers of its own): the stages' messages
    # reach a handler the application configures, and nothing is printed without one.
    code = (
        "import logging, sys, genval\n"
        "from genval import pipeline\n"
        "from genval.config import parse_config\n"
        f"cfg = parse_config({TINY!r})\n"
        "if sys.argv[1] == 'configured':\n"
        "    logging.basicConfig(level=logging.INFO, format='%(name)s|%(message)s')\n"
        "pipeline.run_pipeline(cfg, run_dir=sys.argv[2], stages=['split'])\n")
    quiet = subprocess.run([sys.executable, "-c", code, "bare", str(tmp_path / "a")],
                           capture_output=True, text=True, check=True)
    assert quiet.stdout == "" and quiet.stderr == ""
    shown = subprocess.run([sys.executable, "-c", code, "configured", str(tmp_path / "b")],
                           capture_output=True, text=True, check=True)
    assert "genval.pipeline.split|[split] running" in shown.stderr.splitlines()


def test_messages_to_echoes_then_restores_the_logger(monkeypatch):
    before = _genval_logger_state()
    got = []
    with _logging.messages_to(got.append):
        _logging.to_logger("[fit] hello")
        logging.getLogger("genval.pipeline.gof").debug("[gof] not at INFO")
    _logging.to_logger("[fit] after the block")
    assert got == ["[fit] hello"] and _genval_logger_state() == before
    # Handlers configured by the application are detected (pytest's own are on the root).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert not _logging.handlers_configured()
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler()])
    assert _logging.handlers_configured()


def test_cli_prints_stage_messages_on_stderr_unless_quiet(tmp_path):
    cli = register(click.Group("genval"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "quiet": False}))
    before = _genval_logger_state()
    loud = CliRunner().invoke(cli, ["train", str(tmp_path / "run"), "-c", str(cfg)])
    assert loud.exit_code == 0, loud.output
    lines = loud.stderr.splitlines()
    assert lines[0] == "[split] running" and "[train] running" in lines
    assert lines[-1].startswith("[train] done in ")
    assert _genval_logger_state() == before  # the command's handler is gone
    skipped = CliRunner().invoke(cli, ["train", str(tmp_path / "run")])
    assert "[train] already done" in skipped.stderr and "use --force" in skipped.stderr
    again = CliRunner().invoke(cli, ["train", str(tmp_path / "run"), "--quiet", "--force"])
    assert again.exit_code == 0 and again.stderr == ""
    assert _genval_logger_state() == before


def test_gv_run_prints_unless_quiet_or_logging_is_configured(tmp_path, capsys, monkeypatch,
                                                             caplog):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh notebook
    genval.run(config={**TINY, "quiet": False}, run_dir=tmp_path / "a", stages=["split"])
    assert "[split] running" in capsys.readouterr().err
    genval.run(config=TINY, run_dir=tmp_path / "b", stages=["split"])
    assert capsys.readouterr().err == ""
    # An application with its own handler gets the messages there, not twice on stderr.
    with caplog.at_level(logging.INFO, logger="genval"):
        monkeypatch.setattr(logging.getLogger(), "handlers", [caplog.handler])
        genval.run(config={**TINY, "quiet": False}, run_dir=tmp_path / "c", stages=["split"])
    assert capsys.readouterr().err == ""
    assert "[split] running" in caplog.messages
