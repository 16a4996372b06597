"""Crash consistency (issue 13): ``genval run`` killed with SIGKILL at a random moment of any
stage, then run again on the same run directory, finishes with artifacts identical to those of
a run never killed (same seed): the same files, byte for byte, except the timestamps and
durations some of them record, compared without those.

Each trial starts ``genval run`` in a subprocess, waits until the chosen stage has started
(the marker of the stage before it, or the run's config for the first), sleeps a random
fraction of that stage's duration in the uninterrupted run (seeded) and kills the process.
The default suite runs a few trials on a small configuration (KDE members, few events and
toys); the ``slow`` set runs three trials in each of the seven stages.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import genval
from genval.rundir import STAGES, RunDirError

CONFIG = {
    "seed": 11, "quiet": True,
    "data": {"generate": {"n_events": 1200}},
    "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
    "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
    "sample": {"n_events": 400},
    "coverage": {"n_datasets": 4, "n_events": 150, "n_generated": 400},
    "gof": {"n_kernels": 10, "n_toys": 20, "pool_size": 3000, "n_jobs": 1, "n_pools": 2,
            "variants": ["single", "frozen", "ensemble"], "max_negative_mass": 0.05},
    "report": {"formats": ["png"], "dpi": 30, "pool_size": 5000},
}
"""Every stage runs, each for a fraction of a second to a few seconds on two cores."""

TIMING_KEYS = frozenset({"finished", "seconds", "created", "timings"})
"""JSON keys whose values are clock readings (when, how long), not results."""
_REPORT_TIMING = re.compile(r"<tr><th>(created|stage seconds)</th><td>[^<]*</td></tr>")
"""The report's provenance rows holding clock readings."""


ENV = {**os.environ, "PYTHONPATH": str(Path(genval.__file__).parents[1]), "OMP_NUM_THREADS": "1",
       "MPLBACKEND": "Agg"}
"""Every run in a fresh process of this genval, as a user runs it (no state of the tests)."""


def _command(config: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "genval", "run", str(config), "--run-dir", str(root)]


def _resume(config: Path, root: Path) -> None:
    """``genval run CONFIG --run-dir ROOT``, which must succeed."""
    done = subprocess.run(_command(config, root), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _content(path: Path) -> Any:
    """What must be identical: the bytes, or, for the files that record clock readings (the
    metadata, the stage markers, the GoF results' timings, the report's provenance), the
    content without them."""
    if path.suffix == ".json":
        return _without_timings(json.loads(path.read_text(encoding="utf-8")))
    if path.name == "report.html":
        return _REPORT_TIMING.sub("", path.read_text(encoding="utf-8"))
    return path.read_bytes()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_same_run(root: Path, reference: Path) -> None:
    """``root`` holds the files of ``reference``, each with the same content."""
    assert _files(root) == _files(reference)
    for name in _files(reference):
        assert _content(root / name) == _content(reference / name), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, float]]:
    """The config file, a run never killed and the seconds each of its stages took."""
    base = tmp_path_factory.mktemp("crash")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    root = base / "reference"
    _resume(config, root)
    seconds = {s: float(v["seconds"]) for s, v in
               json.loads((root / "metadata.json").read_text())["stages"].items()}
    assert set(seconds) == set(STAGES)
    return config, root, seconds


def _started(root: Path, stage: str) -> bool:
    """Whether a run has reached ``stage``: the stage before it finished (its marker)."""
    i = STAGES.index(stage)
    if i == 0:
        return (root / "config.yaml").is_file()
    return (root / ".stages" / f"{STAGES[i - 1]}.json").is_file()


