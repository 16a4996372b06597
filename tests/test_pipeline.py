"""The stage wiring on KDE members (no flows, no GoF needed): artifacts, resume, isolation."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import genval  # noqa: E402
from genval import pipeline  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.io import read_events, write_events  # noqa: E402
from genval.rundir import RunDir  # noqa: E402
from genval.splits import Splits  # noqa: E402

FAST = ["split", "train", "fit", "sample", "coverage", "report"]


def tiny(tmp_path, **extra):
    base = {"run_dir": str(tmp_path / "run"), "quiet": True,
            "data": {"generate": {"n_events": 800}},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
            "sample": {"n_events": 500, "output": "samples.parquet"},
            "coverage": {"n_datasets": 3, "n_events": 200, "n_generated": 400},
            "gof": {"n_kernels": 10},
            "report": {"formats": ["png"], "dpi": 40, "pool_size": 5000}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


def test_stages_write_every_artifact_and_skip_when_rerun(tmp_path):
    cfg = tiny(tmp_path)
    run = pipeline.run_pipeline(cfg, stages=FAST)
    root = run.root
    for rel in ["config.yaml", "metadata.json", "data/splits.npz", "data/events.npz",
                "models/kde.json", "fit/fit.npz", "fit/fit.json", "samples/samples.parquet",
                "samples/density.npz", "coverage/coverage.json", "figures/weights.png",
                "figures/coverage.png", "report.html"]:
        assert (root / rel).is_file(), rel
    assert not list(root.rglob("*.tmp"))
    samples = read_events(root / "samples" / "samples.parquet", ["x1", "x0"])
    assert samples.x.shape == (500, 2)
    fit = pipeline.load_fit(run)
    assert fit.weights.shape == (3,) and abs(fit.weights.sum() - 1) < 1e-9
    meta = run.metadata()
    assert set(meta["stages"]) == set(FAST) and meta["data"]["splits"]["hash"]
    assert {"data", "split", "train", "sample", "coverage"} <= set(meta["seeds"])
    report = (root / "report.html").read_text()
    assert "Coverage of the first moment" in report and "61.3 %" in report
    # Everything finished: a second call runs nothing.
    log = []
    pipeline.run_pipeline(cfg, stages=FAST, log=log.append)
    assert all("already done" in m for m in log) and len(log) == len(FAST)


def test_crash_after_training_resumes_without_retraining(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    real_fit = pipeline.STAGE_FUNCTIONS["fit"]

    def crash(run, **_):
        raise KeyboardInterrupt  # what a Ctrl-C (or a kill) mid-fit leaves behind

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg, stages=FAST)
    run = RunDir.open(cfg.run_dir)
    assert run.status()["train"] and not run.status()["fit"]
    trained_at = json.loads((run.root / ".stages" / "train.json").read_text())["finished"]
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "fit", real_fit)
    calls = []
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train", lambda r, **_: calls.append(r) or {})
    pipeline.run_pipeline(cfg, stages=FAST)
    assert calls == []  # not retrained
    assert json.loads((run.root / ".stages" / "train.json").read_text())["finished"] == \
        trained_at
    assert run.status()["report"]


def test_killed_process_resumes_without_retraining(tmp_path):
    cfg = tiny(tmp_path, coverage={"n_datasets": 40})  # slow enough to be killed in coverage
    script = textwrap.dedent(f"""
        import matplotlib; matplotlib.use("Agg")
        from genval.config import parse_config
        from genval.pipeline import run_pipeline
        run_pipeline(parse_config({cfg.model_dump(mode="json")!r}), stages={FAST!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(genval.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    marker = Path(cfg.run_dir) / ".stages" / "train.json"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    run = RunDir.open(cfg.run_dir)
    assert not run.status()["report"]  # it really died mid-run
    outcomes = [pipeline.run_stage(run, s) for s in FAST]
    assert not outcomes[1].ran  # train skipped
    assert all(run.status()[s] for s in FAST)


def test_training_and_fit_never_see_the_test_split(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    taken = []
    real_take = Splits.take

    def spy(self, x, name):
        taken.append(name)
        return real_take(self, x, name)

    monkeypatch.setattr(Splits, "take", spy)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit"])
    assert set(taken) == {"train", "weight_fit"}
    # And the rows themselves: no test event is among those the stages were given.
    splits = Splits.load(run.splits_path)
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["weight_fit"]))
    taken.clear()
    pipeline.run_pipeline(cfg, stages=["sample"])
    assert "test" not in taken


def test_file_input_with_separate_test_file_and_skipped_coverage(tmp_path, rng):
    x = rng.normal([0.0, 1.0, 2.0], 0.5, size=(600, 3))
    write_events(tmp_path / "events.csv", x, ["a", "b", "c"])
    write_events(tmp_path / "test.h5:events", x[:150] + 0.01, ["a", "b", "c"])
    cfg = tiny(tmp_path, data={"path": str(tmp_path / "events.csv"), "features": ["c", "a"],
                               "test_path": f"{tmp_path}/test.h5:events"},
               splits={"train": 0.6, "weight_fit": 0.3, "centres": 0.1, "test": None})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "coverage", "report"])
    test, names = pipeline.split_events(run, "test")
    assert names == ["c", "a"] and test.shape == (150, 2)
    np.testing.assert_allclose(test[:, 0], x[:150, 2] + 0.01)
    info = json.loads((run.root / ".stages" / "coverage.json").read_text())["info"]
    assert "truth is unknown" in info["skipped"]
    assert "coverage skipped" in (run.root / "report.html").read_text()


