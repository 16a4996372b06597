import json

import pytest

from genval.config import Config, parse_config
from genval.errors import ArtifactError
from genval.rundir import STAGES, RunDir, RunDirError, dependents, package_versions


@pytest.fixture
def run(tmp_path):
    return RunDir.create(tmp_path / "run", Config())


def test_create_writes_resolved_config_and_metadata(run):
    assert run.config() == Config()
    text = run.config_path.read_text()
    assert "n_kernels: 10\n" in text  # every default written out
    meta = run.metadata()
    assert meta["seed"] == 0 and meta["device"] == {"requested": "cpu"}
    assert meta["packages"]["numpy"] and "python" in meta and meta["stages"] == {}
    assert package_versions(("surely-not-a-package",)) == {"surely-not-a-package": None}


def test_stages_run_once_and_skip_on_rerun(run):
    calls = []
    messages = []
    out = run.run_once("split", lambda: calls.append(1) or {"n": 3}, log=messages.append)
    assert out.ran and out.info == {"n": 3} and run.is_done("split")
    again = run.run_once("split", lambda: calls.append(1), log=messages.append)
    assert not again.ran and again.info == {"n": 3} and calls == [1]
    assert any("already done" in m and "--force" in m for m in messages)
    forced = run.run_once("split", lambda: calls.append(1), force=True)
    assert forced.ran and calls == [1, 1]
    assert run.metadata()["stages"]["split"]["seconds"] >= 0


def test_out_of_order_stage_is_refused(run):
    with pytest.raises(RunDirError, match=r"stage 'fit' needs \['train'\] .*genval train"):
        run.run_once("fit", dict)
    with pytest.raises(RunDirError, match="unknown stage 'fitt'"):
        run.is_done("fitt")


def test_rerunning_a_stage_invalidates_later_ones(run):
    for stage in ("split", "train", "fit", "gof"):
        run.run_once(stage, dict)
    run.run_once("train", dict, force=True)
    status = run.status()
    assert status["split"] and status["train"]
    assert not status["fit"] and not status["gof"]
    assert list(status) == list(STAGES)


def test_rerunning_a_stage_invalidates_only_its_dependents(run):
    for stage in STAGES[:-1]:
        run.run_once(stage, dict)
    run.run_once("report", dict)
    # The samples feed nothing but the report: re-drawing them keeps the coverage and the
    # GoF toys (which only need the fit), and drops the report that shows them.
    run.run_once("sample", dict, force=True)
    status = run.status()
    assert status["coverage"] and status["gof"] and status["fit"] and status["sample"]
    assert not status["report"]
    assert run.invalidate("gof") == ["gof"]  # report's marker was already gone
    assert dependents("gof") == ("gof", "report")
    assert dependents("fit") == ("fit", "sample", "coverage", "gof", "report")
    assert dependents("split") == STAGES
    assert dependents("report") == ("report",)
    with pytest.raises(RunDirError, match="unknown stage"):
        dependents("plot")


def test_failed_stage_leaves_no_marker(run):
    run.run_once("split", dict)

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run.run_once("train", boom)
    assert not run.is_done("train")
    reopened = RunDir.open(run.root)
    assert reopened.is_done("split") and not reopened.is_done("train")


def test_resume_with_same_config_and_refuse_a_different_one(tmp_path, run):
    run.run_once("split", dict)
    same = RunDir.create(run.root, Config())
    assert same.is_done("split")
    other = parse_config({"seed": 5})
    with pytest.raises(RunDirError, match="different configuration; use --force"):
        RunDir.create(run.root, other)
    forced = RunDir.create(run.root, other, force=True)
    assert forced.config().seed == 5 and not forced.is_done("split")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a genval run directory"):
        RunDir.create(tmp_path / "junk", Config())


def test_open_errors_and_corrupt_marker(tmp_path, run):
    with pytest.raises(RunDirError, match=r"not a genval run directory \(no config.yaml\)"):
        RunDir.open(tmp_path / "elsewhere")
    assert isinstance(RunDirError("x"), ArtifactError)
    run.run_once("split", dict)
    (run.root / ".stages" / "split.json").write_text("{trunc")
    assert not run.is_done("split")


def test_update_metadata_merges_and_layout(run):
    run.update_metadata(device={"resolved": "cpu"}, data={"hash": "abc"})
    meta = run.metadata()
    assert meta["device"] == {"requested": "cpu", "resolved": "cpu"}
    assert meta["data"] == {"hash": "abc"}
    assert run.dir("figures").is_dir() and run.splits_path.parent.name == "data"
    with pytest.raises(ValueError, match="unknown run-directory folder"):
        run.dir("tmp")
    json.loads(run.metadata_path.read_text())  # valid JSON on disk


def test_non_finite_info_is_stored_as_strings(run):
    import numpy as np

    run.run_once("split", lambda: {"z": np.float64(np.inf), "p": [np.nan, 0.5],
                                    "n": np.int64(3), "ok": np.bool_(True)})
    info = json.loads((run.root / ".stages" / "split.json").read_text())["info"]
    assert info == {"z": "inf", "p": ["nan", 0.5], "n": 3, "ok": True}
    run.update_metadata(extra={"z": float("-inf")})
    assert run.metadata()["extra"] == {"z": "-inf"}


def test_lock_excludes_a_live_holder_and_takes_over_a_dead_one(run):
    import os
    import socket
    import subprocess
    import sys

    with run.lock():
        assert (run.root / ".lock").exists()
        with pytest.raises(RunDirError, match=r"is in use by process \d+"):
            with run.lock():
                pass
    assert not (run.root / ".lock").exists()
    # A lock left by a process that no longer exists (e.g. killed with SIGKILL) is stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (run.root / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "since": "x",
                                                "host": socket.gethostname()}))
    with run.lock():
        assert json.loads((run.root / ".lock").read_text())["pid"] == os.getpid()
    (run.root / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    with pytest.raises(RunDirError, match="on elsewhere"):
        with run.lock():
            pass