def kill_during(config: Path, root: Path, stage: str, fraction: float,
                seconds: dict[str, float]) -> bool:
    """Run ``genval run`` in a subprocess and SIGKILL it ``fraction`` of ``stage``'s
    reference duration after the stage started. Returns whether it was killed (False: it
    finished first)."""
    log = root.parent / f"{root.name}.stderr"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(_command(config, root), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    killed = False
    try:
        deadline = time.monotonic() + 300
        while not _started(root, stage) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never reached the stage"
            time.sleep(0.005)
        time.sleep(fraction * seconds[stage])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        proc.wait()  # reaped: its pid no longer counts as a live holder of the lock
    assert killed or proc.returncode == 0, log.read_text(errors="replace")
    return killed


def _trials(stages: list[str], seed: int) -> list[tuple[str, float]]:
    """A kill moment per stage: a fraction of the stage's duration drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return [(stage, float(rng.uniform(0.0, 1.0))) for stage in stages]


def _trial(reference: tuple[Path, Path, dict[str, float]], root: Path, stage: str,
           fraction: float) -> bool:
    config, ref, seconds = reference
    killed = kill_during(config, root, stage, fraction, seconds)
    assert not list(root.rglob(".lock")) or killed
    _resume(config, root)
    assert_same_run(root, ref)
    return killed


@pytest.mark.parametrize("stage, fraction", _trials(["fit", "gof"], seed=20261203))
def test_a_killed_run_resumes_to_the_same_artifacts(reference, tmp_path, stage, fraction):
    _trial(reference, tmp_path / "run", stage, fraction)


@pytest.mark.slow
def test_killed_in_every_stage_resumes_to_the_same_artifacts(reference, tmp_path):
    trials = _trials([s for s in STAGES for _ in range(3)], seed=7)
    killed = [_trial(reference, tmp_path / f"run{i}", stage, fraction)
              for i, (stage, fraction) in enumerate(trials)]
    assert len(trials) >= 20 and sum(killed) >= len(trials) // 2, killed


def test_files_of_an_unfinished_stage_are_not_presented_as_results(tmp_path):
    """A gof stage killed after writing one variant (no marker), and a fit whose marker is
    gone: neither reaches `genval results`, `load_run` or the report."""
    import matplotlib

    matplotlib.use("Agg")
    from genval.config import parse_config
    from genval.pipeline import artifacts, run_pipeline, run_stage
    from genval.runs import load_run

    config = parse_config({**CONFIG, "coverage": {"enabled": False}})
    run = run_pipeline(config, run_dir=tmp_path / "run", stages=["split", "train", "fit"])
    artifacts.save_gof_error(run, "ensemble", "left by a killed gof stage")
    run_stage(run, "report")
    report = run.report_path.read_text(encoding="utf-8")
    assert "left by a killed gof stage" not in report and "Goodness of fit" not in report
    assert "f<sub>i</sub> fit (Eqs. 1–2)" in report
    loaded = load_run(run.root)
    assert loaded.gof_records == {} and "gof" not in loaded.summary()
    assert loaded.fit is not None
    # A gof stage that finished by skipping (gof.enabled: false in a --force run) does not
    # adopt the files an earlier configuration's GoF left.
    run.run_once("gof", lambda: {"skipped": "gof.enabled is false"})
    assert run.is_done("gof") and not run.has_results("gof")
    assert load_run(run.root).gof_records == {}
    run.invalidate("fit")  # as if killed between the fit's files and its marker
    loaded = load_run(run.root)
    assert artifacts.has_fit(run) and loaded.fit is None and "fit" not in loaded.summary()
    with pytest.raises(RunDirError, match="'sample' of .* has not finished"):
        loaded.samples()


def test_a_stale_temporary_is_removed_and_a_live_ones_kept(tmp_path):
    """The lock sweeps what killed writers left (their pid is gone), not a live writer's
    temporary, nor anything under gof/parts (array jobs write there without the lock)."""
    from genval.config import Config
    from genval.rundir import RunDir

    run = RunDir.create(tmp_path / "run", Config())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run.root / "fit" / f".fit.npz.{dead.pid}-0123456789ab.tmp"
    live = run.root / "fit" / f".fit.json.{os.getpid()}-0123456789ab.tmp"
    parts = run.root / "gof" / "parts" / f".toys-0-5.json.{dead.pid}-0123456789ab.tmp"
    other = run.root / "fit" / "notes.tmp"
    for path in (stale, live, parts, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    with run.lock():
        pass
    assert not stale.exists()
    assert live.exists() and parts.exists() and other.exists()