def test_split_stage_refuses_bad_input(tmp_path, rng):
    x = rng.normal(size=(100, 2))
    x[7] = np.nan
    write_events(tmp_path / "ok.npy", rng.normal(size=(100, 2)))
    np.save(tmp_path / "nan.npy", x)
    cases = [({"path": str(tmp_path / "nan.npy")}, r"1 rows with NaN/inf \(first at row 7\)"),
             ({"path": str(tmp_path / "gone.csv")}, "data file not found"),
             ({"path": str(tmp_path / "ok.npy"), "features": ["x0", "x5"]},
              r"feature 'x5' not found .*available: x0, x1"),
             ({"path": str(tmp_path / "ok.npy")}, r"split 'centres' would hold 5 of 100 events, "
                                                  r"fewer than the 20 required "
                                                  r"\(splits.min_events\)")]
    for i, (data, message) in enumerate(cases):
        cfg = tiny(tmp_path, data=data, run_dir=str(tmp_path / f"r{i}"))
        with pytest.raises(InputError, match=message):
            pipeline.run_pipeline(cfg, stages=["split"])


def test_mismatched_test_file_dimensions(tmp_path, rng):
    write_events(tmp_path / "train.npz", rng.normal(size=(400, 2)), ["a", "b"])
    write_events(tmp_path / "test.npz", rng.normal(size=(100, 3)), ["a", "b", "c"])
    write_events(tmp_path / "test2.npz", rng.normal(size=(100, 1)), ["a"])
    for name, message in [("test.npz", None), ("test2.npz", r"feature 'b' not found")]:
        cfg = tiny(tmp_path, run_dir=str(tmp_path / f"run-{name}"),
                   data={"path": str(tmp_path / "train.npz"),
                         "test_path": str(tmp_path / name)},
                   splits={"train": 0.6, "weight_fit": 0.3, "centres": 0.1, "test": None})
        if message is None:  # extra columns are fine: features are selected by name
            run = pipeline.run_pipeline(cfg, stages=["split"])
            assert pipeline.split_events(run, "test")[0].shape == (100, 2)
        else:
            with pytest.raises(InputError, match=message):
                pipeline.run_pipeline(cfg, stages=["split"])


def test_missing_module_stage_is_reported(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit"])
    monkeypatch.setitem(sys.modules, "genval.gof", None)
    with pytest.raises(pipeline.StageUnavailableError, match="needs genval.gof"):
        pipeline.run_stage(run, "gof")
    assert not run.is_done("gof")


def test_stage_seeds_are_distinct_and_reproducible():
    cfg = parse_config({"seed": 3})
    names = ("data", "split", "train", "gof", "figures", "sample", "coverage")
    seeds = {s: pipeline.stage_seed(cfg, s) for s in names}
    assert len(set(seeds.values())) == len(names)
    assert seeds["gof"] == pipeline.stage_seed(parse_config({"seed": 3}), "gof")
    assert seeds["gof"] != pipeline.stage_seed(parse_config({"seed": 4}), "gof")


def test_missing_matplotlib_skips_figures_with_a_recorded_warning(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "report"])
    assert not (run.root / "figures" / "weights.png").exists()
    info = json.loads((run.root / ".stages" / "fit.json").read_text())["info"]
    assert any("FigureSkippedWarning" in w and "genval[plots]" in w for w in info["warnings"])
    assert "figure &#x27;weights&#x27; skipped" in (run.root / "report.html").read_text()


class _FakeBasis:
    """Stands in for genval.gof.KernelBasis: K isotropic Gaussians at the given centres."""

    def __init__(self, centres, sigma):
        self.centers, self.sigma = centres, sigma

    @classmethod
    def from_events(cls, x, n_kernels, sigma, *, standardize=False, seed=None):
        rows = np.random.default_rng(seed).choice(len(x), n_kernels, replace=False)
        return cls(x[rows], sigma)

    def pdf(self, x):
        d2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
        dim = x.shape[1]
        return np.exp(-0.5 * d2 / self.sigma ** 2) / (2 * np.pi * self.sigma ** 2) ** (dim / 2)


class _FakeResult:
    def __init__(self, variant, weights, n_kernels, rng):
        self.t_null = rng.chisquare(4, 12)
        self.t_obs = {"single": 30.0, "frozen": 8.0, "ensemble": 3.0}[variant]
        self.n_toys = 12
        k = int(np.sum(self.t_null >= self.t_obs))
        self.p_value = (1 + k) / 13
        self.z = float(__import__("scipy").stats.norm.isf(self.p_value))
        self.z_is_bound = k == 0
        self.z_chi2 = self.z + 0.1
        self.chi2_fit = type("Chi2", (), {"scale": 1.0, "dof": 4.0})()
        self.observed = type("Stat", (), {"phi1": weights, "a": np.zeros(n_kernels)})()
        self.variant = variant

    def to_dict(self):
        return {"t_obs": self.t_obs, "p_value": self.p_value, "z": self.z,
                "z_is_lower_bound": self.z_is_bound, "z_chi2_extrapolated": self.z_chi2,
                "n_toys": self.n_toys, "t_null": self.t_null.tolist(), "variant": self.variant,
                "n_kernels": 10, "centre": "redrawn", "n_failed": 0}


@pytest.fixture
def fake_gof(monkeypatch):
    """A stand-in genval.gof with the public contract of DESIGN.md (real one: issue 3)."""
    import types

    from genval.errors import FitError

    calls = []

    def goodness_of_fit(members, fit, x_test, basis, n_toys, seed, *, variant, member, **kw):
        calls.append((variant, len(x_test), member, kw["centre"]))
        if variant == "frozen" and fake.fail_frozen:
            raise FitError("the mixture density f(x; ŵ) is <= 0 on 2 of 40 test events")
        return _FakeResult(variant, fit.weights, basis.centers.shape[0],
                           np.random.default_rng(seed))

    def summarize_z(results):
        zs = [r.z for r in results]
        return types.SimpleNamespace(median=float(np.median(zs)), lower=min(zs),
                                     upper=max(zs), n_sets=len(zs))

    fake = types.ModuleType("genval.gof")
    fake.KernelBasis, fake.goodness_of_fit, fake.summarize_z = (_FakeBasis, goodness_of_fit,
                                                                 summarize_z)
    fake.fail_frozen, fake.calls = False, calls
    monkeypatch.setitem(sys.modules, "genval.gof", fake)
    return fake


def test_gof_stage_writes_results_figures_and_report(tmp_path, fake_gof):
    cfg = tiny(tmp_path, gof={"n_kernels": 10, "n_toys": 12, "n_test_sets": 2})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof", "report"])
    assert [c[0] for c in fake_gof.calls] == ["single"] * 2 + ["frozen"] * 2 + ["ensemble"] * 2
    assert {c[1] for c in fake_gof.calls} == {80}  # two disjoint halves of the 160 test events
    assert fake_gof.calls[0][2] == 0 and fake_gof.calls[2][2] is None
    for variant in ("single", "frozen", "ensemble"):
        rec = json.loads((run.root / "gof" / f"{variant}.json").read_text())
        assert rec["z_summary"]["n_sets"] == 2 and len(rec["per_set"]) == 2
        assert (run.root / "figures" / f"null_{variant}.png").is_file()
    assert (run.root / "figures" / "marginals.png").is_file()
    report = (run.root / "report.html").read_text()
    assert report.count("data:image/png") == 5  # marginals, 3 nulls, weights
    assert "20.29 ± 0.10" in report and "ensemble with uncertainty" in report


def test_one_undefined_gof_variant_does_not_stop_the_others(tmp_path, fake_gof):
    fake_gof.fail_frozen = True
    cfg = tiny(tmp_path, gof={"n_kernels": 10, "n_toys": 12})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof", "report"])
    assert "error" in json.loads((run.root / "gof" / "frozen.json").read_text())
    assert (run.root / "figures" / "null_ensemble.png").is_file()
    info = json.loads((run.root / ".stages" / "gof.json").read_text())["info"]
    assert any("GofVariantWarning" in w and "'frozen' undefined" in w for w in info["warnings"])
    report = (run.root / "report.html").read_text()
    assert "undefined: the mixture density" in report
